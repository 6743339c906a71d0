"""Multi-scale deformable attention (Deformable DETR): the op, its pure-PyTorch reference and
the ``MSDeformAttn`` module.

Shapes used throughout:
    B batch, S = sum_l H_l * W_l flattened positions of all levels, M heads, D channels per head,
    Lq queries, L levels, P sampling points per head and level.

``ms_deform_attn`` runs ``torch.ops.grouppose.ms_deform_attn``, the C++/CUDA op compiled into
``grouppose._C`` (see ``csrc/``); importing this module loads it and registers the op's fake
kernel and autograd formula. Without the extension (or without a kernel for the inputs' device)
it falls back to ``ms_deform_attn_reference`` and warns once, naming the reason.

Dtypes: value is float32, float64, float16 or bfloat16, and the output has its dtype.
sampling_locations and attention_weights have value's dtype, or float32 when value is float16 /
bfloat16: sampling positions need float32 precision, which autocast provides (its softmax and
the location arithmetic stay in float32); ``ms_deform_attn`` casts those of a half value's
dtype to float32 itself. The kernels read half-precision values as they are (no float32 copy)
and compute in float32.
"""

import math
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .linear import Linear

__all__ = ["MSDeformAttn", "ms_deform_attn", "ms_deform_attn_reference"]

_OP_NAME = "grouppose::ms_deform_attn"
_BACKWARD_OP_NAME = "grouppose::ms_deform_attn_backward"
_HALF_DTYPES = (torch.float16, torch.bfloat16)
_VALUE_DTYPES = (torch.float32, torch.float64) + _HALF_DTYPES


def _load_extension() -> Optional[str]:
    """Import ``grouppose._C``, which registers the ops; return why it failed, or None."""
    try:
        from grouppose import _C  # noqa: F401
    except (ImportError, OSError) as e:
        return (
            f"grouppose._C could not be imported ({type(e).__name__}: {e}); build it with "
            "`python setup.py build_ext --inplace`"
        )
    return None


_EXTENSION_ERROR = _load_extension()
_warned_reasons = set()


def _kernel_device_types() -> frozenset:
    """Device types the op has kernels for ("meta" = its fake kernel). Looked up once, after
    registration, since the lookup cannot be traced by torch.compile."""
    if _EXTENSION_ERROR is not None:
        return frozenset()
    return frozenset(
        device_type
        for device_type, dispatch_key in (("cpu", "CPU"), ("cuda", "CUDA"), ("meta", "Meta"))
        if torch._C._dispatch_has_kernel_for_dispatch_key(_OP_NAME, dispatch_key)
    )


def _kernel_unavailable_reason(device: torch.device) -> Optional[str]:
    """Why the compiled op cannot run on ``device``, or None when it can."""
    if _EXTENSION_ERROR is not None:
        return _EXTENSION_ERROR
    if device.type in _KERNEL_DEVICE_TYPES:
        return None
    if device.type == "cuda":
        return "grouppose._C was built without CUDA kernels; rebuild it with FORCE_CUDA=1"
    return f"grouppose._C has no kernel for device type '{device.type}'"


def _warn_fallback_once(reason: str) -> None:
    if reason not in _warned_reasons:
        _warned_reasons.add(reason)
        warnings.warn(
            f"ms_deform_attn falls back to the slower pure-PyTorch reference: {reason}",
            stacklevel=3,
        )


def _is_traced(tensor: Tensor) -> bool:
    """Whether ``tensor`` holds no real data (torch.compile / torch.export / meta tensors)."""
    return (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or tensor.device.type == "meta"
        or isinstance(tensor, torch._subclasses.FakeTensor)
    )


def _check_inputs(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> None:
    """Raise a ValueError naming the argument and the expected shape for any bad input."""
    named = {
        "value": value,
        "spatial_shapes": spatial_shapes,
        "level_start_index": level_start_index,
        "sampling_locations": sampling_locations,
        "attention_weights": attention_weights,
    }
    for name, tensor in named.items():
        if not isinstance(tensor, Tensor):
            raise ValueError(f"ms_deform_attn: {name} must be a Tensor, got {type(tensor)}")
        if tensor.device != value.device:
            raise ValueError(
                f"ms_deform_attn: {name} is on {tensor.device} but value is on {value.device}"
            )
    if value.dim() != 4:
        raise ValueError(
            f"ms_deform_attn: value must have shape (B, S, M, D), got {tuple(value.shape)}"
        )
    B, S, M, D = value.shape
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
        raise ValueError(
            f"ms_deform_attn: spatial_shapes must have shape (L, 2), "
            f"got {tuple(spatial_shapes.shape)}"
        )
    L = spatial_shapes.shape[0]
    if tuple(level_start_index.shape) != (L,):
        raise ValueError(
            f"ms_deform_attn: level_start_index must have shape (L,) = ({L},), "
            f"got {tuple(level_start_index.shape)}"
        )
    if (
        sampling_locations.dim() != 6
        or tuple(sampling_locations.shape[:1]) != (B,)
        or tuple(sampling_locations.shape[2:4]) != (M, L)
        or sampling_locations.shape[5] != 2
    ):
        raise ValueError(
            f"ms_deform_attn: sampling_locations must have shape (B, Lq, M, L, P, 2) = "
            f"({B}, Lq, {M}, {L}, P, 2), got {tuple(sampling_locations.shape)}"
        )
    Lq, P = sampling_locations.shape[1], sampling_locations.shape[4]
    if tuple(attention_weights.shape) != (B, Lq, M, L, P):
        raise ValueError(
            f"ms_deform_attn: attention_weights must have shape (B, Lq, M, L, P) = "
            f"{(B, Lq, M, L, P)}, got {tuple(attention_weights.shape)}"
        )
    if value.dtype not in _VALUE_DTYPES:
        raise ValueError(
            f"ms_deform_attn: value must be float32, float64, float16 or bfloat16, "
            f"got {value.dtype}"
        )
    half_value = value.dtype in _HALF_DTYPES
    for name in ("sampling_locations", "attention_weights"):
        dtype = named[name].dtype
        if dtype != value.dtype and not (half_value and dtype == torch.float32):
            raise ValueError(
                f"ms_deform_attn: {name} must have value's dtype {value.dtype}"
                f"{' or float32' if half_value else ''}, got {dtype}"
            )
    for name in ("spatial_shapes", "level_start_index"):
        if named[name].dtype != torch.int64:
            raise ValueError(f"ms_deform_attn: {name} must be int64, got {named[name].dtype}")
    if _is_traced(spatial_shapes):
        return
    if spatial_shapes.device.type == "cpu":
        _check_levels(spatial_shapes, level_start_index, S)
    else:
        _assert_levels_on_device(spatial_shapes, level_start_index, S)


def _check_levels(spatial_shapes: Tensor, level_start_index: Tensor, S: int) -> None:
    """Data-dependent checks: positive sizes whose areas sum to S and start where they should."""
    shapes = spatial_shapes.tolist()
    areas = [height * width for height, width in shapes]
    if any(size <= 0 for shape in shapes for size in shape) or sum(areas) != S:
        raise ValueError(
            f"ms_deform_attn: spatial_shapes must hold positive (H, W) whose areas sum to "
            f"value.shape[1] = {S}, got {shapes} (areas sum to {sum(areas)})"
        )
    expected_starts = [sum(areas[:level]) for level in range(len(areas))]
    if level_start_index.tolist() != expected_starts:
        raise ValueError(
            f"ms_deform_attn: level_start_index must be {expected_starts} for spatial_shapes "
            f"{shapes}, got {level_start_index.tolist()}"
        )


def _assert_levels_on_device(spatial_shapes: Tensor, level_start_index: Tensor, S: int) -> None:
    """The checks of ``_check_levels`` as a device-side assertion: reading the tensors on the
    host would synchronise the accelerator at every call (the encoder and each decoder layer);
    a failure surfaces at the next synchronisation, before any wrong result can be read."""
    areas = spatial_shapes.prod(dim=1)
    valid = (
        (spatial_shapes > 0).all()
        & (areas.sum() == S)
        & (level_start_index == torch.cumsum(areas, dim=0) - areas).all()
    )
    torch._assert_async(
        valid,
        f"ms_deform_attn: spatial_shapes must hold positive (H, W) whose areas sum to "
        f"value.shape[1] = {S}, and level_start_index must be their running sum",
    )


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Multi-scale deformable attention core.

    Args:
        value: (B, S, M, D) values of all levels, flattened level by level, row-major.
        spatial_shapes: (L, 2) int64 (H, W) of each level.
        level_start_index: (L,) int64 offset of each level in S.
        sampling_locations: (B, Lq, M, L, P, 2) (x, y) normalised to [0, 1]; pixel centers at
            (i + 0.5) / size (``grid_sample(align_corners=False)``); zero outside the map.
        attention_weights: (B, Lq, M, L, P).

    value may be float32, float64, float16 or bfloat16; sampling_locations and
    attention_weights have its dtype, or float32 when it is float16 / bfloat16 (autocast's mix).
    Locations and weights of a half value's dtype are cast to float32 (exactly), since sampling
    positions need its precision; value itself is read as it is, and every sum is computed in
    float32.

    Returns:
        (B, Lq, M * D) of value's dtype: per query and head, the attention-weighted sum of the
        bilinearly sampled values.
    """
    if isinstance(value, Tensor) and value.dtype in _HALF_DTYPES:
        sampling_locations, attention_weights = (
            tensor.float() if isinstance(tensor, Tensor) and tensor.dtype == value.dtype
            else tensor
            for tensor in (sampling_locations, attention_weights)
        )
    _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    reason = _kernel_unavailable_reason(value.device)
    if reason is not None:
        _warn_fallback_once(reason)
        output = ms_deform_attn_reference(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    else:
        output = torch.ops.grouppose.ms_deform_attn(
            value.contiguous(),
            spatial_shapes.contiguous(),
            level_start_index.contiguous(),
            sampling_locations.contiguous(),
            attention_weights.contiguous(),
        )
    return output


def ms_deform_attn_reference(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Pure-PyTorch ``ms_deform_attn`` (same arguments and result), built on ``grid_sample``.
    A half-precision value is computed in float32, like the compiled kernels do."""
    output_dtype = value.dtype
    if output_dtype in _HALF_DTYPES:
        value, sampling_locations, attention_weights = (
            value.float(), sampling_locations.float(), attention_weights.float()
        )
    B, _, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    # grid_sample samples (batch, channels, H, W) maps at [-1, 1] grids: fold heads into batch.
    grids = (2 * sampling_locations - 1).transpose(1, 2).flatten(0, 1)  # (B*M, Lq, L, P, 2)
    sampled = []
    for level, ((height, width), start) in enumerate(
        zip(spatial_shapes.tolist(), level_start_index.tolist())
    ):
        level_value = value[:, start : start + height * width]  # (B, H*W, M, D)
        level_value = level_value.permute(0, 2, 3, 1).reshape(B * M, D, height, width)
        sampled.append(
            F.grid_sample(
                level_value,
                grids[:, :, level],
                mode="bilinear",
                padding_mode="zeros",
                align_corners=False,
            )
        )  # (B*M, D, Lq, P)
    sampled = torch.stack(sampled, dim=-2).flatten(-2)  # (B*M, D, Lq, L*P)
    weights = attention_weights.transpose(1, 2).reshape(B * M, 1, Lq, L * P)
    output = (sampled * weights).sum(-1)  # (B*M, D, Lq)
    return output.view(B, M * D, Lq).transpose(1, 2).contiguous().to(output_dtype)


def _register_op_python_parts() -> None:
    """Fake kernels (torch.compile / torch.export) and autograd for the compiled ops."""

    @torch.library.register_fake(_OP_NAME)
    def _ms_deform_attn_fake(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    ):
        B, _, M, D = value.shape
        return value.new_empty((B, sampling_locations.shape[1], M * D))

    @torch.library.register_fake(_BACKWARD_OP_NAME)
    def _ms_deform_attn_backward_fake(
        grad_output, value, spatial_shapes, level_start_index, sampling_locations,
        attention_weights,
    ):
        return (
            torch.empty_like(value),
            torch.empty_like(sampling_locations),
            torch.empty_like(attention_weights),
        )

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward(ctx, grad_output):
        grad_value, grad_sampling_locations, grad_attention_weights = (
            torch.ops.grouppose.ms_deform_attn_backward(
                grad_output.contiguous(), *ctx.saved_tensors
            )
        )
        return grad_value, None, None, grad_sampling_locations, grad_attention_weights

    torch.library.register_autograd(_OP_NAME, backward, setup_context=setup_context)


if _EXTENSION_ERROR is None:
    _register_op_python_parts()
_KERNEL_DEVICE_TYPES = _kernel_device_types()


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Deformable DETR) with its projections.

    Each query predicts, per head, level and point, a sampling offset and an attention weight
    (softmaxed over levels x points) from its own feature; the value is a projection of the
    flattened multi-level input.
    """

    def __init__(
        self, *, dim: int = 256, num_heads: int = 8, num_levels: int = 4, num_points: int = 4
    ):
        """
        Args:
            dim: channels of the queries, the values and the output (C).
            num_heads: attention heads (M); each attends to dim / num_heads channels, so it
                must divide dim (for a Group Pose model the config check says so, in terms of
                its keys, before any layer is built).
            num_levels: feature levels sampled (L).
            num_points: sampling points per head and level (P).
        """
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.sampling_offsets = Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = Linear(dim, dim)
        self.output_proj = Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR initialisation: point k of head h starts k + 1 cells away from the
        reference in direction 2*pi*h / num_heads (on a square ring), with uniform attention."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (2 * math.pi / self.num_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)  # (M, 2)
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values
        distances = torch.arange(1, self.num_points + 1, dtype=torch.float32)
        offsets = directions[:, None, None, :] * distances[None, None, :, None]  # (M, 1, P, 2)
        offsets = offsets.expand(-1, self.num_levels, -1, -1)  # (M, L, P, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(offsets.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for projection in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(projection.weight)
            nn.init.zeros_(projection.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        input_spatial_shapes: Tensor,
        input_level_start_index: Tensor,
        input_padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Args:
            query: (B, Lq, C) query features.
            reference_points: (B, Lq, L, 2) points (x, y) in [0, 1], offsets are in cells of
                each level; or (B, Lq, L, 4) boxes (cx, cy, w, h), offsets are in units of
                half the box size / num_points.
            input_flatten: (B, S, C) features of all levels, flattened level by level.
            input_spatial_shapes: (L, 2) int64 (H, W) of each level.
            input_level_start_index: (L,) int64 offset of each level in S.
            input_padding_mask: (B, S) bool, True on padding (its value is zeroed), or None.

        Returns:
            (B, Lq, C).
        """
        B, Lq, _ = query.shape
        S = input_flatten.shape[1]
        M, L, P = self.num_heads, self.num_levels, self.num_points
        if reference_points.dim() != 4 or tuple(reference_points.shape[:3]) != (B, Lq, L) or (
            reference_points.shape[3] not in (2, 4)
        ):
            raise ValueError(
                f"MSDeformAttn: reference_points must have shape (B, Lq, L, 2 or 4) = "
                f"({B}, {Lq}, {L}, 2 or 4), got {tuple(reference_points.shape)}"
            )
        if input_padding_mask is not None and tuple(input_padding_mask.shape) != (B, S):
            raise ValueError(
                f"MSDeformAttn: input_padding_mask must have shape (B, S) = ({B}, {S}), "
                f"got {tuple(input_padding_mask.shape)}"
            )

        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(B, S, M, self.dim // M)

        offsets = self.sampling_offsets(query).view(B, Lq, M, L, P, 2)
        weights = self.attention_weights(query).view(B, Lq, M, L * P).softmax(dim=-1)
        weights = weights.view(B, Lq, M, L, P)

        if reference_points.shape[-1] == 2:
            # reference + offset / (W, H) of its level, computed over rows of L * P * 2 values
            # (references and level sizes repeated per point): broadcasting pairs instead is
            # 5x slower on the CPU. Level sizes in float32: under bfloat16 autocast they would
            # round above 256.
            level_sizes_xy = input_spatial_shapes.flip(-1).to(torch.float32)  # (L, 2) = (W, H)
            locations = torch.addcdiv(
                reference_points.repeat(1, 1, 1, P).view(B, Lq, 1, L * P * 2),
                offsets.view(B, Lq, M, L * P * 2),
                level_sizes_xy.repeat(1, P).view(L * P * 2),
            ).view(B, Lq, M, L, P, 2)
        else:
            references = reference_points[:, :, None, :, None, :]  # (B, Lq, 1, L, 1, 4)
            locations = references[..., :2] + offsets / P * references[..., 2:] * 0.5
        output = ms_deform_attn(
            value, input_spatial_shapes, input_level_start_index, locations, weights
        )
        return self.output_proj(output)
