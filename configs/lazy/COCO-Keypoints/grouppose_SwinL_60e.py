"""Group Pose, Swin-L, COCO: the R50 60-epoch recipe with a Swin-L backbone (paper: 74.8 AP);
the LazyConfig of configs/COCO-Keypoints/grouppose_SwinL_60e.yaml (see it for the weights)."""

from ..common.swin import SWIN_L, swin_backbone
from .grouppose_R50_60e import dataloader, lr_multiplier, model, optimizer, train

model.backbone = swin_backbone(**SWIN_L)
model.input_proj.in_channels = [384, 768, 1536]
train.init_checkpoint = "pretrained/swin_large_patch4_window12_384_22k_d2.pth"
train.output_dir = "output/grouppose_SwinL_60e_coco"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
