"""What an exported Group Pose ONNX file says about itself, and the poses a predictor returns.

Torch-free (standard library and numpy): the ONNX Runtime predictor reads this on machines
without torch and Detectron2.

The exporter stores ``DeployMetadata`` as JSON under the key ``grouppose`` of the ONNX model's
``metadata_props``, so that the file alone is enough to preprocess images as the PyTorch
predictor does (channel order, test-time resizing) and to name the keypoints.
"""

import json
from dataclasses import asdict, dataclass, fields
from typing import Optional, Tuple

import numpy as np

__all__ = [
    "METADATA_KEY", "DeployMetadata", "PosePrediction", "check_score_threshold", "resized_shape",
]

METADATA_KEY = "grouppose"
# Input and output names of the exported graph.
INPUT_NAME = "images"
OUTPUT_NAMES = ("scores", "keypoints")
_INPUT_FORMATS = ("RGB", "BGR")


def check_score_threshold(value: float) -> float:
    """A predictor's ``score_threshold`` as a float: any real number in [0, 1] (scores are
    probabilities), ints included.

    Raises:
        ValueError naming the argument and the value otherwise.
    """
    is_number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, bool
    )
    if not is_number or not 0.0 <= float(value) <= 1.0:
        raise ValueError(
            f"score_threshold must be a number in [0, 1] (poses scoring above it are kept), "
            f"got {value!r}"
        )
    return float(value)


@dataclass
class PosePrediction:
    """The poses found in one image, best first."""

    # (n, K, 3) float32: x, y in pixels of the input image and the keypoint score: the
    # probability that the keypoint is visible with the keypoint confidence head, else sigmoid(1)
    keypoints: np.ndarray
    scores: np.ndarray  # (n,) float32 person scores in [0, 1]

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class DeployMetadata:
    """The facts of an exported model that are not in its graph.

    ``min_size_test`` / ``max_size_test`` / ``input_format`` are None when the model was
    exported without its config: ``run_network`` still works, the full predictor does not.
    """

    num_keypoints: int
    test_topk: int  # the predictor keeps this many poses at most ...
    test_score_thresh: float  # ... scoring above this
    # Fixed (height, width) of a file exported with --size; None: any size (--dynamic).
    input_size: Optional[Tuple[int, int]] = None
    input_format: Optional[str] = None  # channel order of the input images: "RGB" or "BGR"
    min_size_test: Optional[int] = None  # INPUT.MIN_SIZE_TEST (0: no resizing)
    max_size_test: Optional[int] = None  # INPUT.MAX_SIZE_TEST
    keypoint_names: Tuple[str, ...] = ()
    dataset: str = ""  # DATASETS.TEST[0]: the metadata of the keypoints (names, skeleton)
    # The keypoints' third value is the confidence head's probability (not a constant).
    keypoint_confidence: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str) -> "DeployMetadata":
        """Parse the JSON of ``to_json``; a ValueError names ``source`` and the bad field."""
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}: metadata '{METADATA_KEY}' is not JSON ({e})") from None
        if not isinstance(values, dict):
            raise ValueError(f"{source}: metadata '{METADATA_KEY}' must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown metadata field(s) {unknown} in '{METADATA_KEY}'")
        try:
            metadata = cls(**values)
        except TypeError as e:  # a required field is missing
            raise ValueError(f"{source}: metadata '{METADATA_KEY}': {e}") from None
        return metadata._checked(source)

    def _checked(self, source: str) -> "DeployMetadata":
        """Types and ranges of every field (JSON lists become tuples)."""
        def fail(field: str, expected: str) -> ValueError:
            return ValueError(
                f"{source}: metadata field '{field}' must be {expected}, "
                f"got {getattr(self, field)!r}"
            )

        for field in ("num_keypoints", "test_topk"):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                raise fail(field, "a positive integer")
        if not isinstance(self.test_score_thresh, (int, float)):
            raise fail("test_score_thresh", "a number")
        for field in ("min_size_test", "max_size_test"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise fail(field, "a non-negative integer or null")
        if self.input_format is not None and self.input_format not in _INPUT_FORMATS:
            raise fail("input_format", f"one of {_INPUT_FORMATS} or null")
        input_size = self.input_size
        if input_size is not None:
            if not (isinstance(input_size, (list, tuple)) and len(input_size) == 2 and all(
                isinstance(v, int) and v > 0 for v in input_size
            )):
                raise fail("input_size", "[height, width] or null")
            input_size = tuple(input_size)
        if not isinstance(self.keypoint_confidence, bool):
            raise fail("keypoint_confidence", "true or false")
        names = self.keypoint_names
        if not (isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)):
            raise fail("keypoint_names", "a list of strings")
        if names and len(names) != self.num_keypoints:
            raise fail("keypoint_names", f"{self.num_keypoints} names (num_keypoints)")
        return DeployMetadata(**{
            **asdict(self), "input_size": input_size, "keypoint_names": tuple(names),
        })


def resized_shape(height: int, width: int, short_edge: int, max_size: int) -> Tuple[int, int]:
    """(height, width) after Detectron2's test-time ``ResizeShortestEdge(short_edge,
    max_size)``: the shorter side becomes ``short_edge`` unless the longer side would then
    exceed ``max_size``, in which case the longer side becomes ``max_size``; both rounded to the
    nearest integer. ``short_edge`` 0 keeps the size."""
    if short_edge == 0:
        return height, width
    # The same float operations in the same order as Detectron2, so that sizes ending in .5
    # round the same way.
    scale = short_edge / min(height, width)
    if height < width:
        new_height, new_width = float(short_edge), scale * width
    else:
        new_height, new_width = scale * height, float(short_edge)
    longest = max(new_height, new_width)
    if longest > max_size:
        new_height, new_width = new_height * (max_size / longest), new_width * (max_size / longest)
    return int(new_height + 0.5), int(new_width + 0.5)
