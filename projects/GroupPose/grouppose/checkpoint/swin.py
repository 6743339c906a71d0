"""Swin Transformer checkpoints in the reference Swin names -> our Swin backbone.

Our Swin (grouppose.modeling.backbone.swin) uses the reference names, so a reference key ``k``
becomes ``backbone.k``; ``relative_position_index`` buffers are dropped after checking that they
are the index we derive from the window size. Two sources use these names:
- the official Group Pose Swin checkpoints (under ``backbone.0.``; see grouppose.checkpoint.
  official);
- the ImageNet Swin classification checkpoints (``{"model": state_dict}`` as the Swin
  Transformer repository releases them, e.g. swin_tiny_patch4_window7_224.pth), the backbone
  initialisation of the Swin configs: their classification ``head``, final ``norm`` and the
  ``attn_mask`` buffers of shifted blocks are dropped; the per-stage output norms ``norm{i}``
  are not in them and start at their initialisation.
"""

import re
from dataclasses import dataclass, fields
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from grouppose.modeling.backbone.swin import relative_position_index, stage_names, swin_variant_name

from .keys import count_layers

RELATIVE_POSITION_INDEX_REASON = (
    "Swin relative_position_index buffers (derived from the window size)"
)
_RELATIVE_POSITION_INDEX_SUFFIX = "attn.relative_position_index"
_SWIN_KEY = re.compile(
    r"^(?:patch_embed\.(?:proj|norm)\.(?:weight|bias)"
    r"|layers\.\d+\.blocks\.\d+\.(?:norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"
    r"\.(?:weight|bias)"
    r"|layers\.\d+\.blocks\.\d+\.attn\.relative_position_bias_table"
    r"|layers\.\d+\.downsample\.(?:reduction\.weight|norm\.(?:weight|bias))"
    r"|norm\d\.(?:weight|bias))$"
)
_OUTPUT_NORM_KEY = re.compile(r"^norm(\d)\.weight$")
# Classification-only entries of ImageNet checkpoints: the head, the final norm (``norm.``, not
# ``norm{i}.``) and the precomputed shifted-window masks.
_IMAGENET_ONLY_KEY = re.compile(r"^(?:head\.|norm\.)|\.attn_mask$")
_IMAGENET_ONLY_REASON = "classification head, final norm and attn_mask buffers"


def is_relative_position_index(key: str) -> bool:
    return key.endswith(_RELATIVE_POSITION_INDEX_SUFFIX)


def rename_swin_key(key: str, source: str) -> str:
    """Reference Swin parameter name -> ours; ``source`` names the key in the error."""
    if _SWIN_KEY.match(key) is None:
        raise ValueError(f"{source}: not a Swin parameter name")
    return "backbone." + key


@dataclass(frozen=True)
class SwinArchitecture:
    """The MODEL.SWIN values readable from a state dict in the reference names."""

    embed_dim: int
    depths: List[int]
    num_heads: List[int]
    window_size: int
    out_features: List[str]

    @classmethod
    def read(cls, state_dict: Mapping[str, Tensor]) -> "SwinArchitecture":
        stages = range(count_layers(state_dict, "layers."))
        tables = [state_dict[f"layers.{i}.blocks.0.attn.relative_position_bias_table"]
                  for i in stages]
        output_norms = sorted(
            int(m.group(1)) for m in map(_OUTPUT_NORM_KEY.match, state_dict) if m
        )
        return cls(
            embed_dim=state_dict["patch_embed.proj.weight"].shape[0],
            depths=[count_layers(state_dict, f"layers.{i}.blocks.") for i in stages],
            num_heads=[table.shape[1] for table in tables],
            # The bias table has (2 * window_size - 1) ** 2 rows.
            window_size=(round(tables[0].shape[0] ** 0.5) + 1) // 2,
            out_features=[stage_names()[i] for i in output_norms],
        )

    def describe(self) -> str:
        return f"{swin_variant_name(self.embed_dim, self.depths)}, window {self.window_size}"

    def config_mismatches(self, cfg, check_out_features: bool = True) -> List[str]:
        """Descriptions of the MODEL.SWIN keys that disagree with these values."""
        mismatches = []
        for f in fields(self):
            if f.name == "out_features" and not check_out_features:
                continue
            value, expected = cfg.MODEL.SWIN[f.name.upper()], getattr(self, f.name)
            if (list(value) if isinstance(expected, list) else value) != expected:
                mismatches.append(
                    f"MODEL.SWIN.{f.name.upper()}={value} but the checkpoint has {expected}"
                )
        return mismatches


def check_relative_position_index(state_dict: Mapping[str, Tensor]) -> None:
    """Raise ValueError unless every relative_position_index is the one of the window size."""
    window_size = SwinArchitecture.read(state_dict).window_size
    expected = relative_position_index(window_size)
    for key, value in state_dict.items():
        if is_relative_position_index(key) and not torch.equal(value.long(), expected):
            raise ValueError(f"'{key}' is not the relative position index of window size "
                             f"{window_size}")


def convert_imagenet_swin(
    state_dict: Mapping[str, Tensor], cfg=None
) -> Tuple[Dict[str, Tensor], Dict[str, List[str]]]:
    """ImageNet Swin classification weights -> our ``backbone.*`` keys (float32).

    Args:
        state_dict: the checkpoint's ``model``.
        cfg: if given, refuse weights whose MODEL.SWIN architecture disagrees with it.

    Returns:
        (converted state dict, {reason: dropped keys}).
    """
    if "patch_embed.proj.weight" not in state_dict:
        raise ValueError("ImageNet Swin checkpoint: no 'patch_embed.proj.weight'; is this a Swin "
                         "Transformer classification checkpoint?")
    backbone = {k: v for k, v in state_dict.items() if not _IMAGENET_ONLY_KEY.search(k)}
    if cfg is not None:
        mismatches = SwinArchitecture.read(backbone).config_mismatches(
            cfg, check_out_features=False
        )
        if mismatches:
            raise ValueError("ImageNet Swin checkpoint does not match the config: "
                             + "; ".join(mismatches))
    check_relative_position_index(backbone)
    converted: Dict[str, Tensor] = {}
    dropped: Dict[str, List[str]] = {}
    for key, tensor in state_dict.items():
        reason: Optional[str] = None
        if _IMAGENET_ONLY_KEY.search(key):
            reason = _IMAGENET_ONLY_REASON
        elif is_relative_position_index(key):
            reason = RELATIVE_POSITION_INDEX_REASON
        if reason is not None:
            dropped.setdefault(reason, []).append(key)
            continue
        new_key = rename_swin_key(key, f"ImageNet Swin checkpoint: '{key}'")
        converted[new_key] = tensor.float() if tensor.is_floating_point() else tensor
    return converted, dropped
