"""Python API for inference: from an image to poses as plain numpy arrays.

    import grouppose
    poses = grouppose.predict("people.jpg", "configs/COCO-Keypoints/grouppose_R50_60e.yaml",
                              "model.pth")
    poses.keypoints  # (n, K, 3) x, y, score in pixels of the image

``predict`` builds the model on every call; for many images build a ``GroupPosePredictor`` once
and call it per image. Both run Detectron2's ``DefaultPredictor`` (resizing to
``INPUT.MIN/MAX_SIZE_TEST``, colour order from ``INPUT.FORMAT``) with the weights of
``MODEL.WEIGHTS`` read by ``SafeCheckpointer`` (no code runs from a weights file unless
``trust_pickle``); they must be a trained Group Pose checkpoint.
"""

import os
from typing import Optional, Sequence, Union

import torch
from detectron2.config import CfgNode
from detectron2.engine import DefaultPredictor
from detectron2.structures import Instances

from grouppose.checkpoint import SafeCheckpointer
from grouppose.config import fall_back_to_cpu, get_grouppose_cfg, inference_model_config
from grouppose.deploy.metadata import PosePrediction, check_score_threshold  # shared with ONNX
from grouppose.image_io import ImageLike, to_bgr_uint8
from grouppose.layers import reuse_freed_memory

__all__ = [
    "GroupPosePredictor", "PosePrediction", "build_inference_config", "load_trained_weights",
    "predict",
]

ConfigLike = Union[str, os.PathLike, CfgNode]


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
    else:
        fall_back_to_cpu(cfg)
    cfg.freeze()
    return cfg


# Where the optional keypoint confidence heads' weights are (GroupPose.keypoint_confidence).
KEYPOINT_CONFIDENCE_PREFIX = "keypoint_confidence."
_TRAINED_MODEL_HINT = (
    "inference needs a trained Group Pose checkpoint: convert an official one with "
    "tools/convert_official_checkpoint.py (README, 'Official checkpoints') or train one with "
    "train_net.py, then pass it as MODEL.WEIGHTS"
)


def _checkpoint_num_keypoints(model: torch.nn.Module, incorrect_shapes) -> Optional[int]:
    """K of a checkpoint whose keypoint outputs differ in size from the model's, else None.

    Args:
        incorrect_shapes: (key, shape in checkpoint, shape in model) of the weights not loaded.
    """
    head = getattr(getattr(model, "query_selection", None), "keypoint_head", None)
    if head is None:
        return None
    # The last layer of the encoder's keypoint head outputs (x, y) per keypoint: bias (2K,).
    output_bias = f"query_selection.keypoint_head.layers.{len(head.layers) - 1}.bias"
    for key, checkpoint_shape, _ in incorrect_shapes:
        if key == output_bias:
            return checkpoint_shape[0] // 2
    return None


def load_trained_weights(model: torch.nn.Module, weights: str, trust_pickle: bool = False) -> None:
    """Load a trained Group Pose checkpoint into ``model``, safely (see ``SafeCheckpointer``).

    Raises:
        ValueError when ``weights`` is empty, cannot be fetched, or does not hold every weight of
        the model (e.g. the ImageNet backbone a training config starts from), saying how to get
        a trained checkpoint, or stating both K when it was trained with another number of
        keypoints. UnsafeCheckpointError / CorruptCheckpointError (ValueErrors) for a file that
        could run code / is truncated.
    """
    if not weights:
        raise ValueError(f"MODEL.WEIGHTS is empty; {_TRAINED_MODEL_HINT}")
    checkpointer = SafeCheckpointer(model, trust_pickle=trust_pickle)
    try:
        checkpointer.load(weights)
    except OSError as e:  # a missing file, or a URL that cannot be fetched (offline)
        raise ValueError(f"cannot read MODEL.WEIGHTS '{weights}' ({e}); {_TRAINED_MODEL_HINT}") \
            from e
    incompatible = checkpointer.incompatible_keys
    checkpoint_k = _checkpoint_num_keypoints(model, incompatible.incorrect_shapes)
    if checkpoint_k is not None:
        raise ValueError(
            f"checkpoint {weights} has K={checkpoint_k} keypoints, the config "
            f"MODEL.GROUP_POSE.NUM_KEYPOINTS={model.num_keypoints}: use the config it was "
            "trained with (and a dataset with its keypoints)"
        )
    missing = incompatible.missing_keys
    if missing and all(key.startswith(KEYPOINT_CONFIDENCE_PREFIX) for key in missing):
        raise ValueError(
            f"MODEL.WEIGHTS '{weights}' has no keypoint confidence head "
            f"({KEYPOINT_CONFIDENCE_PREFIX}*, {len(missing)} weights): it was trained without "
            "MODEL.GROUP_POSE.KEYPOINT_CONFIDENCE; load it with the switch off (constant keypoint "
            "scores) or train with it on"
        )
    if missing:
        total = len(model.state_dict())
        raise ValueError(
            f"MODEL.WEIGHTS '{weights}' is not a trained Group Pose model: {len(missing)} of its "
            f"{total} weights are missing (e.g. {missing[0]}); {_TRAINED_MODEL_HINT}"
        )


class GroupPosePredictor:
    """Builds the model once and finds the poses in one image per call.

    Args:
        config: yaml config file or config (see ``build_inference_config``).
        weights: checkpoint; overrides ``MODEL.WEIGHTS`` when given.
        device: see ``build_inference_config``.
        score_threshold: when given (a number in [0, 1]), overrides
            ``MODEL.GROUP_POSE.TEST_SCORE_THRESH``: only poses scoring above it are kept (of the
            ``MODEL.GROUP_POSE.TEST_TOPK`` best).
        opts: ``KEY VALUE`` config overrides.
        trust_pickle: read the weights with plain pickle (runs any code they hold): only for
            files from a trusted source.

    On the CPU it makes the process keep the memory a forward frees, for the next one
    (``grouppose.layers.reuse_freed_memory``).

    Raises:
        ValueError: see ``load_trained_weights``; for a ``score_threshold`` outside [0, 1].
    """

    def __init__(
        self,
        config: ConfigLike,
        weights: Optional[str] = None,
        *,
        device: Optional[str] = None,
        score_threshold: Optional[float] = None,
        opts: Sequence[str] = (),
        trust_pickle: bool = False,
    ):
        if score_threshold is not None:
            # A float: the config key is one, and merging an int is a type mismatch.
            threshold = check_score_threshold(score_threshold)
            opts = [*opts, "MODEL.GROUP_POSE.TEST_SCORE_THRESH", threshold]
        self.cfg = build_inference_config(config, weights, device, opts)
        # DefaultPredictor would read MODEL.WEIGHTS with Detectron2's checkpointer, which runs
        # any code a .pkl file holds: it gets none, and the weights are read safely here.
        without_weights = inference_model_config(self.cfg)
        without_weights.defrost()
        without_weights.MODEL.WEIGHTS = ""
        self._predictor = DefaultPredictor(without_weights)
        load_trained_weights(self.model, self.cfg.MODEL.WEIGHTS, trust_pickle)
        if self.model.device.type == "cpu":
            # Each forward then reuses the last one's memory instead of page-faulting it in
            # again (grouppose.layers.cpu_memory: ~15 % of a forward at 800x1333).
            reuse_freed_memory()

    @property
    def model(self) -> torch.nn.Module:
        return self._predictor.model

    def instances(self, image: ImageLike) -> Instances:
        """Detectron2 output: ``Instances`` with ``pred_keypoints`` (n, K, 3) and ``scores``
        (n,), best first, on the model's device, at the image's own size."""
        return self._predictor(to_bgr_uint8(image))["instances"]

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
