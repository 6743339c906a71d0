"""The paper's optimizer: AdamW with per-part learning rates and full-model gradient clipping.

Group Pose trains with AdamW (lr 1e-4, weight decay 1e-4), the backbone and the deformable
attention's sampling-offset (and reference-point) projections at 0.1 x the base lr, and the
gradient norm of the *whole model* clipped at 0.1. Detectron2 0.6 only clips per parameter
("value" / "norm"), so ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE: "full_model"`` is implemented here.
"""

from typing import Dict, List, Tuple, Type

import torch
from detectron2.config import CfgNode
from detectron2.solver.build import maybe_add_gradient_clipping
from torch import nn

__all__ = ["build_optimizer", "build_param_groups", "with_full_model_clipping"]

FULL_MODEL = "full_model"

# Parameters of these modules get SOLVER.WEIGHT_DECAY_NORM (the list Detectron2 uses).
NORM_MODULE_TYPES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm,
)


def lr_multiplier(name: str, cfg: CfgNode) -> float:
    """Learning-rate factor of the parameter called ``name`` in the model's ``named_parameters``.

    ``backbone.*`` -> SOLVER.BACKBONE_MULTIPLIER; any parameter inside a module named in
    SOLVER.LINEAR_PROJ_NAMES (e.g. ``...cross_attn.sampling_offsets.weight``) ->
    SOLVER.LINEAR_PROJ_MULTIPLIER; everything else 1.
    """
    path = name.split(".")
    if path[0] == "backbone":
        return cfg.SOLVER.BACKBONE_MULTIPLIER
    if any(part in cfg.SOLVER.LINEAR_PROJ_NAMES for part in path[:-1]):
        return cfg.SOLVER.LINEAR_PROJ_MULTIPLIER
    return 1.0


def build_param_groups(cfg: CfgNode, model: nn.Module) -> List[Dict]:
    """Trainable parameters grouped by (lr, weight decay), in ``named_parameters`` order.

    Returns:
        optimizer param groups ``{"params", "lr", "weight_decay"}``; a parameter shared by two
        modules appears once.
    """
    norm_params = {
        id(p) for m in model.modules() if isinstance(m, NORM_MODULE_TYPES)
        for p in m.parameters(recurse=False)
    }
    groups: Dict[Tuple[float, float], List[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr = cfg.SOLVER.BASE_LR * lr_multiplier(name, cfg)
        is_norm = id(param) in norm_params
        weight_decay = cfg.SOLVER.WEIGHT_DECAY_NORM if is_norm else cfg.SOLVER.WEIGHT_DECAY
        groups.setdefault((lr, weight_decay), []).append(param)
    return [
        {"params": params, "lr": lr, "weight_decay": weight_decay}
        for (lr, weight_decay), params in groups.items()
    ]


def with_full_model_clipping(
    optimizer_type: Type[torch.optim.Optimizer], max_norm: float, norm_type: float = 2.0
) -> Type[torch.optim.Optimizer]:
    """A subclass of ``optimizer_type`` whose ``step`` first clips the gradient norm of all its
    parameters together (``torch.nn.utils.clip_grad_norm_``) at ``max_norm``.

    Clipping inside ``step`` also works under AMP: ``GradScaler.step`` unscales the gradients
    before it calls ``optimizer.step``.
    """
    if max_norm <= 0:
        raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE must be > 0, got {max_norm}")

    class FullModelClipping(optimizer_type):
        def step(self, closure=None):
            params = [p for group in self.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
            return super().step(closure)

    FullModelClipping.__name__ = f"{optimizer_type.__name__}WithFullModelClipping"
    FullModelClipping.__qualname__ = FullModelClipping.__name__
    return FullModelClipping


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW over ``build_param_groups``, with SOLVER.CLIP_GRADIENTS applied.

    CLIP_TYPE "full_model" clips the norm over all parameters (as the paper does); "value" and
    "norm" are Detectron2's per-parameter clipping.
    """
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == FULL_MODEL:
        optimizer_type = with_full_model_clipping(torch.optim.AdamW, clip.CLIP_VALUE,
                                                  clip.NORM_TYPE)
    else:
        optimizer_type = maybe_add_gradient_clipping(cfg, torch.optim.AdamW)
    return optimizer_type(
        build_param_groups(cfg, model), lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
    )
