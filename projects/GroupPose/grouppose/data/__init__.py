"""Datasets, augmentation and the dataset mapper of Group Pose.

Importing this package registers, under $DETECTRON2_DATASETS (default "datasets"):
- crowdpose_{train,val,trainval,test} (CrowdPose release layout, see ``register_all_crowdpose``);
- synthetic_train / synthetic_val (generated on first use, see ``grouppose.data.synthetic``);
and makes Detectron2's built-in keypoints_coco_* datasets keep each person's "area" and carry
COCO's OKS sigmas.
"""

import os

from grouppose.data.augmentation import build_augmentation
from grouppose.data.datasets import (
    register_all_crowdpose,
    register_coco_keypoint_datasets,
    register_keypoint_dataset,
)
from grouppose.data.keypoint_json import load_keypoint_json
from grouppose.data.mapper import GroupPoseDatasetMapper
from grouppose.data.synthetic import DEFAULT_SPLITS, register_synthetic_dataset

__all__ = [
    "GroupPoseDatasetMapper",
    "build_augmentation",
    "load_keypoint_json",
    "register_keypoint_dataset",
    "register_synthetic_dataset",
]


def _register_all(root: str) -> None:
    register_coco_keypoint_datasets()
    register_all_crowdpose(root)
    for name, (folder, num_images, seed, image_size) in DEFAULT_SPLITS.items():
        register_synthetic_dataset(name, os.path.join(root, folder), num_images, seed, image_size)


_register_all(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))
