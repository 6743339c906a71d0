"""Layers of Group Pose: multi-scale deformable attention (op, reference and module)."""

from .ms_deform_attn import MSDeformAttn, ms_deform_attn, ms_deform_attn_reference

__all__ = ["MSDeformAttn", "ms_deform_attn", "ms_deform_attn_reference"]
