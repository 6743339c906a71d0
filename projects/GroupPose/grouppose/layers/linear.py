"""Linear layers whose CPU inference runs oneDNN's linear, with the bias and ReLU fused.

On the CPU, ``F.linear`` copies the bias into its output and then runs MKL's sgemm over it, and a
following ReLU is one more pass over the result; at the encoder's sizes (tens of thousands of
rows, 2048 FFN channels) those passes cost a quarter of the GEMM. oneDNN's linear (the kernel that
PyTorch's own CPU compiler emits) adds the bias and applies the ReLU while it writes the output,
and its sgemm is also faster on this kind of CPU. It has no autograd formula, so it is used only
where no gradient is recorded (inference), on float32 and bfloat16 CPU tensors, outside tracing
and compilation (which see the standard op); everything else runs ``F.linear``.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Linear", "linear"]

_ONEDNN_LINEAR = (
    getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if torch.backends.mkldnn.is_available() else None
)
_ONEDNN_DTYPES = (torch.float32, torch.bfloat16)


def _runs_onednn(x: Tensor) -> bool:
    return (
        _ONEDNN_LINEAR is not None
        and x.device.type == "cpu"
        and not torch.is_grad_enabled()
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
    )


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, relu: bool = False) -> Tensor:
    """``F.linear`` (then ReLU when ``relu``): (..., in) -> (..., out).

    Under CPU autocast the inputs are cast to the autocast dtype first, as ``F.linear`` would be.
    """
    if _runs_onednn(x):
        if torch.is_autocast_enabled("cpu"):
            dtype = torch.get_autocast_dtype("cpu")
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        if x.dtype in _ONEDNN_DTYPES and weight.dtype == x.dtype:
            return _ONEDNN_LINEAR(x, weight, bias, "relu" if relu else "none", [], "")
    output = F.linear(x, weight, bias)
    return output.relu() if relu else output


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same checkpoints) computed by ``linear``."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)

    def forward_relu(self, x: Tensor) -> Tensor:
        """``relu(self(x))`` in one pass where oneDNN runs it."""
        return linear(x, self.weight, self.bias, relu=True)
