"""Swin Transformer backbones (Liu et al., ICCV 2021) computed as Swin-for-detection code does.

What detection needs beyond the classification Swin, reproduced here because each changes
numbers:
- any input size: the image is zero-padded bottom/right to a multiple of the patch size; every
  block zero-pads its *normalised* tokens bottom/right to a multiple of the window size, attends
  on the padded map (padding tokens are not masked: they are keys and values too) and crops the
  padding again; patch merging pads an odd height or width with one zero row / column;
- the shifted-window attention mask is computed per padded size: tokens of different regions
  of the rolled map get -100 added to their attention logits;
- patch merging concatenates x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2] (in that
  order) and applies LayerNorm before the linear reduction; it belongs to the stage it ends;
- a LayerNorm per returned stage (``norm{i}``), no classification head.

Parameter names are those of the reference Swin implementation (``patch_embed.proj/norm``,
``layers.{i}.blocks.{j}.{norm1, attn.qkv, attn.proj, attn.relative_position_bias_table, norm2,
mlp.fc1, mlp.fc2}``, ``layers.{i}.downsample.{norm, reduction}``, ``norm{i}``), so ImageNet Swin
checkpoints and the official Group Pose Swin checkpoints map onto them one to one.
``relative_position_index`` is derived from the window size and not saved.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torchvision.ops import StochasticDepth

__all__ = ["SwinTransformer", "build_swin_backbone", "relative_position_index"]

PATCH_SIZE = 4
# Added to the attention logits of token pairs from different regions of a shifted window (the
# reference value; exp(-100) underflows to 0 against any in-region logit).
_SHIFTED_WINDOW_MASK_VALUE = -100.0
_BIAS_TABLE_INIT_STD = 0.02


def stage_names() -> List[str]:
    """Output names of the four stages (strides 4, 8, 16, 32), finest first."""
    return [f"res{i + 2}" for i in range(4)]


def _pad_bottom_right(x: Tensor, multiple: int) -> Tensor:
    """(B, H, W, C) -> (B, H', W', C) zero-padded at the bottom/right to multiples of
    ``multiple``."""
    _, H, W, _ = x.shape
    pad_h, pad_w = (-H) % multiple, (-W) % multiple
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    return x


def window_partition(x: Tensor, window_size: int) -> Tensor:
    """(B, H, W, C), H and W multiples of window_size -> (B * nW, window_size**2, C), windows in
    row-major order per image, tokens row-major inside a window."""
    B, H, W, C = x.shape
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, C)


def window_merge(windows: Tensor, window_size: int, H: int, W: int) -> Tensor:
    """Inverse of window_partition: (B * nW, window_size**2, C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.view(-1, H // window_size, W // window_size, window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


def relative_position_index(window_size: int) -> Tensor:
    """(ws**2, ws**2) int64: row of the bias table for each (query, key) token pair of a window.

    The offset (dy, dx) in [-(ws-1), ws-1]**2 maps to (dy + ws - 1) * (2 ws - 1) + dx + ws - 1.
    """
    coords = torch.stack(torch.meshgrid(
        torch.arange(window_size), torch.arange(window_size), indexing="ij"
    )).flatten(1)  # (2, ws**2): (y, x) of each token
    offset = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)
    return offset[..., 0] * (2 * window_size - 1) + offset[..., 1]


def shifted_window_mask(
    height: int, width: int, window_size: int, shift: int, device: torch.device
) -> Tensor:
    """Attention mask of the windows of a map rolled by (-shift, -shift).

    Args:
        height, width: the padded map size (multiples of window_size).

    Returns:
        (nW, ws**2, ws**2) float: 0 for token pairs from the same region of the un-rolled map,
        -100 otherwise. Regions split each axis at -window_size and -shift.
    """
    regions = torch.zeros((1, height, width, 1), device=device)
    bounds = (slice(0, -window_size), slice(-window_size, -shift), slice(-shift, None))
    label = 0
    for rows in bounds:
        for cols in bounds:
            regions[:, rows, cols] = label
            label += 1
    windows = window_partition(regions, window_size).squeeze(-1)  # (nW, ws**2)
    different = windows[:, None, :] != windows[:, :, None]
    return torch.zeros(different.shape, device=device).masked_fill(
        different, _SHIFTED_WINDOW_MASK_VALUE
    )


class PatchEmbedding(nn.Module):
    """Non-overlapping PATCH_SIZE x PATCH_SIZE patches -> embed_dim channels, then LayerNorm."""

    def __init__(self, in_channels: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, PATCH_SIZE, stride=PATCH_SIZE)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, ceil(H / 4), ceil(W / 4), embed_dim)."""
        _, _, H, W = x.shape
        x = F.pad(x, (0, (-W) % PATCH_SIZE, 0, (-H) % PATCH_SIZE))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative position bias."""

    def __init__(self, dim: int, num_heads: int, window_size: int):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"Swin: stage width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads)
        )
        nn.init.trunc_normal_(self.relative_position_bias_table, std=_BIAS_TABLE_INIT_STD)
        self.register_buffer(
            "relative_position_index", relative_position_index(window_size), persistent=False
        )

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """
        Args:
            x: (B * nW, T, C) tokens of each window (T = ws**2).
            mask: (nW, T, T) additive mask, the same for every image, or None.

        Returns:
            (B * nW, T, C).
        """
        windows, T, C = x.shape
        qkv = self.qkv(x).view(windows, T, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B * nW, heads, T, head_dim)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(T, T, -1).permute(2, 0, 1)
        if mask is not None:
            num_windows = mask.shape[0]
            attn = attn.view(-1, num_windows, self.num_heads, T, T) + mask[None, :, None]
            attn = attn.view(windows, self.num_heads, T, T)
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(windows, T, C)
        return self.proj(x)


class SwinMlp(nn.Module):
    """fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    """Pre-norm block: (shifted) window attention and MLP, each with stochastic depth."""

    def __init__(
        self, dim: int, num_heads: int, window_size: int, shift: int, mlp_ratio: float,
        drop_path: float,
    ):
        super().__init__()
        self.window_size = window_size
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.drop_path = StochasticDepth(drop_path, mode="row")
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = SwinMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, shift_mask: Optional[Tensor]) -> Tensor:
        """
        Args:
            x: (B, H, W, C).
            shift_mask: the stage's shifted_window_mask for the padded size (used if shifted).

        Returns:
            (B, H, W, C).
        """
        _, H, W, C = x.shape
        tokens = _pad_bottom_right(self.norm1(x), self.window_size)
        padded_h, padded_w = tokens.shape[1:3]
        if self.shift:
            tokens = torch.roll(tokens, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = self.attn(
            window_partition(tokens, self.window_size), shift_mask if self.shift else None
        )
        tokens = window_merge(windows, self.window_size, padded_h, padded_w)
        if self.shift:
            tokens = torch.roll(tokens, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + self.drop_path(tokens[:, :H, :W].contiguous())
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhoods -> one token: concatenate (4C), LayerNorm, linear to 2C."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, ceil(H / 2), ceil(W / 2), 2C)."""
        x = _pad_bottom_right(x, 2)
        x = torch.cat(
            [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1
        )
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """Blocks alternating regular and shifted windows, then (except the last stage) merging."""

    def __init__(
        self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
        drop_paths: Sequence[float], downsample: bool, use_checkpoint: bool,
    ):
        super().__init__()
        self.window_size = window_size
        self.shift = window_size // 2
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else self.shift, mlp_ratio,
                      drop_paths[i])
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """(B, H, W, C) -> (stage output (B, H, W, C), next stage input (B, ceil(H / 2),
        ceil(W / 2), 2C) or None for the last stage)."""
        _, H, W, _ = x.shape
        ws = self.window_size
        shift_mask = shifted_window_mask(
            H + (-H) % ws, W + (-W) % ws, ws, self.shift, x.device
        ).to(x.dtype)
        for block in self.blocks:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, shift_mask, use_reentrant=False)
            else:
                x = block(x, shift_mask)
        return x, (self.downsample(x) if self.downsample is not None else None)


class SwinTransformer(Backbone):
    """Swin backbone returning stage outputs ``res2`` .. ``res5`` (strides 4, 8, 16, 32).

    Each returned stage i (res{i+2}) gets its own LayerNorm ``norm{i}``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.2,
        out_features: Sequence[str] = ("res3", "res4", "res5"),
        freeze_at: int = 0,
        use_checkpoint: bool = False,
    ):
        """
        Args:
            embed_dim: width of stage 0; stage i has embed_dim * 2**i channels.
            depths, num_heads: blocks and attention heads per stage (4 stages).
            window_size: attention window side (7 for ImageNet-224, 12 for ImageNet-384
                pretraining).
            drop_path_rate: stochastic depth rate, increasing linearly from 0 over all blocks.
            out_features: stages returned, among res2 .. res5.
            freeze_at: as Detectron2's MODEL.BACKBONE.FREEZE_AT: 0 = nothing frozen, 1 = the
                patch embedding, k >= 2 = the patch embedding and stages res2 .. res{k}.
            use_checkpoint: recompute blocks in the backward pass (activation checkpointing)
                to save memory.
        """
        super().__init__()
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(
                f"Swin: DEPTHS and NUM_HEADS need 4 values, got {list(depths)} / {list(num_heads)}"
            )
        names = stage_names()
        unknown = [name for name in out_features if name not in names]
        if unknown or not out_features:
            raise ValueError(f"Swin: OUT_FEATURES must be among {names}, got {list(out_features)}")
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"Swin: FREEZE_AT must be in 0..5, got {freeze_at}")
        self.patch_embed = PatchEmbedding(in_channels, embed_dim)
        drop_paths = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            start = sum(depths[:i])
            self.layers.append(SwinStage(
                embed_dim * 2**i, depth, heads, window_size, mlp_ratio,
                drop_paths[start : start + depth], downsample=i < 3,
                use_checkpoint=use_checkpoint,
            ))
        self._out_features = [name for name in names if name in out_features]
        self._out_feature_channels = {name: embed_dim * 2**i for i, name in enumerate(names)}
        self._out_feature_strides = {name: PATCH_SIZE * 2**i for i, name in enumerate(names)}
        for name in self._out_features:
            stage = names.index(name)
            self.add_module(f"norm{stage}", nn.LayerNorm(embed_dim * 2**stage))
        self._frozen = ([self.patch_embed] if freeze_at >= 1 else []) + list(
            self.layers[: max(freeze_at - 1, 0)]
        )
        for module in self._frozen:
            for p in module.parameters():
                p.requires_grad_(False)
        self._init_weights()
        self.train()

    def _init_weights(self) -> None:
        """Truncated-normal (std 0.02) linear weights, zero biases, unit LayerNorms (the
        reference initialisation; pretrained weights replace it)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=_BIAS_TABLE_INIT_STD)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def train(self, mode: bool = True) -> "SwinTransformer":
        """Frozen parts stay in eval mode (no stochastic depth)."""
        super().train(mode)
        for module in self._frozen:
            module.eval()
        return self

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """(B, C_in, H, W) -> {res{i+2}: (B, C_i, ceil(H / 4 / 2**i), ...)} for out_features."""
        outputs = {}
        x = self.patch_embed(x)
        for stage, layer in enumerate(self.layers):
            out, x = layer(x)
            name = stage_names()[stage]
            if name in self._out_features:
                outputs[name] = getattr(self, f"norm{stage}")(out).permute(0, 3, 1, 2).contiguous()
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }


@BACKBONE_REGISTRY.register()
def build_swin_backbone(cfg, input_shape: ShapeSpec) -> SwinTransformer:
    """Swin from ``cfg.MODEL.SWIN`` (see grouppose.config) and MODEL.BACKBONE.FREEZE_AT."""
    swin = cfg.MODEL.SWIN
    return SwinTransformer(
        in_channels=input_shape.channels,
        embed_dim=swin.EMBED_DIM,
        depths=swin.DEPTHS,
        num_heads=swin.NUM_HEADS,
        window_size=swin.WINDOW_SIZE,
        mlp_ratio=swin.MLP_RATIO,
        drop_path_rate=swin.DROP_PATH_RATE,
        out_features=swin.OUT_FEATURES,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        use_checkpoint=swin.USE_CHECKPOINT,
    )


def swin_variant_name(embed_dim: int, depths: Sequence[int]) -> str:
    """"Swin-T" / "Swin-S" / "Swin-B" / "Swin-L" for the standard sizes, else a description."""
    known: Dict[Tuple[int, Tuple[int, ...]], str] = {
        (96, (2, 2, 6, 2)): "Swin-T", (96, (2, 2, 18, 2)): "Swin-S",
        (128, (2, 2, 18, 2)): "Swin-B", (192, (2, 2, 18, 2)): "Swin-L",
    }
    return known.get((embed_dim, tuple(depths)), f"Swin (embed {embed_dim}, depths {list(depths)})")
