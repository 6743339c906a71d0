"""Group Pose, Swin-L, CrowdPose: the paper's CrowdPose model (74.1 AP), the R50 80-epoch
CrowdPose recipe with a Swin-L backbone; the LazyConfig of
configs/CrowdPose/grouppose_SwinL_80e.yaml."""

from ..common.swin import SWIN_L, swin_backbone
from .grouppose_R50_80e import dataloader, lr_multiplier, model, optimizer, train

model.backbone = swin_backbone(**SWIN_L)
model.input_proj.in_channels = [384, 768, 1536]
train.init_checkpoint = "pretrained/swin_large_patch4_window12_384_22k_d2.pth"
train.output_dir = "output/grouppose_SwinL_80e_crowdpose"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
