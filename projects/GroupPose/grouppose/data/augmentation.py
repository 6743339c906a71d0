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
from typing import List, Optional, Sequence

from detectron2.config import CfgNode
from detectron2.data import transforms as T

__all__ = ["build_augmentation", "test_augmentation", "train_augmentation"]


def build_augmentation(cfg: CfgNode, is_train: bool) -> List[T.Augmentation]:
    """Augmentations for ``GroupPoseDatasetMapper`` from cfg.INPUT (see the module docstring):
    ``train_augmentation`` or ``test_augmentation`` of its keys."""
    if not is_train:
        return test_augmentation(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    return train_augmentation(
        min_sizes=cfg.INPUT.MIN_SIZE_TRAIN, max_size=cfg.INPUT.MAX_SIZE_TRAIN,
        sampling=cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING, flip=cfg.INPUT.RANDOM_FLIP,
        crop_size=cfg.INPUT.CROP.SIZE if cfg.INPUT.CROP.ENABLED else None,
        crop_type=cfg.INPUT.CROP.TYPE, crop_resize_sizes=cfg.INPUT.CROP_RESIZE_SIZES,
        crop_prob=cfg.INPUT.CROP_PROB,
    )


def test_augmentation(min_size: int, max_size: int) -> List[T.Augmentation]:
    """Resize the short side to ``min_size``, the long side at most ``max_size``."""
    return [T.ResizeShortestEdge(min_size, max_size, "choice")]


def train_augmentation(
    min_sizes: Sequence[int],
    max_size: int,
    sampling: str = "choice",
    flip: str = "horizontal",
    crop_size: Optional[Sequence[int]] = None,
    crop_type: str = "absolute_range",
    crop_resize_sizes: Sequence[int] = (400, 500, 600),
    crop_prob: float = 0.5,
) -> List[T.Augmentation]:
    """The paper's training augmentation (see the module docstring); the arguments are the
    INPUT keys of the same names, ``crop_size`` None for INPUT.CROP.ENABLED False.

    Raises:
        ValueError if ``flip`` (INPUT.RANDOM_FLIP) is not "horizontal" or "none" (a vertical
        flip has no keypoint flip map).
    """
    augmentations: List[T.Augmentation] = []
    if flip == "horizontal":
        augmentations.append(T.RandomFlip(prob=0.5, horizontal=True, vertical=False))
    elif flip != "none":
        raise ValueError(
            f"INPUT.RANDOM_FLIP must be 'horizontal' or 'none' for keypoints, got {flip!r}"
        )
    if crop_size is not None:
        crop_branch = T.AugmentationList([
            T.ResizeShortestEdge(tuple(crop_resize_sizes), sys.maxsize, "choice"),
            T.RandomCrop(crop_type, tuple(crop_size)),
        ])
        augmentations.append(T.RandomApply(crop_branch, prob=crop_prob))
    augmentations.append(T.ResizeShortestEdge(tuple(min_sizes), max_size, sampling))
    return augmentations
