"""A small Group Pose that learns from scratch on a CPU, on the generated dataset: the LazyConfig
of configs/Synthetic/grouppose_tiny.yaml (see it for the reason of each difference from the
paper's model)."""

from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import ResNet

from ..common.data import dataloader
from ..common.model import model
from ..common.optim import optimizer
from ..common.train import step_schedule, train

# ResNet-18, randomly initialised, every stage trained with batch statistics (naiveSyncBN).
model.backbone.module.stem.norm = "naiveSyncBN"
model.backbone.module.stages = L(ResNet.make_default_stages)(depth=18, norm="naiveSyncBN")
model.backbone.module.freeze_at = 0
model.input_proj.in_channels = [128, 256, 512]
model.input_proj.dim = 128
model.encoder.update(num_layers=2, num_heads=4, ffn_dim=512)
model.decoder.num_layers = 3
model.query_selection.num_instances = 20
model.test_topk = 20
model.criterion.update(cls_weight=8.0, cost_class=8.0)

dataloader.train.dataset.names = ["synthetic_train"]
dataloader.train.mapper.augmentations.update(
    min_sizes=[144, 160, 176], max_size=240, crop_size=None
)
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = 0
dataloader.test.dataset.names = "synthetic_val"
dataloader.test.mapper.augmentations.update(min_size=160, max_size=240)
dataloader.test.num_workers = 0

optimizer.lr = 3.0e-4
optimizer.params.backbone_multiplier = 1.0  # the backbone starts from random

train.update(
    init_checkpoint="", max_iter=2900, device="cpu", seed=0, eval_period=725,
    output_dir="output/grouppose_tiny",
)
train.checkpointer.period = 725
lr_multiplier = step_schedule([2500], train.max_iter)

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
