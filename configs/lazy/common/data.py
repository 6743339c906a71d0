"""Group Pose's data: COCO train2017 -> val2017 with the paper's (ED-Pose's) augmentation, as
configs/Base-GroupPose.yaml and configs/COCO-Keypoints/grouppose_R50_60e.yaml set it (see
grouppose.data.augmentation)."""

from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
from detectron2.data.detection_utils import create_keypoint_hflip_indices
from omegaconf import OmegaConf

from grouppose.data.augmentation import test_augmentation, train_augmentation
from grouppose.data.mapper import GroupPoseDatasetMapper
from grouppose.engine.trainer import training_batches, training_images
from grouppose.evaluation.build import keypoint_evaluator

dataloader = OmegaConf.create()

# Batches follow a seeded, resumable stream (grouppose.engine.data_stream).
dataloader.train = L(training_batches)(
    # Images with a non-crowd person with >= 1 labeled keypoint.
    dataset=L(training_images)(
        names=["keypoints_coco_2017_train"], filter_empty=True, min_keypoints=1,
        total_batch_size="${..total_batch_size}",
    ),
    mapper=L(GroupPoseDatasetMapper)(
        is_train=True,
        augmentations=L(train_augmentation)(
            min_sizes=[480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800], max_size=1333,
            sampling="choice", flip="horizontal", crop_size=[384, 600],
            crop_type="absolute_range", crop_resize_sizes=[400, 500, 600], crop_prob=0.5,
        ),
        image_format="RGB",
        num_keypoints="${model.query_selection.num_keypoints}",
        keypoint_hflip_indices=L(create_keypoint_hflip_indices)(
            dataset_names="${...dataset.names}"
        ),
    ),
    total_batch_size=16,  # images per optimizer step (see train.ims_per_device)
    num_workers=4,
    seed="${train.seed}",
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="keypoints_coco_2017_val", filter_empty=False),
    mapper=L(GroupPoseDatasetMapper)(
        is_train=False,
        augmentations=L(test_augmentation)(min_size=800, max_size=1333),
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=4,
)

dataloader.evaluator = L(keypoint_evaluator)(
    dataset_name="${..test.dataset.names}", output_dir="${train.output_dir}/inference",
)
