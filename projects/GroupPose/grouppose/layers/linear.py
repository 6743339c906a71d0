"""Linear layers whose CPU inference runs oneDNN's linear, with the bias and ReLU fused.

On the CPU, ``F.linear`` copies the bias into its output and then runs MKL's sgemm over it, and a
following ReLU is one more pass over the result; at the encoder's sizes (tens of thousands of
rows, 2048 FFN channels) those passes cost a quarter of the GEMM. oneDNN's linear (the kernel that
PyTorch's own CPU compiler emits) adds the bias and applies the ReLU while it writes the output,
and its sgemm is also faster on this kind of CPU. It has no autograd formula, so it is used only
where no gradient is recorded (inference), on float32 and (where the CPU has bf16 instructions)
bfloat16 CPU tensors, outside tracing
and compilation (which see the standard op); everything else runs ``F.linear``.
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grouppose.layers.fast_paths import fast_paths_active
from grouppose.layers.parameter_cache import ParameterCache

__all__ = ["Linear", "linear", "runs_onednn"]

_ONEDNN_LINEAR = (
    getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if torch.backends.mkldnn.is_available() else None
)


def _onednn_dtypes() -> Tuple[torch.dtype, ...]:
    """The dtypes oneDNN's linear takes on this CPU: bfloat16 needs bf16 instructions (AVX512
    or newer; oneDNN refuses to create the primitive on an AVX2 CPU, or under
    ONEDNN_MAX_CPU_ISA=AVX2), where bf16 then runs ``F.linear``."""
    bf16 = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return (torch.float32, torch.bfloat16) if bf16 is not None and bf16() else (torch.float32,)


_ONEDNN_DTYPES = _onednn_dtypes() if _ONEDNN_LINEAR is not None else ()


def runs_onednn(x: Tensor) -> bool:
    """Whether ``linear`` runs oneDNN on ``x``: CPU inference, outside tracing and compilation
    (which must see standard ops whose shapes they can generalise)."""
    return (
        _ONEDNN_LINEAR is not None
        and fast_paths_active()
        and x.device.type == "cpu"
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
    )


def linear(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    relu: bool = False,
    residual: Optional[Tensor] = None,
) -> Tensor:
    """``F.linear`` (then ReLU when ``relu``, or ``+ residual``): (..., in) -> (..., out).

    Under CPU autocast the inputs are cast to the autocast dtype first, as ``F.linear`` would be
    (the output then has that dtype, with or without a residual).
    """
    if relu and residual is not None:
        raise ValueError("linear: relu and residual cannot be fused together")
    if runs_onednn(x):
        if torch.is_autocast_enabled("cpu"):
            dtype = torch.get_autocast_dtype("cpu")
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        if x.dtype in _ONEDNN_DTYPES and weight.dtype == x.dtype:
            if residual is not None:
                return _ONEDNN_LINEAR.binary(x, residual.to(x.dtype), weight, bias, "add")
            return _ONEDNN_LINEAR(x, weight, bias, "relu" if relu else "none", [], "")
    output = F.linear(x, weight, bias)
    if residual is not None:
        return output + residual
    return output.relu() if relu else output


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same checkpoints) computed by ``linear``.

    Under CPU autocast its oneDNN path keeps the cast weight and bias between calls: autocast
    itself casts them again at every call, and at the encoder's sizes a FFN is called once per
    row block (see FeedForward).
    """

    _cast_parameters: Optional[ParameterCache] = None

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, *self._parameters_for(x))

    def forward_relu(self, x: Tensor) -> Tensor:
        """``relu(self(x))`` in one pass where oneDNN runs it."""
        return linear(x, *self._parameters_for(x), relu=True)

    def forward_add(self, x: Tensor, residual: Tensor) -> Tensor:
        """``self(x) + residual`` in one pass where oneDNN runs it."""
        return linear(x, *self._parameters_for(x), residual=residual)

    def _parameters_for(self, x: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """(weight, bias), cast to the CPU autocast dtype where oneDNN runs ``x`` under it."""
        if not (runs_onednn(x) and torch.is_autocast_enabled("cpu")):
            return self.weight, self.bias
        dtype = torch.get_autocast_dtype("cpu")
        if self._cast_parameters is None:
            self._cast_parameters = ParameterCache()
        return self._cast_parameters.get(
            (self.weight, self.bias),
            lambda: (self.weight.to(dtype), None if self.bias is None else self.bias.to(dtype)),
            variant=dtype,
        )
