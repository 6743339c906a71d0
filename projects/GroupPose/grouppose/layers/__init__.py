"""Layers of Group Pose: multi-scale deformable attention (op, reference and module) and the
linear layer with a fused CPU inference path; the CPU allocator setting inference uses."""

from .cpu_memory import reuse_freed_memory
from .fast_paths import fast_paths_enabled, plain_inference
from .linear import Linear
from .ms_deform_attn import MSDeformAttn, ms_deform_attn, ms_deform_attn_reference

__all__ = [
    "Linear",
    "MSDeformAttn",
    "fast_paths_enabled",
    "ms_deform_attn",
    "ms_deform_attn_reference",
    "plain_inference",
    "reuse_freed_memory",
]
