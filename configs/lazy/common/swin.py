"""Swin backbones of the Group Pose LazyConfigs (configs/COCO-Keypoints/grouppose_Swin*.yaml)."""

from typing import Sequence

from detectron2.config import LazyCall as L

from grouppose.modeling.backbone.swin import SwinTransformer

# ImageNet-22k Swin-L, 384 px (window 12): outputs res3..res5 with 384, 768, 1536 channels.
SWIN_L = {"embed_dim": 192, "depths": [2, 2, 18, 2], "num_heads": [6, 12, 24, 48],
          "window_size": 12}


def swin_backbone(embed_dim: int, depths: Sequence[int], num_heads: Sequence[int],
                  window_size: int):
    """A Swin returning res3..res5, entirely trained (FREEZE_AT 0, at the backbone's lr)."""
    return L(SwinTransformer)(
        embed_dim=embed_dim, depths=list(depths), num_heads=list(num_heads),
        window_size=window_size, mlp_ratio=4.0, drop_path_rate=0.2,
        out_features=["res3", "res4", "res5"], freeze_at=0, use_checkpoint=False,
    )
