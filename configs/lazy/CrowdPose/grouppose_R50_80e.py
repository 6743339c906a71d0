"""Group Pose, ResNet-50, CrowdPose trainval -> test, the paper's 80-epoch CrowdPose recipe;
the LazyConfig of configs/CrowdPose/grouppose_R50_80e.yaml (see it for the schedule)."""

from ..common.data import dataloader
from ..common.model import model
from ..common.optim import optimizer
from ..common.train import step_schedule, train

model.query_selection.num_keypoints = 14  # every other part and the mapper refer to it
# Registered by grouppose.data from datasets/crowdpose/{json,images} (DETECTRON2_DATASETS).
dataloader.train.dataset.names = ["crowdpose_trainval"]
dataloader.test.dataset.names = "crowdpose_test"
train.update(
    init_checkpoint="detectron2://ImageNetPretrained/torchvision/R-50.pkl",
    max_iter=60000,  # 80 epochs of 750 iterations
    output_dir="output/grouppose_R50_80e_crowdpose",
)
train.checkpointer.period = 3750  # 5 epochs
train.eval_period = 7500  # 10 epochs (and after the last iteration)
lr_multiplier = step_schedule([52500], train.max_iter)  # lr x 0.1 after epoch 70

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
