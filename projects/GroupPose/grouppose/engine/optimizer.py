"""The paper's optimizer: AdamW with per-part learning rates and full-model gradient clipping.

Group Pose trains with AdamW (lr 1e-4, weight decay 1e-4), the backbone and the deformable
attention's sampling-offset (and reference-point) projections at 0.1 x the base lr, and the
gradient norm of the *whole model* clipped at 0.1. Detectron2 0.6 only clips per parameter
("value" / "norm"), so ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE: "full_model"`` is implemented here.
"""

from typing import Dict, List, Sequence, Tuple, Type

import torch
from detectron2.config import CfgNode
from detectron2.solver.build import maybe_add_gradient_clipping
from torch import nn

__all__ = [
    "adamw_with_full_model_clipping",
    "build_optimizer",
    "build_param_groups",
    "param_groups",
    "with_full_model_clipping",
]

FULL_MODEL = "full_model"

# Parameters of these modules get SOLVER.WEIGHT_DECAY_NORM (the list Detectron2 uses).
NORM_MODULE_TYPES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm,
)


def lr_multiplier(
    name: str, backbone_multiplier: float, linear_proj_multiplier: float,
    linear_proj_names: Sequence[str],
) -> float:
    """Learning-rate factor of the parameter called ``name`` in the model's ``named_parameters``.

    ``backbone.*`` -> ``backbone_multiplier`` (SOLVER.BACKBONE_MULTIPLIER); any parameter inside
    a module named in ``linear_proj_names`` (SOLVER.LINEAR_PROJ_NAMES, e.g.
    ``...cross_attn.sampling_offsets.weight``) -> ``linear_proj_multiplier``
    (SOLVER.LINEAR_PROJ_MULTIPLIER); everything else 1.
    """
    path = name.split(".")
    if path[0] == "backbone":
        return backbone_multiplier
    if any(part in linear_proj_names for part in path[:-1]):
        return linear_proj_multiplier
    return 1.0


def param_groups(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float,
    backbone_multiplier: float = 0.1,
    linear_proj_multiplier: float = 0.1,
    linear_proj_names: Sequence[str] = ("sampling_offsets", "reference_points"),
) -> List[Dict]:
    """Trainable parameters grouped by (lr, weight decay), in ``named_parameters`` order: lr
    ``base_lr`` x ``lr_multiplier``, ``weight_decay_norm`` for normalisation layers, else
    ``weight_decay`` (the SOLVER keys of the same names).

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
        lr = base_lr * lr_multiplier(
            name, backbone_multiplier, linear_proj_multiplier, linear_proj_names
        )
        decay = weight_decay_norm if id(param) in norm_params else weight_decay
        groups.setdefault((lr, decay), []).append(param)
    return [
        {"params": params, "lr": lr, "weight_decay": decay}
        for (lr, decay), params in groups.items()
    ]


def build_param_groups(cfg: CfgNode, model: nn.Module) -> List[Dict]:
    """``param_groups`` of the SOLVER keys."""
    solver = cfg.SOLVER
    return param_groups(
        model, solver.BASE_LR, solver.WEIGHT_DECAY, solver.WEIGHT_DECAY_NORM,
        solver.BACKBONE_MULTIPLIER, solver.LINEAR_PROJ_MULTIPLIER, solver.LINEAR_PROJ_NAMES,
    )


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


def adamw_with_full_model_clipping(
    params: List[Dict], lr: float, weight_decay: float, clip_value: float = 0.1,
    norm_type: float = 2.0,
) -> torch.optim.Optimizer:
    """The paper's optimizer: AdamW over ``params`` whose step first clips the norm of all the
    gradients together at ``clip_value`` (see ``with_full_model_clipping``)."""
    optimizer_type = with_full_model_clipping(torch.optim.AdamW, clip_value, norm_type)
    return optimizer_type(params, lr=lr, weight_decay=weight_decay)


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW over ``build_param_groups``, with SOLVER.CLIP_GRADIENTS applied.

    CLIP_TYPE "full_model" clips the norm over all parameters (as the paper does,
    ``adamw_with_full_model_clipping``); "value" and "norm" are Detectron2's per-parameter
    clipping.
    """
    clip, params = cfg.SOLVER.CLIP_GRADIENTS, build_param_groups(cfg, model)
    if clip.ENABLED and clip.CLIP_TYPE == FULL_MODEL:
        return adamw_with_full_model_clipping(
            params, cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY, clip.CLIP_VALUE, clip.NORM_TYPE
        )
    optimizer_type = maybe_add_gradient_clipping(cfg, torch.optim.AdamW)
    return optimizer_type(params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY)
