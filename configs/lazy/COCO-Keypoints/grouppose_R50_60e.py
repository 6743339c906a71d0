"""Group Pose, ResNet-50, COCO train2017 -> val2017, the paper's 60-epoch recipe (paper:
72.0 AP); the LazyConfig of configs/COCO-Keypoints/grouppose_R50_60e.yaml (see it for the
schedule arithmetic)."""

from ..common.data import dataloader
from ..common.model import model
from ..common.optim import optimizer
from ..common.train import step_schedule, train

train.update(
    init_checkpoint="detectron2://ImageNetPretrained/torchvision/R-50.pkl",
    max_iter=212247,  # 60 epochs of 3537.44 iterations
    output_dir="output/grouppose_R50_60e_coco",
)
train.checkpointer.period = 3538  # ~1 epoch
train.eval_period = 35375  # ~10 epochs (and after the last iteration)
lr_multiplier = step_schedule([176872], train.max_iter)  # lr x 0.1 after epoch 50

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
