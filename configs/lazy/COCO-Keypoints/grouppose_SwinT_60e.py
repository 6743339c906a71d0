"""Group Pose, Swin-T, COCO: the R50 60-epoch recipe with a Swin-T backbone (paper: 73.6 AP);
the LazyConfig of configs/COCO-Keypoints/grouppose_SwinT_60e.yaml (see it for the weights)."""

from ..common.swin import swin_backbone
from .grouppose_R50_60e import dataloader, lr_multiplier, model, optimizer, train

model.backbone = swin_backbone(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
                               window_size=7)
model.input_proj.in_channels = [192, 384, 768]
train.init_checkpoint = "pretrained/swin_tiny_patch4_window7_224_d2.pth"
train.output_dir = "output/grouppose_SwinT_60e_coco"

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
