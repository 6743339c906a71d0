"""Group Pose config keys (``cfg.MODEL.GROUP_POSE.*``) and the Detectron2 defaults it needs.

A leaf of the package: the model (grouppose.modeling) reads the config, never the other way
round. This module checks what a config alone can tell: each key's type and range, and that
NHEADS divides HIDDEN_DIM (which every attention layer, of two kinds, needs); the other rules of
the network's structure (GroupNorm groups, feature levels, the ablation switches' combinations)
are checked where the network is built, by the parts that own them.
"""

import logging
import math
import os
from typing import Any, Callable, Dict, NamedTuple, Sequence

import torch
from detectron2.config import CfgNode, get_cfg

# MODEL.GROUP_POSE.INFERENCE_PRECISION -> the autocast dtype of inference (None: float32).
INFERENCE_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# ... or chosen per device by measurement (grouppose.modeling.inference_precision).
AUTO_PRECISION = "auto"
INFERENCE_PRECISIONS = (*INFERENCE_DTYPES, AUTO_PRECISION)


def add_grouppose_config(cfg: CfgNode) -> None:
    """Add Group Pose's new config keys, with the paper's defaults (ResNet-50, COCO).

    Only keys Detectron2 lacks: ``MODEL.GROUP_POSE.*``, ``MODEL.SWIN.*`` and a few solver and
    input keys. The values Group Pose gives Detectron2's own keys (RGB input with torchvision's
    ImageNet mean/std, torchvision-layout ResNet, the paper's solver and augmentation) live in
    configs/Base-GroupPose.yaml, which every Group Pose config inherits.
    """
    cfg.MODEL.GROUP_POSE = CfgNode()
    gp = cfg.MODEL.GROUP_POSE
    gp.NUM_INSTANCES = 100  # N: persons (groups of K + 1 queries) per image
    gp.NUM_KEYPOINTS = 17  # K (COCO; CrowdPose: 14)
    gp.HIDDEN_DIM = 256  # C: channels of the projected features, memory and queries
    gp.NHEADS = 8  # attention heads of every attention layer
    gp.DIM_FEEDFORWARD = 2048  # hidden size of the feed-forward networks
    gp.DROPOUT = 0.0  # dropout in the encoder and decoder layers
    gp.ENC_LAYERS = 6  # deformable encoder layers
    gp.DEC_LAYERS = 6  # Group Pose decoder layers
    gp.ENC_N_POINTS = 4  # deformable sampling points per head and level, encoder
    gp.DEC_N_POINTS = 4  # the same, decoder
    gp.NUM_FEATURE_LEVELS = 4  # IN_FEATURES + stride-2 extra levels
    gp.IN_FEATURES = ["res3", "res4", "res5"]  # backbone outputs read, finest first
    gp.POS_TEMPERATURE = 20.0  # temperature of the feature maps' sine position encoding
    gp.FOCAL_ALPHA = 0.25  # alpha of the focal classification loss and matching cost
    gp.CLS_WEIGHT = 2.0  # loss weight: focal classification
    gp.KPT_L1_WEIGHT = 10.0  # loss weight: keypoint L1
    gp.OKS_WEIGHT = 4.0  # loss weight: 1 - OKS
    gp.COST_CLASS = 2.0  # matching cost weight: focal classification
    gp.COST_KPT_L1 = 10.0  # matching cost weight: keypoint L1
    gp.COST_OKS = 4.0  # matching cost weight: 1 - OKS
    gp.AUX_LOSS = True  # losses on every decoder layer, not only the last
    gp.INTERM_LOSS_WEIGHT = 1.0  # multiplies the encoder (two-stage) prediction's losses
    # Per-keypoint OKS sigmas (K values). Empty: the `kpt_oks_sigmas` of the metadata of
    # DATASETS.TRAIN[0] (else TEST[0]; TEST[0] first for inference, see inference_model_config),
    # else the standard ones for K = 17 (COCO) / 14 (CrowdPose).
    gp.OKS_SIGMAS = []
    # Inference: keep the TEST_TOPK highest-scoring persons with score > TEST_SCORE_THRESH
    # (at most NUM_INSTANCES: the model predicts no more).
    gp.TEST_TOPK = 50
    gp.TEST_SCORE_THRESH = 0.0
    # Precision of inference (training: SOLVER.AMP): "fp32", "bf16" / "fp16" autocast (sampling
    # positions stay float32), or "auto": bf16 where this device's bf16 matmuls measure faster.
    gp.INFERENCE_PRECISION = "fp32"
    # Ablation switches (paper Table 4, Appendix A); the defaults are the paper's model. Their
    # meanings and valid combinations: grouppose.modeling.variants.DecoderVariant.
    gp.SELF_ATTN = "group"  # group | standard | standard_masked (Table 4d, Fig. 3)
    gp.GROUP_ATTN = "both"  # both | within_only | across_only | none (Table 4e)
    gp.ACROSS_INSTANCE = "both"  # both | keypoint_only | instance_only (Appendix A.2)
    gp.SHARE_GROUP_ATTN = False  # one attention module for within and across (Appendix A.3)
    gp.QUERIES = "instance_and_keypoint"  # | keypoint_only | instance_only (Table 4a)
    gp.SCORE_FROM = "instance"  # | mean_keypoint: the pose score's query (Table 4b)
    # Human detection decoder (Table 5): this many box-query layers before the DEC_LAYERS Group
    # Pose layers (the paper: 2 + 4), trained with focal classification (CLS_WEIGHT,
    # COST_CLASS), box L1 and GIoU losses (the values of ED-Pose). 0 = none.
    gp.DETECTION_DECODER_LAYERS = 0
    gp.BOX_L1_WEIGHT = 5.0  # loss weight: box L1
    gp.GIOU_WEIGHT = 2.0  # loss weight: 1 - GIoU
    gp.COST_BOX_L1 = 5.0  # matching cost weight: box L1
    gp.COST_GIOU = 2.0  # matching cost weight: -GIoU
    # Per-keypoint confidence head (not in the paper; grouppose.modeling.keypoint_confidence):
    # the probability that a keypoint is visible (v = 2) becomes pred_keypoints[..., 2].
    gp.KEYPOINT_CONFIDENCE = False
    gp.KPT_CONF_WEIGHT = 2.0  # loss weight: keypoint confidence BCE (mean over keypoints)

    # Swin backbone (MODEL.BACKBONE.NAME "build_swin_backbone"): Swin-T defaults. Frozen parts
    # follow MODEL.BACKBONE.FREEZE_AT (0 none, 1 patch embedding, k >= 2 also res2 .. res{k}).
    cfg.MODEL.SWIN = CfgNode()
    swin = cfg.MODEL.SWIN
    swin.EMBED_DIM = 96  # channels of the patch embedding (stage 1)
    swin.DEPTHS = [2, 2, 6, 2]  # blocks per stage
    swin.NUM_HEADS = [3, 6, 12, 24]  # attention heads per stage
    swin.WINDOW_SIZE = 7  # the pretraining's: 7 for ImageNet 224 px, 12 for 384 px
    swin.MLP_RATIO = 4.0  # hidden size of the blocks' MLPs / channels
    swin.DROP_PATH_RATE = 0.2  # stochastic depth, rising linearly from 0 over the blocks
    swin.OUT_FEATURES = ["res3", "res4", "res5"]  # strides 8, 16, 32
    swin.USE_CHECKPOINT = False  # activation checkpointing of every block (saves memory)

    # Solver keys of the paper's recipe that Detectron2 lacks (grouppose.engine.build_optimizer).
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1  # lr factor of `backbone.*` parameters
    cfg.SOLVER.LINEAR_PROJ_MULTIPLIER = 0.1  # lr factor of parameters in modules named ...
    cfg.SOLVER.LINEAR_PROJ_NAMES = ["sampling_offsets", "reference_points"]  # ... these
    # Images per forward pass of one process; 0: IMS_PER_BATCH / processes. Fewer accumulate
    # gradients over IMS_PER_BATCH / (processes x IMS_PER_DEVICE) passes per optimizer step.
    cfg.SOLVER.IMS_PER_DEVICE = 0
    # Input keys of the paper's crop branch (grouppose.data.build_augmentation).
    cfg.INPUT.CROP_RESIZE_SIZES = (400, 500, 600)  # short sides of the resize before the crop
    cfg.INPUT.CROP_PROB = 0.5  # probability of the crop branch
    # Distinct unreadable training images tolerated (each replaced by another image, see
    # grouppose.data.unreadable_images); one more stops training. -1: 1 % of the images.
    cfg.DATALOADER.MAX_BAD_IMAGES = -1


def get_grouppose_cfg(config_file: str = "", opts: Sequence = ()) -> CfgNode:
    """Detectron2's defaults + ``add_grouppose_config`` + ``config_file`` (if given) + ``KEY VALUE``
    ``opts``, unfrozen: the config every entry point (train_net, demo, tools) starts from.

    Group Pose's values of Detectron2's keys come from the config file: the shipped configs all
    inherit configs/Base-GroupPose.yaml. Without a file the config has Group Pose's keys but
    Detectron2's default model, input and solver.

    Raises:
        ValueError naming ``config_file`` when it does not exist, or naming the file or the
        overrides and the key when they set a key that does not exist.
    """
    cfg = get_cfg()
    add_grouppose_config(cfg)
    if config_file:
        if not os.path.isfile(config_file):
            raise ValueError(f"config file not found: '{config_file}'")
        try:
            cfg.merge_from_file(config_file)
        except (AssertionError, KeyError) as e:  # yacs: an unknown key
            raise ValueError(f"config file '{config_file}': {e.args[0]}") from None
    try:
        cfg.merge_from_list(list(opts))
    except (AssertionError, KeyError) as e:  # yacs: an unknown key, a KEY without its VALUE
        raise ValueError(f"config overrides (KEY VALUE ...): {e.args[0]}") from None
    return cfg


def config_key(name: str) -> str:
    """``MODEL.GROUP_POSE.<NAME>`` of a key, or of a field named after it (``self_attn``)."""
    return f"MODEL.GROUP_POSE.{name.upper()}"


class _Rule(NamedTuple):
    """What a config value must be: ``description`` completes "KEY must be ..."."""

    description: str
    accepts: Callable[[Any], bool]


def _is_int(value: Any) -> bool:
    # bool is an int subclass, but True as a layer count is a mistake, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _is_list(value: Any) -> bool:
    # YAML lists load as lists, Python configs may use tuples.
    return isinstance(value, (list, tuple))


def _integer(minimum: int) -> _Rule:
    return _Rule(f"an integer >= {minimum}", lambda v: _is_int(v) and v >= minimum)


_NON_NEGATIVE = _Rule("a finite number >= 0", lambda v: _is_number(v) and v >= 0)
_UNIT_INTERVAL = _Rule("a number in [0, 1]", lambda v: _is_number(v) and 0 <= v <= 1)

# MODEL.GROUP_POSE.<KEY> -> its rule. The ablation switches (SELF_ATTN ... SCORE_FROM) are
# checked by grouppose.modeling.variants.DecoderVariant, which also knows their valid combinations.
# Rules between keys belong to the parts built from them: HIDDEN_DIM a multiple of the GroupNorm
# groups and NUM_FEATURE_LEVELS >= len(IN_FEATURES) (InputProjection), KEYPOINT_CONFIDENCE with
# keypoint queries (its heads' builder); NHEADS dividing HIDDEN_DIM is check_grouppose_config's.
_RULES: Dict[str, _Rule] = {
    "NUM_INSTANCES": _integer(1),
    "NUM_KEYPOINTS": _integer(1),
    "HIDDEN_DIM": _integer(1),
    "NHEADS": _integer(1),
    "DIM_FEEDFORWARD": _integer(1),
    "DROPOUT": _Rule("a number in [0, 1)", lambda v: _is_number(v) and 0 <= v < 1),
    "ENC_LAYERS": _integer(0),  # 0: the two-stage selection reads the projected features
    "DEC_LAYERS": _integer(1),  # the predictions are the last decoder layer's
    "ENC_N_POINTS": _integer(1),
    "DEC_N_POINTS": _integer(1),
    "NUM_FEATURE_LEVELS": _integer(1),
    "IN_FEATURES": _Rule(
        "a non-empty list of backbone output names",
        lambda v: _is_list(v) and len(v) > 0 and all(isinstance(n, str) for n in v),
    ),
    "POS_TEMPERATURE": _Rule("a finite number > 0", lambda v: _is_number(v) and v > 0),
    "FOCAL_ALPHA": _UNIT_INTERVAL,
    **dict.fromkeys((
        "CLS_WEIGHT", "KPT_L1_WEIGHT", "OKS_WEIGHT", "COST_CLASS", "COST_KPT_L1", "COST_OKS",
        "INTERM_LOSS_WEIGHT", "BOX_L1_WEIGHT", "GIOU_WEIGHT", "COST_BOX_L1", "COST_GIOU",
        "KPT_CONF_WEIGHT",
    ), _NON_NEGATIVE),
    **dict.fromkeys(("AUX_LOSS", "KEYPOINT_CONFIDENCE"),
                    _Rule("True or False", lambda v: isinstance(v, bool))),
    "OKS_SIGMAS": _Rule(
        "a list of numbers > 0 (empty: from the dataset)",
        lambda v: _is_list(v) and all(_is_number(s) and s > 0 for s in v),
    ),
    "TEST_TOPK": _integer(1),
    "TEST_SCORE_THRESH": _UNIT_INTERVAL,
    "INFERENCE_PRECISION": _Rule(
        f"one of {list(INFERENCE_PRECISIONS)}", lambda v: v in INFERENCE_PRECISIONS
    ),
    "DETECTION_DECODER_LAYERS": _integer(0),
}


def check_grouppose_config(cfg: CfgNode) -> None:
    """Validate the type and range of every ``MODEL.GROUP_POSE`` key but the ablation switches
    (see ``_RULES``), and that NHEADS divides HIDDEN_DIM, so that a bad value fails when the
    model is built, in config-key terms. The other rules between keys belong to the parts that
    use them (InputProjection, DecoderVariant, the keypoint confidence heads).

    Raises:
        ValueError naming the key and its value; or telling to add the Group Pose keys when
        ``cfg`` lacks them (a plain Detectron2 config).
    """
    if "GROUP_POSE" not in cfg.MODEL:
        raise ValueError(
            "the config has no MODEL.GROUP_POSE keys, which MODEL.META_ARCHITECTURE 'GroupPose' "
            "needs: start from grouppose.config.get_grouppose_cfg(), or call "
            "grouppose.add_grouppose_config(cfg) before merging the config file"
        )
    gp = cfg.MODEL.GROUP_POSE
    for key, rule in _RULES.items():
        if not rule.accepts(gp[key]):
            raise ValueError(f"{config_key(key)} must be {rule.description}, got {gp[key]!r}")
    # Every attention layer splits its channels over the heads: checked here once, in terms of
    # the keys, for the two kinds (nn.MultiheadAttention, MSDeformAttn), before either is built.
    if gp.HIDDEN_DIM % gp.NHEADS != 0:
        raise ValueError(f"{config_key('NHEADS')} ({gp.NHEADS}) must divide "
                         f"{config_key('HIDDEN_DIM')} ({gp.HIDDEN_DIM})")


def inference_model_config(cfg: CfgNode) -> CfgNode:
    """A frozen copy of ``cfg`` for building a model that only runs inference or evaluation:
    its losses, which are not computed, take their OKS sigmas
    (grouppose.modeling.criterion.resolve_oks_sigmas) from
    DATASETS.TEST when it is set, so that a test set of other keypoints than DATASETS.TRAIN's
    needs no change of DATASETS.TRAIN."""
    cfg = cfg.clone()
    cfg.defrost()
    if len(cfg.DATASETS.TEST):
        cfg.DATASETS.TRAIN = cfg.DATASETS.TEST
    cfg.freeze()
    return cfg


def fall_back_to_cpu(cfg: CfgNode) -> None:
    """``MODEL.DEVICE`` = its ``available_device``."""
    cfg.MODEL.DEVICE = available_device(cfg.MODEL.DEVICE, "MODEL.DEVICE")


def available_device(device: str, key: str = "the device") -> str:
    """"cpu", with one warning line naming ``key``, when ``device`` names CUDA and this machine
    has no CUDA device (Detectron2 would fail later with "Found no NVIDIA driver"); else
    ``device``."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger(__name__).warning(
            f"{key} is '{device}' but no CUDA device is available: using the CPU"
        )
        return "cpu"
    return device
