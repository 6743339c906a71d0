"""The switch of the CPU inference fast paths, for A/B comparisons and debugging.

Where no gradient is recorded, inference takes faster routes to the same numbers (within float
rounding): oneDNN linear layers with bias, ReLU and residual fused (``grouppose.layers.linear``),
FFN blocks by rows (``grouppose.modeling.blocks.FeedForward``), FrozenBN folded into the
convolutions (``grouppose.modeling.backbone.frozen_batch_norm.FrozenBNConv2d``) and a
channels-last backbone input (``grouppose.modeling.meta_arch``). ``plain_inference()`` turns them
off, so that inference computes as training does (PyTorch's own inference kernels aside, such as
``nn.MultiheadAttention``'s):

    with torch.no_grad(), grouppose.layers.plain_inference():
        outputs = model(inputs)
"""

import contextlib
from typing import Iterator

import torch

__all__ = ["fast_paths_active", "fast_paths_enabled", "plain_inference"]

_enabled = True


def fast_paths_enabled() -> bool:
    """Whether the inference fast paths may run (outside ``plain_inference``)."""
    return _enabled


def fast_paths_active() -> bool:
    """Whether a fast path runs now: no gradient is recorded and ``plain_inference`` is off.
    Each fast path adds its own conditions (device, tracing) to this one."""
    return _enabled and not torch.is_grad_enabled()


@contextlib.contextmanager
def plain_inference() -> Iterator[None]:
    """Inference on the paths that training takes, inside the ``with`` block."""
    global _enabled
    previous, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = previous
