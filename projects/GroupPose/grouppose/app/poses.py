"""The browser demo's logic, without Gradio: check an upload, find and draw the poses, and the
JSON the page offers for download.

An upload is refused with an ``UploadError`` (its message is shown in the page) when it is not
an image, cannot be decoded, or has more than ``max_pixels`` pixels: the size is read from the
file's header, so a huge image is refused before it is decoded.
"""

import os
import time
import warnings
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Union

import numpy as np
from detectron2.structures import Instances
from PIL import Image

from grouppose.deploy import OnnxPosePredictor
from grouppose.deploy.metadata import check_score_threshold
from grouppose.image_io import UnreadableImageError, as_bgr_uint8, read_image
from grouppose.predictor import GroupPosePredictor
from grouppose.visualization import VisualizationDemo, draw_poses

__all__ = ["MAX_PIXELS", "Answer", "PoseApp", "UploadError", "load_upload", "poses_to_dict"]

# 40 megapixels (e.g. 7700 x 5200): more than any phone photo at its default size; decoding
# and drawing stay well under a gigabyte. The model sees the image resized to its test size.
MAX_PIXELS = 40_000_000
# Rounding of the JSON: a hundredth of a pixel, scores to 4 decimals.
_COORDINATE_DECIMALS = 2
_SCORE_DECIMALS = 4

# An upload: the path of an uploaded file, or a webcam picture, (H, W, 3) RGB uint8.
Upload = Union[str, os.PathLike, np.ndarray, None]


class UploadError(ValueError):
    """An upload the app cannot use; the message says why, for the page."""


def _check_pixels(width: int, height: int, max_pixels: int, name: str) -> None:
    if width * height > max_pixels:
        raise UploadError(
            f"{name} is {width} x {height} pixels ({width * height / 1e6:.1f} megapixels), more "
            f"than the {max_pixels / 1e6:g} megapixels this app accepts: upload a smaller image"
        )


def _image_size(path: str, name: str) -> tuple:
    """(width, height) from the header of image file ``path``, without decoding it."""
    try:
        # PIL warns about (and beyond twice its limit refuses) large images: the caller checks.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.size
    except Image.DecompressionBombError as e:
        raise UploadError(f"{name} is too large to open: {e}") from None
    except (OSError, SyntaxError, ValueError):  # UnidentifiedImageError is an OSError
        raise UploadError(f"{name} is not an image (or not in a format this app reads)") from None


def load_upload(upload: Upload, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The uploaded file or webcam picture as an (H, W, 3) uint8 BGR image.

    Raises:
        UploadError naming the file (not the server's path to it) when there is no upload, it
        is not a readable image, or it has more than ``max_pixels`` pixels.
    """
    if upload is None:
        raise UploadError("upload an image or take a webcam picture")
    if isinstance(upload, np.ndarray):
        _check_pixels(upload.shape[1], upload.shape[0], max_pixels, "the webcam picture")
        try:
            rgb = as_bgr_uint8(upload, name="the webcam picture")
        except ValueError as e:
            raise UploadError(str(e)) from None
        return np.ascontiguousarray(rgb[:, :, ::-1])
    path = os.fspath(upload)
    name = f"'{os.path.basename(path)}'"
    _check_pixels(*_image_size(path, name), max_pixels, name)
    try:
        return read_image(path)
    except UnreadableImageError:
        raise UploadError(f"{name} cannot be decoded (truncated or corrupt?)") from None


def poses_to_dict(
    instances: Instances, keypoint_names: Sequence[str], score_threshold: float
) -> Dict:
    """The poses of one image as a JSON-ready dict.

    Args:
        instances: ``pred_keypoints`` (n, K, 3) x, y, score and ``scores`` (n,), on the CPU.
        keypoint_names: the K names, listed in the dict when there are K of them.

    Returns:
        {"image": {"height", "width"}, "score_threshold", "keypoint_names" (or null),
        "people": [{"score", "keypoints": K x [x, y, score]}, ...]} (best first; pixels of the
        input image).
    """
    keypoints = instances.pred_keypoints.float().numpy()
    scores = instances.scores.float().numpy()
    num_keypoints = keypoints.shape[1]
    names = list(keypoint_names) if len(keypoint_names) == num_keypoints else None
    people = [
        {
            "score": round(float(score), _SCORE_DECIMALS),
            "keypoints": [
                [round(float(x), _COORDINATE_DECIMALS), round(float(y), _COORDINATE_DECIMALS),
                 round(float(s), _SCORE_DECIMALS)]
                for x, y, s in person
            ],
        }
        for person, score in zip(keypoints, scores)
    ]
    height, width = instances.image_size
    return {
        "image": {"height": int(height), "width": int(width)},
        "score_threshold": float(score_threshold),
        "keypoint_names": names,
        "people": people,
    }


@dataclass
class Answer:
    """What the page shows for one request."""

    drawing: Optional[np.ndarray]  # (H, W, 3) uint8 RGB, None when the upload was refused
    poses: Optional[Dict]  # ``poses_to_dict``, None when the upload was refused
    message: str  # the people count, or why the upload was refused (Markdown)


class PoseApp:
    """Finds, filters and draws the poses of one upload per call.

    Args:
        predictor: a ``GroupPosePredictor`` or ``OnnxPosePredictor`` that keeps every pose of
            its TEST_TOPK (``score_threshold=0``): the page's slider filters them.
        max_pixels: the largest upload accepted (width x height).
    """

    def __init__(
        self,
        predictor: Union[GroupPosePredictor, OnnxPosePredictor],
        max_pixels: int = MAX_PIXELS,
    ):
        self.demo = VisualizationDemo(predictor)
        self.max_pixels = max_pixels

    def predict(self, image: np.ndarray, score_threshold: float) -> tuple:
        """(H, W, 3) uint8 BGR image -> (drawing (H, W, 3) uint8 RGB, ``poses_to_dict``) of the
        poses scoring above ``score_threshold``."""
        threshold = check_score_threshold(score_threshold)
        instances = self.demo.instances(image)
        kept = instances[instances.scores > threshold]
        drawing = draw_poses(image, kept, self.demo.metadata)
        names = self.demo.metadata.get("keypoint_names", ())
        return np.ascontiguousarray(drawing[:, :, ::-1]), poses_to_dict(kept, names, threshold)

    def answer(self, upload: Upload, score_threshold: float) -> Answer:
        """The page's answer to an upload: the drawing and poses, or why it was refused."""
        try:
            image = load_upload(upload, self.max_pixels)
        except UploadError as e:
            return Answer(None, None, f"**Cannot use this upload:** {e}.")
        start = time.perf_counter()
        drawing, poses = self.predict(image, score_threshold)
        seconds = time.perf_counter() - start
        count = len(poses["people"])
        return Answer(
            drawing, poses,
            f"**{count} {'person' if count == 1 else 'people'}** scoring above "
            f"{poses['score_threshold']:g} ({seconds * 1000:.0f} ms)",
        )
