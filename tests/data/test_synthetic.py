"""The generated multi-person keypoint dataset: determinism, annotation correctness, the scene
features it promises, left/right cues that survive flips, the CLI and lazy generation."""

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from helpers.keypoint_test_data import COCO_NAMES, unique_name, unregister

from grouppose.data.synthetic import (
    ensure_synthetic_dataset,
    generate_synthetic_dataset,
    register_synthetic_dataset,
)
from grouppose.data.synthetic_figures import POINT_NAMES, _annotate
from tools import make_synthetic_dataset

NUM_IMAGES = 40
INDEX = {name: i for i, name in enumerate(COCO_NAMES)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    json_file = generate_synthetic_dataset(str(root), NUM_IMAGES, seed=0)
    return root, json.loads(Path(json_file).read_text())


def _people(data):
    return [a for a in data["annotations"] if not a["iscrowd"]]


def test_same_seed_same_dataset_other_seed_other_dataset(tmp_path):
    def make(folder, seed):
        json_file = generate_synthetic_dataset(str(tmp_path / folder), 3, seed=seed)
        images = sorted((tmp_path / folder / "images").iterdir())
        return Path(json_file).read_text(), [p.read_bytes() for p in images]

    first, again, other = make("a", 7), make("b", 7), make("c", 8)
    assert first == again
    assert first[0] != other[0] and first[1] != other[1]


def test_annotations_are_consistent_coco_keypoints(dataset):
    root, data = dataset
    sizes = {image["id"]: (image["width"], image["height"]) for image in data["images"]}
    assert len(sizes) == NUM_IMAGES
    assert all(256 <= s <= 384 for size in sizes.values() for s in size)
    assert all((root / "images" / image["file_name"]).is_file() for image in data["images"])
    assert data["categories"][0]["keypoints"] == list(COCO_NAMES)
    for person in _people(data):
        width, height = sizes[person["image_id"]]
        points = np.asarray(person["keypoints"]).reshape(17, 3)
        assert set(points[:, 2]) <= {0, 1, 2}
        assert (points[points[:, 2] == 0] == 0).all()  # unlabeled = (0, 0, 0)
        labeled = points[points[:, 2] > 0]
        assert (labeled[:, 0] < width).all() and (labeled[:, 1] < height).all()
        assert (labeled[:, :2] >= 0).all()
        assert person["num_keypoints"] == len(labeled)
        x, y, w, h = person["bbox"]
        assert x >= 0 and y >= 0 and x + w <= width and y + h <= height
        assert 0 < person["area"] <= w * h


def test_scenes_have_crowds_empty_images_occlusion_and_both_facings(dataset):
    _, data = dataset
    people = _people(data)
    per_image = {image["id"]: 0 for image in data["images"]}
    for person in people:
        per_image[person["image_id"]] += 1
    assert 0 in per_image.values() and max(per_image.values()) >= 5
    assert any(a["iscrowd"] for a in data["annotations"])
    visibility = np.concatenate([np.asarray(p["keypoints"])[2::3] for p in people])
    assert (visibility == 1).sum() > 0.02 * visibility.size  # occluded keypoints
    heights = [p["bbox"][3] for p in people if p["num_keypoints"] >= 12]
    assert min(heights) < 100 and max(heights) > 200  # varied scale


def test_left_right_follow_the_facing_so_flips_stay_consistent(dataset):
    """Facing the camera (face labeled): the left side is on the image's right; facing away
    (nose and eyes unlabeled, ears labeled): on its left. A horizontal flip with the label swap
    maps each case to itself, so flipped images are ones the generator could draw."""
    _, data = dataset
    facing = {"camera": 0, "away": 0}
    for person in _people(data):
        points = np.asarray(person["keypoints"]).reshape(17, 3)
        labeled = points[:, 2] > 0
        shoulders = [INDEX["left_shoulder"], INDEX["right_shoulder"]]
        if not labeled[shoulders].all():
            continue
        left_minus_right = points[shoulders[0], 0] - points[shoulders[1], 0]
        if labeled[INDEX["nose"]]:
            facing["camera"] += 1
            assert left_minus_right > 0
        elif labeled[[INDEX["left_ear"], INDEX["right_ear"]]].all():
            facing["away"] += 1
            assert left_minus_right < 0
    assert facing["camera"] > 20 and facing["away"] > 5


def test_visibility_from_the_owner_map():
    """Covered by a later figure or an occluder: v = 1; on top: v = 2; outside: v = 0."""
    owner = np.zeros((10, 10), np.uint8)
    owner[0:5, :] = 2  # figure 2 (later) covers the top half
    owner[5:8, 0:5] = 1  # figure 1 shows at the lower left
    owner[9, 9] = 255  # an occluder
    points = {name: np.array([2, 6]) for name in POINT_NAMES}  # on figure 1
    points["left_wrist"] = np.array([2, 2])  # under figure 2
    points["right_wrist"] = np.array([9, 9])  # under the occluder
    points["left_ankle"] = np.array([12, 3])  # outside the image
    points["right_ankle"] = np.array([8, 9])  # background: nothing in front
    person = _annotate(points, owner, 1, facing_camera=True)
    visibility = dict(zip(POINT_NAMES, person.visibility.tolist()))
    assert visibility["left_wrist"] == 1 and visibility["right_wrist"] == 1
    assert visibility["left_ankle"] == 0 and visibility["right_ankle"] == 2
    assert visibility["nose"] == 2
    assert person.points[POINT_NAMES.index("left_ankle")].tolist() == [0, 0]
    assert person.area == 15 and person.bbox == (0, 5, 5, 3)

    away = _annotate(points, owner, 1, facing_camera=False)
    assert [away.visibility[POINT_NAMES.index(n)] for n in ("nose", "left_eye", "right_eye")] \
        == [0, 0, 0]
    assert _annotate(points, owner, 3, facing_camera=True) is None  # nothing of it visible


def test_command_line_writes_coco_and_crowdpose_layouts(tmp_path, capsys):
    assert make_synthetic_dataset.main(["--out", str(tmp_path / "coco"), "--num-images", "2",
                                        "--seed", "1"]) == 0
    assert len(json.loads((tmp_path / "coco" / "annotations.json").read_text())["images"]) == 2
    assert make_synthetic_dataset.main(["--out", str(tmp_path / "cp"), "--num-images", "4",
                                        "--format", "crowdpose"]) == 0
    for split in ("train", "val", "trainval", "test"):
        data = json.loads((tmp_path / "cp" / "crowdpose" / "json" /
                           f"crowdpose_{split}.json").read_text())
        assert all("crowdIndex" in image for image in data["images"])
        assert all(len(a["keypoints"]) == 42 and "area" not in a for a in data["annotations"])
    assert "images/s" in capsys.readouterr().out
    assert make_synthetic_dataset.main(["--out", str(tmp_path / "x"), "--num-images", "1",
                                        "--min-size", "300", "--max-size", "200"]) == 2
    assert "image_size" in capsys.readouterr().err


def test_registered_dataset_is_generated_once_on_first_use(tmp_path):
    root = tmp_path / "lazy"
    name = unique_name("synthetic_lazy")
    register_synthetic_dataset(name, str(root), num_images=3, seed=2)
    try:
        assert not root.exists()
        records = DatasetCatalog.get(name)
        assert len(records) == 3 and MetadataCatalog.get(name).keypoint_names == COCO_NAMES
        stamp = os.stat(root / "annotations.json").st_mtime_ns
        assert len(DatasetCatalog.get(name)) == 3
        assert os.stat(root / "annotations.json").st_mtime_ns == stamp  # not regenerated
    finally:
        unregister(name)
    assert not any(p.name.startswith("lazy.tmp") for p in tmp_path.iterdir())
    with pytest.raises(ValueError, match="generated with"):
        ensure_synthetic_dataset(str(root), num_images=4, seed=2)


@pytest.mark.slow
def test_generator_speed(tmp_path):
    start = time.perf_counter()
    generate_synthetic_dataset(str(tmp_path), 100, seed=0)
    assert 100 / (time.perf_counter() - start) >= 50
