"""The multi-scale deformable attention op of Deformable DETR (``ms_deform_attn``) and its
pure-PyTorch reference; the module around it is ``grouppose.layers.MSDeformAttn``.

Shapes used throughout:
    B batch, S = sum_l H_l * W_l flattened positions of all levels, M heads, D channels per head,
    Lq queries, L levels, P sampling points per head and level.

``ms_deform_attn`` runs ``torch.ops.grouppose.ms_deform_attn``, the C++/CUDA op compiled into
``grouppose._C`` (see ``csrc/``); importing this module loads it and registers the op's fake
kernel and autograd formula. Without the extension (or without a kernel for the inputs' device)
it falls back to ``ms_deform_attn_reference`` and warns once, naming the reason. Inside
``reference_op()`` it computes with the reference on purpose, as the official implementation
does (the benchmarks' and the mode checks' reference mode).

Dtypes: value is float32, float64, float16 or bfloat16, and the output has its dtype.
sampling_locations and attention_weights have value's dtype, or float32 when value is float16 /
bfloat16: sampling positions need float32 precision, which autocast provides (its softmax and
the location arithmetic stay in float32); ``ms_deform_attn`` casts those of a half value's
dtype to float32 itself. The kernels read half-precision values as they are (no float32 copy)
and compute in float32.
"""

import contextlib
import warnings
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "kernel_unavailable_reason",
    "ms_deform_attn",
    "ms_deform_attn_reference",
    "reference_op",
    "reference_op_enabled",
]

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
_reference_forced = False  # inside reference_op()


def reference_op_enabled() -> bool:
    """Whether ``ms_deform_attn`` computes with ``ms_deform_attn_reference`` (inside
    ``reference_op``)."""
    return _reference_forced


@contextlib.contextmanager
def reference_op() -> Iterator[None]:
    """``ms_deform_attn`` computes with its pure-PyTorch reference inside the ``with`` block,
    for A/B comparisons with the official implementation's arithmetic:

        with torch.no_grad(), grouppose.layers.reference_op():
            outputs = model(inputs)
    """
    global _reference_forced
    previous, _reference_forced = _reference_forced, True
    try:
        yield
    finally:
        _reference_forced = previous


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


def kernel_unavailable_reason(device: torch.device) -> Optional[str]:
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
    """Multi-scale deformable attention core: the compiled op, or ``ms_deform_attn_reference``
    inside ``reference_op()`` and where the op has no kernel.

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
    use_reference = _reference_forced
    if not use_reference:
        reason = kernel_unavailable_reason(value.device)
        if reason is not None:
            _warn_fallback_once(reason)
            use_reference = True
    if use_reference:
        return ms_deform_attn_reference(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    return torch.ops.grouppose.ms_deform_attn(
        value.contiguous(),
        spatial_shapes.contiguous(),
        level_start_index.contiguous(),
        sampling_locations.contiguous(),
        attention_weights.contiguous(),
    )


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
