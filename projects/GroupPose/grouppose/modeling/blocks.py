"""Small building blocks shared by the encoder, the query selection and the decoders."""

import math
from typing import Any, Callable, Dict

import torch
from detectron2.config import CfgNode
from torch import Tensor, nn

from grouppose.layers import MSDeformAttn
from grouppose.layers.linear import Linear, runs_onednn
from grouppose.modeling.levels import FlattenedLevels

# The official refinement clamps probabilities to [eps, 1 - eps] before taking the logit, so a
# keypoint that reached an image border can still move back inside.
INVERSE_SIGMOID_EPS = 1e-3
# Prior probability of "person" that class heads start at (focal-loss practice).
PERSON_PRIOR_PROB = 0.01


def attention_layer_args(cfg: CfgNode) -> Dict[str, Any]:
    """The constructor arguments every stack of attention layers (encoder, decoder, detection
    decoder) takes from ``cfg.MODEL.GROUP_POSE``: ``dim``, ``num_heads``, ``ffn_dim``,
    ``dropout``, ``num_levels``."""
    gp = cfg.MODEL.GROUP_POSE
    return {
        "dim": gp.HIDDEN_DIM, "num_heads": gp.NHEADS, "ffn_dim": gp.DIM_FEEDFORWARD,
        "dropout": gp.DROPOUT, "num_levels": gp.NUM_FEATURE_LEVELS,
    }


def person_prior_logit(prior_prob: float = PERSON_PRIOR_PROB) -> float:
    """Bias that makes a class head initially predict ``prior_prob``."""
    return -math.log((1 - prior_prob) / prior_prob)


def init_transformer_layers(layers: nn.Module) -> None:
    """Deformable DETR's initialisation of a stack of attention layers: Xavier-uniform for every
    weight matrix, in parameter order, then every MSDeformAttn's own initialisation (which
    replaces the Xavier weights of its offset and attention-weight projections)."""
    for p in layers.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)
    for module in layers.modules():
        if isinstance(module, MSDeformAttn):
            module.reset_parameters()


def inverse_sigmoid(x: Tensor, eps: float = INVERSE_SIGMOID_EPS) -> Tensor:
    """Logit of ``x`` clamped to [0, 1], with both x and 1 - x clamped to >= eps (any shape)."""
    x = x.clamp(min=0, max=1)
    return (x.clamp(min=eps) / (1 - x).clamp(min=eps)).log()


def in_float32(head: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``head(x)``, computed in float32 also under autocast.

    For the prediction heads: they turn features into keypoint offsets and scores, where
    bfloat16's 8 mantissa bits would move keypoints by about a pixel and reorder near-equal
    scores; they are small, so float32 costs next to nothing.
    """
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return head(x)
    with torch.autocast(device, enabled=False):
        return head(x.float())


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (none after the last).

    Parameters are named ``layers.{i}`` (weight/bias), as in DETR-family checkpoints.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MLP: num_layers must be >= 1, got {num_layers}")
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(Linear(d_in, d_out) for d_in, d_out in zip(dims, dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        """(..., input_dim) -> (..., output_dim)."""
        for layer in self.layers[:-1]:
            x = layer.forward_relu(x)
        return self.layers[-1](x)


class FeedForward(nn.Module):
    """Post-norm transformer FFN block: ``norm(x + linear2(relu(linear1(x))))``."""

    # Rows per block of the CPU inference path: the block's hidden activations (1024 x 2048
    # float32, 8 MiB) stay in the cache between the two GEMMs, where the encoder's whole hidden
    # tensor (tens of thousands of rows) goes to memory and back: 15-20% faster at 800x1333.
    INFERENCE_BLOCK_ROWS = 1024

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0):
        super().__init__()
        self.linear1 = Linear(dim, hidden_dim)
        self.linear2 = Linear(hidden_dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        """(..., dim) -> (..., dim)."""
        if not self.training and runs_onednn(x):
            return self._forward_by_blocks(x)
        update = self.dropout(self.linear2(self.dropout(self.linear1.forward_relu(x))))
        # In place: no autograd formula needs the update itself, and at the encoder's sizes a
        # new tensor costs as much as the add.
        return self.norm(update.add_(x))

    def _forward_by_blocks(self, x: Tensor) -> Tensor:
        """Inference, INFERENCE_BLOCK_ROWS rows at a time (bias, ReLU and residual fused)."""
        blocks = x.reshape(-1, x.shape[-1]).split(self.INFERENCE_BLOCK_ROWS)
        outputs = [
            self.norm(self.linear2.forward_add(self.linear1.forward_relu(block), block))
            for block in blocks
        ]
        return torch.cat(outputs).view(x.shape)


class DeformableDecoderLayer(nn.Module):
    """Base of the post-norm decoder layers (Group Pose's and the human detection decoder's):
    after their own self-attention, deformable cross-attention into the encoder memory, add &
    LayerNorm, then the FFN block."""

    def add_cross_attention_and_ffn(
        self, *, dim: int, num_heads: int, ffn_dim: int, dropout: float, num_levels: int,
        num_points: int,
    ) -> None:
        """Create ``cross_attn``, ``cross_attn_norm``, ``ffn`` and ``dropout``, in that order (the
        order of their parameters in checkpoints and of their seeded initialisation). Called
        by the subclass's ``__init__`` after its self-attention modules."""
        self.cross_attn = MSDeformAttn(
            dim=dim, num_heads=num_heads, num_levels=num_levels, num_points=num_points
        )
        self.cross_attn_norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.dropout = nn.Dropout(dropout)

    def cross_attention_and_ffn(
        self, query: Tensor, residual: Tensor, reference_points: Tensor, memory: Tensor,
        levels: FlattenedLevels,
    ) -> Tensor:
        """``ffn(cross_attn_norm(residual + dropout(cross_attn(query, ...))))``.

        Args:
            query: (B, Lq, C) queries, with their positions where the layer adds them;
            residual: (B, Lq, C) what the attention's update is added to;
            reference_points: (B, Lq, L, 2) points or (B, Lq, L, 4) boxes in the padded frame;
            memory: (B, S, C) encoder output; levels: its geometry and padding mask.

        Returns:
            (B, Lq, C).
        """
        update = self.cross_attn(
            query, reference_points, memory, levels.spatial_shapes, levels.level_start_index,
            levels.value_mask,
        )
        return self.ffn(self.cross_attn_norm(residual + self.dropout(update)))
