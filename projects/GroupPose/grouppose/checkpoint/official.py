"""Official Group Pose checkpoints (Michel-liu/GroupPose) -> this project's parameter names.

The official model differs from ours only in names, plus two details handled here:
- its class heads have two logits (background, person) of which only the person logit (row 1)
  is ever a positive target; our heads predict that one logit, so row 0 is dropped;
- ``class_embed.*`` / ``pose_embed.*`` also appear as ``transformer.decoder.class_embed.*`` /
  ``transformer.decoder.pose_embed.*`` (the same tensors); the aliases are dropped.

Backbone names depend on the backbone. Each supported backbone is a ``BackboneMapping``
(detected from the checkpoint's keys) in ``BACKBONE_MAPPINGS``; add new backbones there.
Supported: torchvision ResNets (``backbone.0.body.*``) and Swin Transformers
(``backbone.0.*``, the reference Swin names, which ours are; see grouppose.modeling.backbone.swin).
"""

import argparse
import re
from dataclasses import dataclass, fields
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from grouppose.modeling.variants import DecoderVariant

from .keys import count_layers
from .safe_load import read_weights_file
from .swin import (
    RELATIVE_POSITION_INDEX_REASON,
    SwinArchitecture,
    check_relative_position_index,
    is_relative_position_index,
    rename_swin_key,
)

_OFFICIAL_BACKBONE_PREFIX = "backbone.0."
# Official class heads: row 0 = background logit, row 1 = person logit.
_PERSON_ROW = 1
_CLASS_HEAD_KEY = re.compile(
    r"^(class_embed\.\d+|transformer\.enc_out_class_embed)\.(weight|bias)$"
)
_DECODER_HEAD_ALIAS = re.compile(r"^transformer\.decoder\.((?:class|pose)_embed\..*)$")
_ALIAS_REASON = "duplicate decoder-head aliases transformer.decoder.{class,pose}_embed.*"

# Non-backbone renames: (official pattern, our replacement), first match wins.
_RENAMES: List[Tuple[re.Pattern, str]] = [
    (re.compile(p), r)
    for p, r in [
        (r"^transformer\.level_embed$", "encoder.level_embed"),
        (r"^transformer\.encoder\.layers\.(\d+)\.self_attn\.", r"encoder.layers.\1.self_attn."),
        (r"^transformer\.encoder\.layers\.(\d+)\.norm1\.", r"encoder.layers.\1.self_attn_norm."),
        (r"^transformer\.encoder\.layers\.(\d+)\.linear([12])\.",
         r"encoder.layers.\1.ffn.linear\2."),
        (r"^transformer\.encoder\.layers\.(\d+)\.norm2\.", r"encoder.layers.\1.ffn.norm."),
        (r"^transformer\.decoder\.layers\.(\d+)\.within_attn\.",
         r"decoder.layers.\1.within_instance_attn."),
        (r"^transformer\.decoder\.layers\.(\d+)\.within_norm\.",
         r"decoder.layers.\1.within_instance_norm."),
        (r"^transformer\.decoder\.layers\.(\d+)\.across_attn\.",
         r"decoder.layers.\1.across_instance_attn."),
        (r"^transformer\.decoder\.layers\.(\d+)\.across_norm\.",
         r"decoder.layers.\1.across_instance_norm."),
        (r"^transformer\.decoder\.layers\.(\d+)\.cross_attn\.", r"decoder.layers.\1.cross_attn."),
        (r"^transformer\.decoder\.layers\.(\d+)\.norm1\.", r"decoder.layers.\1.cross_attn_norm."),
        (r"^transformer\.decoder\.layers\.(\d+)\.linear([12])\.",
         r"decoder.layers.\1.ffn.linear\2."),
        (r"^transformer\.decoder\.layers\.(\d+)\.norm2\.", r"decoder.layers.\1.ffn.norm."),
        (r"^transformer\.decoder\.half_pose_ref_point_head\.", "decoder.keypoint_pos_head."),
        (r"^class_embed\.(\d+)\.", r"decoder.class_heads.\1."),
        (r"^pose_embed\.(\d+)\.", r"decoder.keypoint_heads.\1."),
        (r"^transformer\.instance_embedding\.", "queries.instance_embedding."),
        (r"^transformer\.keypoint_embedding\.", "queries.keypoint_embedding."),
        (r"^transformer\.enc_output\.", "query_selection.memory_proj."),
        (r"^transformer\.enc_output_norm\.", "query_selection.memory_norm."),
        (r"^transformer\.enc_out_class_embed\.", "query_selection.class_head."),
        (r"^transformer\.enc_pose_embed\.", "query_selection.keypoint_head."),
    ]
]


BackboneStateDict = Mapping[str, Tensor]


@dataclass(frozen=True)
class BackboneMapping:
    """How one backbone family's official keys map to our ``backbone.*`` keys.

    All callables take the official backbone state dict (or its keys) with the ``backbone.0.``
    prefix stripped.
    """

    name: str
    detect: Callable[[BackboneStateDict], bool]  # whether the keys are this backbone's
    rename: Callable[[str], Optional[str]]  # key -> our key, None = drop
    dropped: str  # why ``rename`` drops the keys it drops
    describe: Callable[[BackboneStateDict], str]  # the variant, e.g. "ResNet-50"
    # (state dict, cfg) -> descriptions of the config keys that disagree with the checkpoint
    config_mismatches: Callable[[BackboneStateDict, object], List[str]]
    # raises ValueError if the values of the keys ``rename`` drops are not what we derive
    check_dropped: Callable[[BackboneStateDict], None] = lambda state_dict: None


def _backbone_name_mismatch(cfg, expected: str, family: str) -> List[str]:
    name = cfg.MODEL.BACKBONE.NAME
    if name == expected:
        return []
    return [f"MODEL.BACKBONE.NAME={name} but the checkpoint's backbone is {family} ({expected})"]


# torchvision ResNet (under body.): layer{i}.{b}.conv{z} / bn{z} / downsample.{0,1}.
_RESNET_BLOCK_KEY = re.compile(
    r"^layer(\d)\.(\d+)\."
    r"(?:conv(\d)\.weight|bn(\d)\.(\w+)|downsample\.0\.weight|downsample\.1\.(\w+))$"
)
_RESNET_PREFIX = "body."


def _rename_resnet(key: str) -> Optional[str]:
    """torchvision ResNet name -> Detectron2 ResNet name; None for BatchNorm step counters."""
    if key.endswith(".num_batches_tracked"):
        return None
    if not key.startswith(_RESNET_PREFIX):
        raise ValueError(f"official checkpoint: unrecognised ResNet key 'backbone.0.{key}'")
    key = key[len(_RESNET_PREFIX):]
    if key == "conv1.weight":
        return "backbone.stem.conv1.weight"
    if key.startswith("bn1."):
        return "backbone.stem.conv1.norm." + key[len("bn1."):]
    match = _RESNET_BLOCK_KEY.match(key)
    if match is None:
        raise ValueError(f"official checkpoint: unrecognised ResNet key 'backbone.0.body.{key}'")
    layer, block, conv, bn, bn_param, shortcut_bn_param = match.groups()
    prefix = f"backbone.res{int(layer) + 1}.{block}."
    if conv is not None:
        return f"{prefix}conv{conv}.weight"
    if bn is not None:
        return f"{prefix}conv{bn}.norm.{bn_param}"
    if shortcut_bn_param is not None:
        return f"{prefix}shortcut.norm.{shortcut_bn_param}"
    return f"{prefix}shortcut.weight"


# (blocks per stage, bottleneck blocks) -> depth of torchvision's ResNets.
_RESNET_DEPTHS = {
    ((2, 2, 2, 2), False): 18,
    ((3, 4, 6, 3), False): 34,
    ((3, 4, 6, 3), True): 50,
    ((3, 4, 23, 3), True): 101,
    ((3, 8, 36, 3), True): 152,
}


def _resnet_depth(keys: BackboneStateDict) -> Optional[int]:
    blocks = tuple(count_layers(keys, f"body.layer{stage}.") for stage in range(1, 5))
    bottleneck = any(k.startswith("body.layer1.0.conv3.") for k in keys)
    return _RESNET_DEPTHS.get((blocks, bottleneck))


def _resnet_config_mismatches(keys: BackboneStateDict, cfg) -> List[str]:
    mismatches = _backbone_name_mismatch(cfg, "build_resnet_backbone", "a ResNet")
    depth = _resnet_depth(keys)
    if depth != cfg.MODEL.RESNETS.DEPTH:
        mismatches.append(f"MODEL.RESNETS.DEPTH={cfg.MODEL.RESNETS.DEPTH} but the checkpoint's "
                          f"ResNet has depth {depth or 'unknown'}")
    return mismatches


def _swin_config_mismatches(state_dict: BackboneStateDict, cfg) -> List[str]:
    return (_backbone_name_mismatch(cfg, "build_swin_backbone", "a Swin Transformer")
            + SwinArchitecture.read(state_dict).config_mismatches(cfg))


def _rename_swin(key: str) -> Optional[str]:
    if is_relative_position_index(key):
        return None
    return rename_swin_key(key, f"official checkpoint: 'backbone.0.{key}'")


BACKBONE_MAPPINGS: List[BackboneMapping] = [
    BackboneMapping(
        name="resnet",
        detect=lambda keys: any(k.startswith("body.layer1.") for k in keys),
        rename=_rename_resnet,
        dropped="BatchNorm num_batches_tracked counters",
        describe=lambda keys: f"ResNet-{_resnet_depth(keys) or '?'}",
        config_mismatches=_resnet_config_mismatches,
    ),
    BackboneMapping(
        name="swin",
        detect=lambda keys: "patch_embed.proj.weight" in keys,
        rename=_rename_swin,
        dropped=RELATIVE_POSITION_INDEX_REASON,
        describe=lambda state_dict: SwinArchitecture.read(state_dict).describe(),
        config_mismatches=_swin_config_mismatches,
        check_dropped=check_relative_position_index,
    ),
]


@dataclass(frozen=True)
class OfficialArchitecture:
    """Architecture numbers readable from a checkpoint (the config keys they must match)."""

    num_keypoints: int  # MODEL.GROUP_POSE.NUM_KEYPOINTS
    hidden_dim: int  # MODEL.GROUP_POSE.HIDDEN_DIM
    enc_layers: int  # MODEL.GROUP_POSE.ENC_LAYERS
    dec_layers: int  # MODEL.GROUP_POSE.DEC_LAYERS
    num_feature_levels: int  # MODEL.GROUP_POSE.NUM_FEATURE_LEVELS

    def summary(self) -> str:
        return ", ".join(f"{f.name.upper()}={getattr(self, f.name)}" for f in fields(self))


def _require(state_dict: Mapping[str, Tensor], key: str) -> Tensor:
    if key not in state_dict:
        raise ValueError(f"official checkpoint: missing '{key}'; is this a Group Pose checkpoint?")
    return state_dict[key]


def infer_architecture(state_dict: Mapping[str, Tensor]) -> OfficialArchitecture:
    """Read K, hidden size, layer and level counts from an official state dict."""
    keys = list(state_dict)
    level_embed = _require(state_dict, "transformer.level_embed")
    return OfficialArchitecture(
        num_keypoints=_require(state_dict, "transformer.keypoint_embedding.weight").shape[0],
        hidden_dim=level_embed.shape[1],
        enc_layers=count_layers(keys, "transformer.encoder.layers."),
        dec_layers=count_layers(keys, "transformer.decoder.layers."),
        num_feature_levels=level_embed.shape[0],
    )


def architecture_mismatches(architecture: OfficialArchitecture, cfg) -> List[str]:
    """Descriptions of the MODEL.GROUP_POSE keys that disagree with the checkpoint (official
    checkpoints are of the paper's model: no ablation variant, no detection decoder)."""
    gp = cfg.MODEL.GROUP_POSE
    mismatches = [
        f"MODEL.GROUP_POSE.{f.name.upper()}={gp[f.name.upper()]} but the "
        f"checkpoint has {getattr(architecture, f.name)}"
        for f in fields(architecture)
        if gp[f.name.upper()] != getattr(architecture, f.name)
    ]
    variant = DecoderVariant.from_config(gp).non_default()
    if gp.DETECTION_DECODER_LAYERS:
        variant.append(f"MODEL.GROUP_POSE.DETECTION_DECODER_LAYERS={gp.DETECTION_DECODER_LAYERS}")
    mismatches += [f"{setting} but official checkpoints are of the paper's model"
                   for setting in variant]
    return mismatches


def _refuse_mismatches(mismatches: List[str]) -> None:
    if mismatches:
        raise ValueError(
            "official checkpoint does not match the config: " + "; ".join(mismatches)
        )


def check_architecture(architecture: OfficialArchitecture, cfg) -> None:
    """Raise ValueError naming every MODEL.GROUP_POSE key that disagrees with the checkpoint."""
    _refuse_mismatches(architecture_mismatches(architecture, cfg))


def _backbone_mapping(backbone: BackboneStateDict) -> BackboneMapping:
    for mapping in BACKBONE_MAPPINGS:
        if mapping.detect(backbone):
            return mapping
    supported = ", ".join(m.name for m in BACKBONE_MAPPINGS)
    raise ValueError(
        f"official checkpoint: backbone not recognised (supported: {supported}); "
        f"first keys: {list(backbone)[:3]}"
    )


def _rename_input_proj(key: str, num_backbone_levels: int) -> str:
    """input_proj.{l}.{0 conv, 1 GroupNorm}.* -> input_proj.{projections|extra_levels}.{i}.*"""
    match = re.match(r"^input_proj\.(\d+)\.([01])\.(weight|bias)$", key)
    if match is None:
        raise ValueError(f"official checkpoint: unrecognised key '{key}'")
    level, part, param = int(match.group(1)), match.group(2), match.group(3)
    if level < num_backbone_levels:
        name = f"input_proj.projections.{level}"
    else:
        name = f"input_proj.extra_levels.{level - num_backbone_levels}"
    return f"{name}.{param}" if part == "0" else f"{name}.norm.{param}"


def _num_backbone_levels(state_dict: Mapping[str, Tensor]) -> int:
    """Levels projected by a 1x1 conv (backbone outputs); the others are stride-2 3x3 convs."""
    return sum(
        1 for key, value in state_dict.items()
        if re.match(r"^input_proj\.\d+\.0\.weight$", key) and value.shape[-1] == 1
    )


def _rename(key: str) -> str:
    for pattern, replacement in _RENAMES:
        if pattern.match(key):
            return pattern.sub(replacement, key, count=1)
    raise ValueError(f"official checkpoint: unrecognised key '{key}'")


@dataclass
class ConversionReport:
    """What the conversion did, for the one-line summary."""

    architecture: OfficialArchitecture
    backbone: str  # e.g. "ResNet-50"
    num_mapped: int
    dropped: Dict[str, List[str]]  # reason -> official keys not converted
    person_rows: List[str]  # official class-head keys reduced to their person row
    key_map: Dict[str, str]  # official key -> our key (aliases included)

    def summary(self) -> str:
        dropped = ", ".join(f"{len(keys)} {reason}" for reason, keys in self.dropped.items())
        return (
            f"converted official Group Pose checkpoint ({self.backbone}; "
            f"{self.architecture.summary()}): {self.num_mapped} keys mapped "
            f"({len(self.person_rows)} class-head tensors reduced to the person logit, "
            f"background row 0 dropped); dropped {sum(map(len, self.dropped.values()))} keys"
            f" ({dropped or 'none'})"
        )


def convert_official_checkpoint(
    state_dict: Mapping[str, Tensor], cfg=None
) -> Tuple[Dict[str, Tensor], ConversionReport]:
    """Convert an official state dict (float tensors become float32).

    Args:
        state_dict: the official ``checkpoint["model"]``.
        cfg: if given, the target config; a checkpoint disagreeing with it is refused.

    Returns:
        (our state dict, report).
    """
    architecture = infer_architecture(state_dict)
    prefix = _OFFICIAL_BACKBONE_PREFIX
    backbone_state = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    backbone = _backbone_mapping(backbone_state)
    if cfg is not None:
        _refuse_mismatches(
            architecture_mismatches(architecture, cfg)
            + backbone.config_mismatches(backbone_state, cfg)
        )
    backbone.check_dropped(backbone_state)
    num_backbone_levels = _num_backbone_levels(state_dict)

    converted: Dict[str, Tensor] = {}
    dropped: Dict[str, List[str]] = {}
    person_rows: List[str] = []
    key_map: Dict[str, str] = {}
    for key, tensor in state_dict.items():
        tensor = tensor.float() if tensor.is_floating_point() else tensor
        alias = _DECODER_HEAD_ALIAS.match(key)
        if alias is not None:
            original = state_dict.get(alias.group(1))
            if original is None or not torch.equal(original, state_dict[key]):
                raise ValueError(
                    f"official checkpoint: '{key}' should duplicate '{alias.group(1)}'"
                )
            dropped.setdefault(_ALIAS_REASON, []).append(key)
            continue
        if key.startswith(_OFFICIAL_BACKBONE_PREFIX):
            new_key = backbone.rename(key[len(_OFFICIAL_BACKBONE_PREFIX):])
            if new_key is None:
                dropped.setdefault(backbone.dropped, []).append(key)
                continue
        elif key.startswith("input_proj."):
            new_key = _rename_input_proj(key, num_backbone_levels)
        else:
            new_key = _rename(key)
        if _CLASS_HEAD_KEY.match(key):
            if tensor.shape[0] != 2:
                raise ValueError(
                    f"official checkpoint: '{key}' should have 2 rows (background, person), "
                    f"got shape {tuple(tensor.shape)}"
                )
            tensor = tensor[_PERSON_ROW : _PERSON_ROW + 1]
            person_rows.append(key)
        converted[new_key] = tensor.contiguous()
        key_map[key] = new_key
    for alias in dropped.get(_ALIAS_REASON, []):
        key_map[alias] = key_map[_DECODER_HEAD_ALIAS.match(alias).group(1)]
    report = ConversionReport(
        architecture, backbone.describe(backbone_state), len(converted), dropped, person_rows,
        key_map,
    )
    return converted, report


CONVERTED_AUTHOR = "Group Pose official implementation (Michel-liu/GroupPose), converted"


def load_official_state_dict(path: str, trust_pickle: bool = False) -> Dict[str, Tensor]:
    """The ``model`` state dict of an official checkpoint file.

    Official checkpoints also pickle their training arguments (an ``argparse.Namespace``), which
    is allowed; anything else that is not a weight needs ``trust_pickle`` (arbitrary code can run
    while unpickling: only for trusted files). See ``read_weights_file``.
    """
    checkpoint = read_weights_file(path, trust_pickle, allowed_globals=[argparse.Namespace])
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(checkpoint).__name__}")
    state_dict = checkpoint.get("model", checkpoint)
    if not state_dict or not all(isinstance(v, Tensor) for v in state_dict.values()):
        raise ValueError(f"{path}: expected {{'model': state_dict}} with tensor values")
    return state_dict


def detectron2_checkpoint(state_dict: Dict[str, Tensor]) -> Dict:
    """Wrap a converted state dict as a Detectron2 checkpoint (loaded without renaming)."""
    return {"model": state_dict, "__author__": CONVERTED_AUTHOR, "matching_heuristics": False}
