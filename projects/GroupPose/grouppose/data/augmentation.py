"""Group Pose's (ED-Pose's) training augmentation, built from Detectron2 augmentations.

Training, as in the paper:
    1. horizontal flip with probability 0.5 (keypoints swapped by the flip map in the mapper);
    2. with probability INPUT.CROP_PROB (0.5) the DETR crop branch: resize the short side to one
       of INPUT.CROP_RESIZE_SIZES (400/500/600, no long-side limit), then crop a random
       (h, w) with h, w in INPUT.CROP.SIZE (384..600, "absolute_range");
    3. resize the short side to one of INPUT.MIN_SIZE_TRAIN (480..800 step 32), long side
       <= INPUT.MAX_SIZE_TRAIN (1333).
ED-Pose picks between "3" and "crop branch then 3"; applying the branch with probability 0.5 and
then 3 is the same distribution.

Test: short side INPUT.MIN_SIZE_TEST (800), long side <= INPUT.MAX_SIZE_TEST (1333).
"""

import sys
from typing import List

from detectron2.config import CfgNode
from detectron2.data import transforms as T

__all__ = ["build_augmentation"]


def build_augmentation(cfg: CfgNode, is_train: bool) -> List[T.Augmentation]:
    """Augmentations for ``GroupPoseDatasetMapper`` from cfg.INPUT (see the module docstring).

    Raises:
        ValueError if INPUT.RANDOM_FLIP is not "horizontal" or "none" (a vertical flip has no
        keypoint flip map).
    """
    if not is_train:
        return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]
    augmentations: List[T.Augmentation] = []
    if cfg.INPUT.RANDOM_FLIP == "horizontal":
        augmentations.append(T.RandomFlip(prob=0.5, horizontal=True, vertical=False))
    elif cfg.INPUT.RANDOM_FLIP != "none":
        raise ValueError(
            f"INPUT.RANDOM_FLIP must be 'horizontal' or 'none' for keypoints, got "
            f"{cfg.INPUT.RANDOM_FLIP!r}"
        )
    if cfg.INPUT.CROP.ENABLED:
        crop_branch = T.AugmentationList([
            T.ResizeShortestEdge(cfg.INPUT.CROP_RESIZE_SIZES, sys.maxsize, "choice"),
            T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE),
        ])
        augmentations.append(T.RandomApply(crop_branch, prob=cfg.INPUT.CROP_PROB))
    augmentations.append(
        T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )
    )
    return augmentations
