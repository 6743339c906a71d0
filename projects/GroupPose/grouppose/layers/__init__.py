"""Layers of Group Pose: multi-scale deformable attention (the op ``ms_deform_attn``, its
pure-PyTorch reference, the module ``MSDeformAttn``) and the linear layer with a fused CPU
inference path; the CPU allocator setting inference uses.

Two switches for A/B comparisons and debugging, each a ``with`` block: ``plain_inference()``
turns the fused inference paths off, ``reference_op()`` runs the deformable attention's
pure-PyTorch reference instead of the compiled op.
"""

from .cpu_memory import reuse_freed_memory
from .deformable_attention import MSDeformAttn
from .fast_paths import fast_paths_enabled, plain_inference
from .linear import Linear
from .ms_deform_attn_op import (
    ms_deform_attn,
    ms_deform_attn_reference,
    reference_op,
    reference_op_enabled,
)

__all__ = [
    "Linear",
    "MSDeformAttn",
    "fast_paths_enabled",
    "ms_deform_attn",
    "ms_deform_attn_reference",
    "plain_inference",
    "reference_op",
    "reference_op_enabled",
    "reuse_freed_memory",
]
