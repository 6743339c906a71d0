"""Frozen BatchNorm computed the way the official (DETR-family) backbones compute it."""

from detectron2.layers import FrozenBatchNorm2d
from torch import Tensor, nn


class AffineFrozenBatchNorm2d(FrozenBatchNorm2d):
    """Detectron2's FrozenBatchNorm2d (same buffers, same checkpoints) that always computes
    ``x * scale + shift`` with ``scale = weight / sqrt(running_var + eps)``.

    Detectron2 switches to ``F.batch_norm`` where no gradient is needed (frozen stages). That is
    the same function rounded differently; the official backbone never switches, and in a deep
    frozen-BN ResNet such last-bit differences in the frozen stem can change the gradients of
    the first trained stage by more than 1e-3 (relative), so we match the official arithmetic.
    """

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)


def use_affine_frozen_batch_norm(module: nn.Module) -> nn.Module:
    """Replace, in place, every FrozenBatchNorm2d inside ``module`` by an
    AffineFrozenBatchNorm2d with the same buffers; returns ``module``."""
    for name, child in module.named_children():
        if isinstance(child, FrozenBatchNorm2d) and not isinstance(child, AffineFrozenBatchNorm2d):
            affine = AffineFrozenBatchNorm2d(child.num_features, eps=child.eps)
            affine.load_state_dict(child.state_dict())
            setattr(module, name, affine.to(child.weight.device))
        else:
            use_affine_frozen_batch_norm(child)
    return module
