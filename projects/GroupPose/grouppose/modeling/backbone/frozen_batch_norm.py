"""Frozen BatchNorm computed the way the official (DETR-family) backbones compute it, and folded
into the preceding convolution at inference."""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import Tensor, nn

from grouppose.layers.fast_paths import fast_paths_active
from grouppose.layers.parameter_cache import ParameterCache


class AffineFrozenBatchNorm2d(FrozenBatchNorm2d):
    """Detectron2's FrozenBatchNorm2d (same buffers, same checkpoints) that always computes
    ``x * scale + shift`` with ``scale = weight / sqrt(running_var + eps)``.

    Detectron2 switches to ``F.batch_norm`` where no gradient is needed (frozen stages). That is
    the same function rounded differently; the official backbone never switches, and in a deep
    frozen-BN ResNet such last-bit differences in the frozen stem can change the gradients of
    the first trained stage by more than 1e-3 (relative), so we match the official arithmetic.
    """

    def scale_and_shift(self) -> Tuple[Tensor, Tensor]:
        """(C,) ``scale`` and ``shift`` of ``x * scale + shift``."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: Tensor) -> Tensor:
        scale, shift = self.scale_and_shift()
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)


class FrozenBNConv2d(Conv2d):
    """Detectron2's ``Conv2d`` whose ``norm`` is an AffineFrozenBatchNorm2d (same attributes,
    parameters and checkpoints), run as one convolution with the norm folded into its weight and
    bias where no gradient is recorded.

    At inference the norm's pass over every backbone activation (a multiply and an add) then
    disappears. With gradients it computes the convolution and then the norm, as the official
    backbone does (see AffineFrozenBatchNorm2d). The folded weights are cached until a parameter
    or buffer changes (loading weights, moving the model).
    """

    _folded: Optional[ParameterCache] = None  # the folded (weight, bias)

    def _folded_weight_and_bias(self, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
        """Folded (weight, bias) in ``dtype`` (cast once, where autocast would cast per call)."""
        if self._folded is None:
            self._folded = ParameterCache()

        def fold() -> Tuple[Tensor, Tensor]:
            scale, shift = self.norm.scale_and_shift()
            weight = self.weight * scale.view(-1, 1, 1, 1)
            bias = shift if self.bias is None else self.bias * scale + shift
            return weight.to(dtype), bias.to(dtype)

        sources = (self.weight, self.bias, *self.norm.buffers(), *self.norm.parameters())
        return self._folded.get(sources, fold, variant=dtype)

    def forward(self, x: Tensor) -> Tensor:
        if not fast_paths_active():
            return super().forward(x)
        device = x.device.type
        dtype = (
            torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device)
            else self.weight.dtype
        )
        weight, bias = self._folded_weight_and_bias(dtype)
        x = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        return x if self.activation is None else self.activation(x)


def use_affine_frozen_batch_norm(module: nn.Module) -> nn.Module:
    """Replace, in place, every FrozenBatchNorm2d inside ``module`` by an
    AffineFrozenBatchNorm2d with the same buffers, and make every Detectron2 ``Conv2d`` it
    normalises a FrozenBNConv2d; returns ``module``."""
    for name, child in module.named_children():
        if isinstance(child, FrozenBatchNorm2d) and not isinstance(child, AffineFrozenBatchNorm2d):
            affine = AffineFrozenBatchNorm2d(child.num_features, eps=child.eps)
            affine.load_state_dict(child.state_dict())
            setattr(module, name, affine.to(child.weight.device))
        else:
            use_affine_frozen_batch_norm(child)
    if type(module) is Conv2d and isinstance(module.norm, AffineFrozenBatchNorm2d):
        # Only the class changes: the module keeps its attributes, parameters and state.
        module.__class__ = FrozenBNConv2d
    return module
