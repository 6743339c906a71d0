"""Python API for inference: from an image to poses as plain numpy arrays.

    import grouppose
    poses = grouppose.predict("people.jpg", "configs/COCO-Keypoints/grouppose_R50_60e.yaml",
                              "model.pth")
    poses.keypoints  # (n, K, 3) x, y, score in pixels of the image

``predict`` builds the model on every call; for many images build a ``GroupPosePredictor`` once
and call it per image. Both run Detectron2's ``DefaultPredictor`` (resizing to
``INPUT.MIN/MAX_SIZE_TEST``, colour order from ``INPUT.FORMAT``, weights from ``MODEL.WEIGHTS``).
"""

import os
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.engine import DefaultPredictor
from detectron2.structures import Instances

from grouppose.config import get_grouppose_cfg
from grouppose.image_io import as_bgr_uint8, read_image

__all__ = ["GroupPosePredictor", "PosePrediction", "build_inference_config", "predict"]

ConfigLike = Union[str, os.PathLike, CfgNode]
ImageLike = Union[str, os.PathLike, np.ndarray]


@dataclass
class PosePrediction:
    """The poses found in one image, best first."""

    keypoints: np.ndarray  # (n, K, 3) float32: x, y in pixels of the input image, score
    scores: np.ndarray  # (n,) float32 person scores in [0, 1]

    def __len__(self) -> int:
        return len(self.scores)


def build_inference_config(
    config: ConfigLike,
    weights: Optional[str] = None,
    device: Optional[str] = None,
    opts: Sequence[str] = (),
) -> CfgNode:
    """A frozen config for inference.

    Args:
        config: a yaml config file, or a config that already has the Group Pose keys
            (it is copied, not modified).
        weights: checkpoint to load; overrides ``MODEL.WEIGHTS`` when given.
        device: e.g. "cpu" or "cuda:0"; when None, ``MODEL.DEVICE`` is kept unless it names
            CUDA and no CUDA device is present, in which case the CPU is used.
        opts: ``KEY VALUE`` overrides, as Detectron2's ``--opts``.
    """
    if isinstance(config, CfgNode):
        cfg = config.clone()
        cfg.defrost()
        cfg.merge_from_list(list(opts))
    else:
        cfg = get_grouppose_cfg(os.fspath(config), opts)
    if weights is not None:
        cfg.MODEL.WEIGHTS = os.fspath(weights)
    if device is not None:
        cfg.MODEL.DEVICE = device
    elif cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


class GroupPosePredictor:
    """Builds the model once and finds the poses in one image per call.

    Args:
        config: yaml config file or config (see ``build_inference_config``).
        weights: checkpoint; overrides ``MODEL.WEIGHTS`` when given.
        device: see ``build_inference_config``.
        score_threshold: when given, overrides ``MODEL.GROUP_POSE.TEST_SCORE_THRESH``: only
            poses scoring above it are kept (of the ``MODEL.GROUP_POSE.TEST_TOPK`` best).
        opts: ``KEY VALUE`` config overrides.
    """

    def __init__(
        self,
        config: ConfigLike,
        weights: Optional[str] = None,
        *,
        device: Optional[str] = None,
        score_threshold: Optional[float] = None,
        opts: Sequence[str] = (),
    ):
        if score_threshold is not None:
            opts = [*opts, "MODEL.GROUP_POSE.TEST_SCORE_THRESH", score_threshold]
        self.cfg = build_inference_config(config, weights, device, opts)
        self._predictor = DefaultPredictor(self.cfg)

    @property
    def model(self) -> torch.nn.Module:
        return self._predictor.model

    def instances(self, image: ImageLike) -> Instances:
        """Detectron2 output: ``Instances`` with ``pred_keypoints`` (n, K, 3) and ``scores``
        (n,), best first, on the model's device, at the image's own size."""
        image = as_bgr_uint8(image) if isinstance(image, np.ndarray) else read_image(image)
        return self._predictor(image)["instances"]

    def __call__(self, image: ImageLike) -> PosePrediction:
        """
        Args:
            image: a file, or an array (H, W, 3) BGR as ``DefaultPredictor`` takes (gray, BGRA
                and 16-bit arrays are converted, see ``image_io.as_bgr_uint8``).
        """
        instances = self.instances(image).to("cpu")
        return PosePrediction(
            keypoints=instances.pred_keypoints.float().numpy(),
            scores=instances.scores.float().numpy(),
        )


def predict(
    image: ImageLike,
    config: ConfigLike,
    weights: Optional[str] = None,
    **kwargs,
) -> PosePrediction:
    """Poses in one image: ``GroupPosePredictor(config, weights, **kwargs)(image)``."""
    return GroupPosePredictor(config, weights, **kwargs)(image)
