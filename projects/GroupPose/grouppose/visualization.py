"""Drawing predicted poses with Detectron2's Visualizer, for images and video frames."""

import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Union

import cv2
import numpy as np
import torch
from detectron2.data import Metadata, MetadataCatalog
from detectron2.structures import Instances
from detectron2.utils.visualizer import Visualizer

from grouppose.deploy import OnnxPosePredictor
from grouppose.image_io import as_bgr_uint8
from grouppose.modeling.postprocess import pose_instances
from grouppose.predictor import GroupPosePredictor

__all__ = ["DemoResult", "KEYPOINT_THRESHOLD", "VisualizationDemo", "draw_poses"]

# Keypoints scoring at most this are not drawn. The constant score of the paper's model,
# sigmoid(1), is above it (every keypoint drawn); with MODEL.GROUP_POSE.KEYPOINT_CONFIDENCE the
# score is the probability that the keypoint is visible, and those more likely hidden are not.
KEYPOINT_THRESHOLD = 0.5


def draw_poses(
    image_bgr: np.ndarray, instances: Instances, metadata: Metadata,
    keypoint_threshold: float = KEYPOINT_THRESHOLD,
) -> np.ndarray:
    """Skeletons (keypoints joined by ``metadata.keypoint_connection_rules``), boxes if the
    instances have ``pred_boxes`` and scores, drawn on a copy of the (H, W, 3) BGR image.
    Keypoints whose score (``pred_keypoints[..., 2]``) is at most ``keypoint_threshold`` are
    left out, with their skeleton lines.

    Returns:
        (H, W, 3) uint8 BGR.
    """
    visualizer = Visualizer(image_bgr[:, :, ::-1], metadata)
    visualizer.keypoint_threshold = keypoint_threshold
    drawn = visualizer.draw_instance_predictions(instances.to("cpu")).get_image()
    return np.ascontiguousarray(drawn[:, :, ::-1])


@dataclass
class DemoResult:
    """One processed image or frame."""

    instances: Instances  # on the CPU, at the input's size, best first
    visualization: np.ndarray  # (H, W, 3) uint8 BGR
    latency: float  # seconds spent in the model (incl. pre- and post-processing)


class VisualizationDemo:
    """Runs a ``GroupPosePredictor`` or an ``OnnxPosePredictor`` on images or video frames and
    draws the poses with the metadata of the model's test set (``cfg.DATASETS.TEST[0]``, or the
    one named in the ONNX file): keypoint names and connection rules."""

    def __init__(self, predictor: Union[GroupPosePredictor, OnnxPosePredictor]):
        self.predictor = predictor
        if isinstance(predictor, OnnxPosePredictor):
            dataset = predictor.metadata.dataset
        else:
            dataset = predictor.cfg.DATASETS.TEST[0] if len(predictor.cfg.DATASETS.TEST) else ""
        self.metadata = MetadataCatalog.get(dataset) if dataset else Metadata()

    def instances(self, image: np.ndarray) -> Instances:
        """The predictor's poses in (H, W, 3) BGR ``image`` as Instances on the CPU."""
        if isinstance(self.predictor, OnnxPosePredictor):
            poses = self.predictor(image)
            return pose_instances(
                torch.from_numpy(poses.keypoints), torch.from_numpy(poses.scores), image.shape[:2]
            )
        return self.predictor.instances(image).to("cpu")

    def run_on_image(self, image: np.ndarray) -> DemoResult:
        """(H, W, C) image (BGR, or gray / BGRA / 16-bit, converted) -> poses and drawing."""
        image = as_bgr_uint8(image)
        start = time.perf_counter()
        instances = self.instances(image)
        latency = time.perf_counter() - start
        return DemoResult(instances, draw_poses(image, instances, self.metadata), latency)

    def run_on_video(
        self, video: cv2.VideoCapture,
        draw: Optional[Callable[[np.ndarray, Instances], np.ndarray]] = None,
    ) -> Iterator[DemoResult]:
        """One result per frame of an opened video (or webcam), until it ends.

        ``draw(frame, instances)`` replaces the drawing when given (e.g.
        ``grouppose.tracking.video.VideoTracking``, which also tracks the poses).
        """
        while video.isOpened():
            success, frame = video.read()
            if not success:
                break
            if draw is None:
                yield self.run_on_image(frame)
                continue
            frame = as_bgr_uint8(frame)
            start = time.perf_counter()
            instances = self.instances(frame)
            latency = time.perf_counter() - start
            yield DemoResult(instances, draw(frame, instances), latency)
