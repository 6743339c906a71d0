"""Drawing predicted poses with Detectron2's Visualizer, for images and video frames."""

import time
from dataclasses import dataclass
from typing import Iterator

import cv2
import numpy as np
from detectron2.data import Metadata, MetadataCatalog
from detectron2.structures import Instances
from detectron2.utils.visualizer import Visualizer

from grouppose.image_io import as_bgr_uint8
from grouppose.predictor import GroupPosePredictor

__all__ = ["DemoResult", "VisualizationDemo", "draw_poses"]


def draw_poses(image_bgr: np.ndarray, instances: Instances, metadata: Metadata) -> np.ndarray:
    """Skeletons (keypoints joined by ``metadata.keypoint_connection_rules``), boxes if the
    instances have ``pred_boxes`` and scores, drawn on a copy of the (H, W, 3) BGR image.

    Returns:
        (H, W, 3) uint8 BGR.
    """
    visualizer = Visualizer(image_bgr[:, :, ::-1], metadata)
    drawn = visualizer.draw_instance_predictions(instances.to("cpu")).get_image()
    return np.ascontiguousarray(drawn[:, :, ::-1])


@dataclass
class DemoResult:
    """One processed image or frame."""

    instances: Instances  # on the CPU, at the input's size, best first
    visualization: np.ndarray  # (H, W, 3) uint8 BGR
    latency: float  # seconds spent in the model (incl. pre- and post-processing)


class VisualizationDemo:
    """Runs a ``GroupPosePredictor`` on images or video frames and draws the poses with the
    metadata of ``cfg.DATASETS.TEST[0]`` (keypoint names and connection rules)."""

    def __init__(self, predictor: GroupPosePredictor):
        self.predictor = predictor
        test_sets = predictor.cfg.DATASETS.TEST
        self.metadata = MetadataCatalog.get(test_sets[0]) if len(test_sets) else Metadata()

    def run_on_image(self, image: np.ndarray) -> DemoResult:
        """(H, W, C) image (BGR, or gray / BGRA / 16-bit, converted) -> poses and drawing."""
        image = as_bgr_uint8(image)
        start = time.perf_counter()
        instances = self.predictor.instances(image).to("cpu")
        latency = time.perf_counter() - start
        return DemoResult(instances, draw_poses(image, instances, self.metadata), latency)

    def run_on_video(self, video: cv2.VideoCapture) -> Iterator[DemoResult]:
        """One result per frame of an opened video (or webcam), until it ends."""
        while video.isOpened():
            success, frame = video.read()
            if not success:
                break
            yield self.run_on_image(frame)
