"""GroupPoseDatasetMapper and the training augmentation: flip, crop, resize, crowd filtering,
area scaling, determinism."""

import numpy as np
import pytest
import torch
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BoxMode
from helpers.keypoint_test_data import COCO_NAMES, K, keypoints, write_image
from helpers.tiny_grouppose import BASE_CONFIG

from grouppose.config import get_grouppose_cfg
from grouppose.data import GroupPoseDatasetMapper, build_augmentation, load_keypoint_json
from grouppose.data.synthetic import generate_synthetic_dataset

HEIGHT, WIDTH = 48, 64
NOSE, LEFT_WRIST, RIGHT_WRIST = (COCO_NAMES.index(n) for n in ("nose", "left_wrist",
                                                                 "right_wrist"))


def _cfg():
    cfg = get_grouppose_cfg(str(BASE_CONFIG))  # the paper's augmentation
    cfg.DATASETS.TRAIN = ("synthetic_val",)  # registered by grouppose: COCO keypoint metadata
    return cfg


@pytest.fixture(scope="module")
def hflip_indices():
    return utils.create_keypoint_hflip_indices(["synthetic_val"])


@pytest.fixture
def image_dict(tmp_path):
    """A 48 x 64 image: person 1 (area 600), person 2 at the left edge only, a crowd region.
    Coordinates are Detectron2's (already continuous)."""
    file_name = write_image(tmp_path / "image.png", HEIGHT, WIDTH)
    person = {"id": 1, "iscrowd": 0, "category_id": 0, "area": 600.0,
              "bbox": [5, 4, 40, 30], "bbox_mode": BoxMode.XYWH_ABS,
              "keypoints": keypoints({NOSE: (32.0, 5.0, 2), LEFT_WRIST: (10.5, 20.5, 2),
                                      RIGHT_WRIST: (40.5, 30.5, 1)})}
    left_edge = {"id": 2, "iscrowd": 0, "category_id": 0, "area": 50.0,
                 "bbox": [0, 30, 10, 10], "bbox_mode": BoxMode.XYWH_ABS,
                 "keypoints": keypoints({NOSE: (4.0, 32.0, 2), LEFT_WRIST: (8.0, 38.0, 2)})}
    crowd = {"id": 3, "iscrowd": 1, "category_id": 0, "bbox": [40, 0, 24, 20],
             "bbox_mode": BoxMode.XYWH_ABS,
             "keypoints": keypoints({NOSE: (50.0, 10.0, 2)})}
    return {"file_name": str(file_name), "image_id": 7, "height": HEIGHT, "width": WIDTH,
            "annotations": [person, left_edge, crowd]}


def _mapper(augmentations, hflip_indices=None):
    return GroupPoseDatasetMapper(
        True, augmentations=augmentations, image_format="RGB", num_keypoints=K,
        keypoint_hflip_indices=hflip_indices,
    )


def test_flip_mirrors_x_and_swaps_left_right(image_dict, hflip_indices):
    plain = _mapper([])(image_dict)
    flipped = _mapper([T.RandomFlip(prob=1.0)], hflip_indices)(image_dict)
    assert torch.equal(flipped["image"], plain["image"].flip(-1))
    points = flipped["instances"].gt_keypoints.tensor[0]
    # x -> W - x; the left wrist's mirror image is the right wrist and vice versa.
    assert points[NOSE].tolist() == [WIDTH - 32.0, 5.0, 2.0]
    assert points[RIGHT_WRIST].tolist() == [WIDTH - 10.5, 20.5, 2.0]
    assert points[LEFT_WRIST].tolist() == [WIDTH - 40.5, 30.5, 1.0]
    assert points[COCO_NAMES.index("left_ankle")].tolist() == [0.0, 0.0, 0.0]
    assert flipped["instances"].gt_boxes.tensor[0].tolist() == [WIDTH - 45.0, 4.0, WIDTH - 5.0,
                                                               34.0]
    assert flipped["instances"].gt_area.tolist() == [600.0, 50.0]


def test_crop_makes_outside_keypoints_unlabeled_and_drops_emptied_people(image_dict):
    out = _mapper([T.CropTransform(16, 8, 32, 32)])(image_dict)
    instances = out["instances"]
    assert tuple(out["image"].shape) == (3, 32, 32)
    # Person 2 (x < 16) has nothing left inside the crop: dropped. Crowd never a target.
    assert len(instances) == 1
    points = instances.gt_keypoints.tensor[0]
    assert points[NOSE].tolist() == [0.0, 0.0, 0.0]  # (16, -3): above the crop
    assert points[LEFT_WRIST].tolist() == [0.0, 0.0, 0.0]  # (-5.5, 12.5): left of it
    assert points[RIGHT_WRIST].tolist() == [24.5, 22.5, 1.0]
    assert instances.gt_area.tolist() == [600.0]  # a crop does not scale areas


def test_resize_scales_keypoints_and_area(image_dict):
    out = _mapper([T.ResizeTransform(HEIGHT, WIDTH, 96, 160)])(image_dict)
    instances = out["instances"]
    assert tuple(out["image"].shape) == (3, 96, 160)
    assert instances.gt_keypoints.tensor[0, LEFT_WRIST].tolist() == [10.5 * 2.5, 20.5 * 2, 2.0]
    assert instances.gt_area.tolist() == [600.0 * 5, 50.0 * 5]
    assert instances.gt_classes.tolist() == [0, 0]


def test_crowd_is_never_a_target(image_dict):
    image_dict["annotations"] = [a for a in image_dict["annotations"] if a["iscrowd"]]
    instances = _mapper([])(image_dict)["instances"]
    assert len(instances) == 0
    assert tuple(instances.gt_keypoints.tensor.shape) == (0, K, 3)
    assert tuple(instances.gt_area.shape) == (0,)


def test_inference_mapper_keeps_no_annotations(image_dict):
    out = GroupPoseDatasetMapper(_cfg(), is_train=False)(image_dict)
    assert "instances" not in out and "annotations" not in out
    assert tuple(out["image"].shape) == (3, 800, 1067)  # short side 800, long side <= 1333
    assert (out["height"], out["width"]) == (HEIGHT, WIDTH)


def test_paper_augmentation_from_config():
    train = build_augmentation(_cfg(), is_train=True)
    flip, crop_branch, resize = train
    assert isinstance(flip, T.RandomFlip) and flip.prob == 0.5 and flip.horizontal
    assert isinstance(crop_branch, T.RandomApply) and crop_branch.prob == 0.5
    pre_resize, crop = crop_branch.aug.augs
    assert tuple(pre_resize.short_edge_length) == (400, 500, 600)
    assert (crop.crop_type, tuple(crop.crop_size)) == ("absolute_range", (384, 600))
    assert tuple(resize.short_edge_length) == tuple(range(480, 801, 32))
    assert resize.max_size == 1333 and resize.is_range is False

    cfg = _cfg()
    cfg.INPUT.RANDOM_FLIP = "vertical"
    with pytest.raises(ValueError, match="RANDOM_FLIP"):
        build_augmentation(cfg, is_train=True)


@pytest.fixture(scope="module")
def synthetic_dicts(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_mapper")
    generate_synthetic_dataset(str(root), 4, seed=11)
    records = load_keypoint_json(str(root / "annotations.json"), str(root / "images"),
                                 "synthetic_val", K)
    return [r for r in records if any(not a["iscrowd"] for a in r["annotations"])]


def test_training_mapper_same_seed_same_output(synthetic_dicts):
    cfg = _cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = (160, 192, 224)
    cfg.INPUT.MAX_SIZE_TRAIN = 300
    cfg.INPUT.CROP_RESIZE_SIZES = (200, 250)
    cfg.INPUT.CROP.SIZE = [120, 180]
    mapper = GroupPoseDatasetMapper(cfg, is_train=True)

    def run(seed):
        np.random.seed(seed)
        return [mapper(d) for d in synthetic_dicts for _ in range(3)]

    first, again, other = run(0), run(0), run(1)
    for a, b in zip(first, again):
        assert torch.equal(a["image"], b["image"])
        assert torch.equal(a["instances"].gt_keypoints.tensor, b["instances"].gt_keypoints.tensor)
        assert torch.equal(a["instances"].gt_area, b["instances"].gt_area)
    assert any(a["image"].shape != b["image"].shape or not torch.equal(a["image"], b["image"])
               for a, b in zip(first, other))
    for out in first:
        height, width = out["image"].shape[1:]
        assert min(height, width) in (160, 192, 224) or max(height, width) == 300
        points = out["instances"].gt_keypoints.tensor
        labeled = points[..., 2] > 0
        assert labeled.any(dim=1).all()  # every target has a labeled keypoint
        assert (points[labeled][:, 0] <= width).all() and (points[labeled][:, 1] <= height).all()
        assert (points[labeled][:, :2] >= 0).all()
        assert (out["instances"].gt_area > 0).all()
