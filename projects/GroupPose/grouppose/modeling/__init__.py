"""The Group Pose model: the Detectron2 meta-architecture ``GroupPose`` and its parts.

Importing this package registers ``GroupPose`` (META_ARCH_REGISTRY) and the Swin backbones
(BACKBONE_REGISTRY). Its modules, in the order of the network (docs/architecture.md maps them
to the paper): ``backbone/`` (Swin, frozen BN, input projection), ``encoder``,
``query_selection``, ``decoder`` (its ablation switches in ``variants``), ``postprocess``; for
training ``matcher``, ``criterion`` and ``oks``; the human detection decoder variant
(``detection_decoder``, ``detection_criterion``); and what several of them share (``blocks``,
``levels``, ``position_encoding``). ``meta_arch`` puts them together.
"""

from grouppose.modeling.meta_arch import GroupPose

__all__ = ["GroupPose"]
