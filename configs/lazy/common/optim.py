"""The paper's optimizer (configs/Base-GroupPose.yaml's SOLVER): AdamW, lr 1e-4, weight decay
1e-4 on every parameter, the backbone and the sampling-offset / reference-point projections at
0.1 x lr, the gradient norm of the whole model clipped at 0.1. ``params.model`` is set by the
trainer (grouppose.engine.lazy)."""

from detectron2.config import LazyCall as L

from grouppose.engine.optimizer import adamw_with_full_model_clipping, param_groups

optimizer = L(adamw_with_full_model_clipping)(
    params=L(param_groups)(
        base_lr="${..lr}", weight_decay="${..weight_decay}", weight_decay_norm="${..weight_decay}",
        backbone_multiplier=0.1, linear_proj_multiplier=0.1,
        linear_proj_names=["sampling_offsets", "reference_points"],
    ),
    lr=1e-4,
    weight_decay=1e-4,
    clip_value=0.1,
    norm_type=2.0,
)
