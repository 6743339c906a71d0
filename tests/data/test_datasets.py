"""Dataset registration: COCO built-ins (area kept, OKS sigmas), CrowdPose, any-K datasets."""

import json
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.data.datasets.builtin_meta import (
    COCO_PERSON_KEYPOINT_FLIP_MAP,
    KEYPOINT_CONNECTION_RULES,
)
from helpers.keypoint_test_data import (
    COCO_NAMES,
    annotation,
    keypoints,
    unique_name,
    unregister,
    write_image,
    write_json,
)

from grouppose.data import GroupPoseDatasetMapper, register_keypoint_dataset
from grouppose.data.datasets import (
    CROWDPOSE_FLIP_MAP,
    CROWDPOSE_KEYPOINT_NAMES,
    CROWDPOSE_SKELETON,
)
from grouppose.data.synthetic import generate_synthetic_crowdpose, generate_synthetic_dataset
from grouppose.modeling.oks import CROWDPOSE_OKS_SIGMAS

CROWDPOSE_NAMES = (
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    "head", "neck",
)
HAND_NAMES = ("head", "left_hand", "right_hand", "left_foot", "right_foot")


def test_crowdpose_splits_are_registered_with_crowdpose_metadata():
    sigmas = np.array([.79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89, .79, .79])
    for split in ("train", "val", "trainval", "test"):
        name = f"crowdpose_{split}"
        assert name in DatasetCatalog.list()
        metadata = MetadataCatalog.get(name)
        assert metadata.keypoint_names == CROWDPOSE_NAMES
        np.testing.assert_allclose(metadata.kpt_oks_sigmas, sigmas / 10, rtol=1e-12)
        assert dict(metadata.keypoint_flip_map) == {
            f"left_{p}": f"right_{p}" for p in ("shoulder", "elbow", "wrist", "hip", "knee",
                                                "ankle")
        }
        assert metadata.evaluator_type == "crowdpose"
        assert metadata.json_file.endswith(os.path.join("crowdpose", "json",
                                                        f"crowdpose_{split}.json"))
        assert metadata.image_root.endswith(os.path.join("crowdpose", "images"))
        assert {a for a, _, _ in metadata.keypoint_connection_rules} <= set(CROWDPOSE_NAMES)


def test_coco_builtin_metadata_gains_oks_sigmas():
    metadata = MetadataCatalog.get("keypoints_coco_2017_train")
    assert metadata.keypoint_names == COCO_NAMES
    assert metadata.keypoint_flip_map == COCO_PERSON_KEYPOINT_FLIP_MAP
    assert metadata.keypoint_connection_rules == KEYPOINT_CONNECTION_RULES
    assert len(metadata.kpt_oks_sigmas) == 17
    assert metadata.kpt_oks_sigmas[0] == pytest.approx(0.026)


def test_coco_builtin_loader_keeps_area(tmp_path, monkeypatch):
    metadata = MetadataCatalog.get("keypoints_coco_2017_val")
    if os.path.isabs(metadata.json_file):
        pytest.skip("DETECTRON2_DATASETS is absolute: not writing into a real dataset folder")
    monkeypatch.chdir(tmp_path)  # the registered paths are relative to the working directory
    write_image(tmp_path / metadata.image_root / "1.png", 40, 50)
    write_json(tmp_path / metadata.json_file,
               [{"id": 1, "file_name": "1.png", "height": 40, "width": 50}],
               [annotation(9, 1, keypoints({0: (10, 12, 2)}), [5, 5, 20, 30], area=321.5)])
    (person,) = DatasetCatalog.get("keypoints_coco_2017_val")[0]["annotations"]
    assert person["area"] == 321.5
    assert person["id"] == 9
    assert person["keypoints"][:3] == [10.5, 12.5, 2.0]  # Detectron2's +0.5


def test_crowdpose_format_loads_with_box_area(tmp_path):
    json_files = generate_synthetic_crowdpose(str(tmp_path), 8, seed=1)
    name = unique_name("crowdpose_like")
    register_keypoint_dataset(name, json_files["trainval"], str(tmp_path / "crowdpose" / "images"),
                              CROWDPOSE_KEYPOINT_NAMES, CROWDPOSE_FLIP_MAP, CROWDPOSE_OKS_SIGMAS,
                              CROWDPOSE_SKELETON, evaluator_type="crowdpose")
    try:
        records = DatasetCatalog.get(name)
    finally:
        unregister(name)
    assert len(records) == 6  # train + val: 75% of 8
    people = [a for r in records for a in r["annotations"] if not a["iscrowd"]]
    assert people
    for person in people:
        _, _, w, h = person["bbox"]
        assert person["area"] == w * h  # CrowdPose has no "area": box area
        assert len(person["keypoints"]) == 3 * 14


def test_loader_keeps_generated_area_and_ids(tmp_path):
    json_file = generate_synthetic_dataset(str(tmp_path), 6, seed=4)
    name = unique_name("synthetic_area")
    register_keypoint_dataset(name, json_file, str(tmp_path / "images"), COCO_NAMES,
                              COCO_PERSON_KEYPOINT_FLIP_MAP, [0.05] * 17,
                              [(a, b) for a, b, _ in KEYPOINT_CONNECTION_RULES])
    try:
        records = DatasetCatalog.get(name)
    finally:
        unregister(name)
    with open(json_file) as f:
        expected = {a["id"]: a["area"] for a in json.load(f)["annotations"]}
    loaded = {a["id"]: a["area"] for r in records for a in r["annotations"]}
    assert loaded == expected


def test_register_keypoint_dataset_with_five_keypoints(tmp_path):
    write_image(tmp_path / "images" / "a.png", 30, 40)
    json_file = write_json(
        tmp_path / "hands.json", [{"id": 1, "file_name": "a.png", "height": 30, "width": 40}],
        [annotation(1, 1, keypoints({0: (20, 5, 2), 1: (5, 15, 2), 2: (35, 15, 1)}, 5),
                    [2, 2, 36, 26], area=500.0)],
        HAND_NAMES,
    )
    name = unique_name("hands")
    register_keypoint_dataset(
        name, str(json_file), str(tmp_path / "images"), HAND_NAMES,
        [("left_hand", "right_hand"), ("left_foot", "right_foot")],
        [0.079, 0.062, 0.062, 0.089, 0.089],
        [("head", "left_hand"), ("head", "right_hand")],
    )
    try:
        metadata = MetadataCatalog.get(name)
        assert metadata.keypoint_names == HAND_NAMES
        assert metadata.kpt_oks_sigmas == (0.079, 0.062, 0.062, 0.089, 0.089)
        assert metadata.evaluator_type == "coco"
        flip = utils.create_keypoint_hflip_indices([name])
        assert flip == [0, 2, 1, 4, 3]
        (record,) = DatasetCatalog.get(name)
        mapper = GroupPoseDatasetMapper(True, augmentations=[T.RandomFlip(prob=1.0)],
                                        image_format="BGR", num_keypoints=5,
                                        keypoint_hflip_indices=flip)
        points = mapper(record)["instances"].gt_keypoints.tensor[0]
    finally:
        unregister(name)
    # Left hand (5.5, 15.5) mirrored to x = 40 - 5.5 is now the right hand, and vice versa.
    assert torch.equal(points[:3], torch.tensor([[19.5, 5.5, 2], [4.5, 15.5, 1],
                                                 [34.5, 15.5, 2]]))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"flip_map": [("left_hand", "left_elbow")]}, "flip_map"),
        ({"skeleton": [("head", "tail")]}, "skeleton"),
        ({"oks_sigmas": [0.1] * 4}, "oks_sigmas"),
        ({"oks_sigmas": [0.1, 0.1, -0.1, 0.1, 0.1]}, "sigmas"),
        ({"keypoint_names": ["head"] * 5}, "keypoint_names"),
        ({"evaluator_type": "lvis"}, "evaluator_type"),
    ],
)
def test_register_keypoint_dataset_rejects_inconsistent_arguments(change, message):
    arguments = {
        "keypoint_names": HAND_NAMES, "flip_map": [("left_hand", "right_hand")],
        "oks_sigmas": [0.1] * 5, "skeleton": [("head", "left_hand")],
    }
    arguments.update(change)
    name = unique_name("rejected")
    with pytest.raises(ValueError, match=message):
        register_keypoint_dataset(name, "x.json", "images", **arguments)
    assert name not in DatasetCatalog.list()
