"""Bad input to the data pipeline: each case is a clear error naming the file (and annotation
id), or a documented skip that is counted and logged once, and valid annotations survive."""

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from helpers.keypoint_test_data import (
    COCO_NAMES,
    K,
    annotation,
    keypoints,
    unique_name,
    unregister,
    write_image,
    write_json,
)

from grouppose.config import add_grouppose_config
from grouppose.data import (
    GroupPoseDatasetMapper,
    load_keypoint_json,
    register_keypoint_dataset,
)
from grouppose.data.datasets import (
    CROWDPOSE_FLIP_MAP,
    CROWDPOSE_KEYPOINT_NAMES,
    CROWDPOSE_SKELETON,
)
from grouppose.data.synthetic import generate_synthetic_crowdpose
from grouppose.engine.trainer import training_dataset_dicts
from grouppose.evaluation import build_keypoint_evaluator
from grouppose.image_io import read_image
from grouppose.modeling.oks import CROWDPOSE_OKS_SIGMAS

LOGGER = "grouppose.data.keypoint_json"
IMAGE = {"id": 1, "file_name": "1.png", "height": 40, "width": 50}
GOOD = annotation(1, 1, keypoints({0: (10, 10, 2), 5: (20, 20, 1)}), [5, 5, 30, 30], area=400.0)
# GOOD as loaded: labeled keypoints + 0.5 (Detectron2's continuous coordinates).
GOOD_LOADED = keypoints({0: (10.5, 10.5, 2), 5: (20.5, 20.5, 1)})
PERSON = {"id": 1, "name": "person", "keypoints": list(COCO_NAMES), "skeleton": []}


def _dataset(tmp_path, annotations, images=(IMAGE,), names=COCO_NAMES):
    for image in images:
        write_image(tmp_path / "images" / image["file_name"], image["height"], image["width"])
    return str(write_json(tmp_path / "data.json", list(images), annotations, names))


def _load(tmp_path, annotations, images=(IMAGE,), names=COCO_NAMES):
    json_file = _dataset(tmp_path, annotations, images, names)
    return load_keypoint_json(json_file, str(tmp_path / "images"), "bad_input", len(names))


def _people(records):
    return {a["id"]: a for r in records for a in r["annotations"]}


def _one_warning(caplog):
    warnings = [r.getMessage() for r in caplog.records
                if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    return warnings[0]


def _info(caplog):
    (info,) = [r.getMessage() for r in caplog.records
               if r.name == LOGGER and r.levelno == logging.INFO]
    return info


def test_missing_image_file_is_an_error_naming_it(tmp_path):
    json_file = _dataset(tmp_path, [GOOD])
    (tmp_path / "images" / "1.png").unlink()
    with pytest.raises(ValueError, match=r"1 of 1 image files are missing.*1\.png"):
        load_keypoint_json(json_file, str(tmp_path / "images"), "bad_input", K)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_or_corrupt_image_is_an_error_naming_it(tmp_path, suffix):
    records = _load(tmp_path, [GOOD])
    path = tmp_path / f"broken{suffix}"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
    records[0]["file_name"] = str(path)
    mapper = GroupPoseDatasetMapper(True, augmentations=[], image_format="RGB", num_keypoints=K)
    with pytest.raises(ValueError, match=f"cannot read image '.*broken{suffix}'"):
        mapper(records[0])
    path.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match=f"broken{suffix}"):
        mapper(records[0])


def test_grayscale_rgba_and_16_bit_images_become_8_bit_three_channel(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    for image_format in ("RGB", "BGR"):
        image = read_image(str(tmp_path / "gray.png"), image_format)
        assert image.shape == (3, 4, 3) and image.dtype == np.uint8
        assert (image == gray[:, :, None]).all()

    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2], bgra[..., 3] = 10, 20, 30, 0  # fully transparent
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    assert read_image(str(tmp_path / "rgba.png"), "RGB")[0, 0].tolist() == [30, 20, 10]
    assert read_image(str(tmp_path / "rgba.png"), "BGR")[0, 0].tolist() == [10, 20, 30]

    deep = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    image = read_image(str(tmp_path / "deep.png"), "RGB")
    assert image.shape == (1, 3, 3)
    assert image[0, :, 0].tolist() == [0, 100, 255]  # scaled by 255 / 65535, not clipped

    with pytest.raises(ValueError, match="image_format"):
        read_image(str(tmp_path / "gray.png"), "YUV-BT.601")


def test_keypoints_outside_the_image_become_unlabeled_and_are_counted(tmp_path, caplog):
    outside = annotation(2, 1, keypoints({0: (60, 10, 2), 1: (10, -3, 1), 2: (12, 12, 2)}),
                         [5, 5, 30, 30], area=300.0)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        people = _people(_load(tmp_path, [GOOD, outside]))
    assert "2 labeled keypoints outside their image made unlabeled" in _one_warning(caplog)
    points = np.asarray(people[2]["keypoints"]).reshape(-1, 3)
    assert points[:2].tolist() == [[0, 0, 0], [0, 0, 0]]
    assert points[2].tolist() == [12.5, 12.5, 2]
    assert people[1]["keypoints"] == GOOD_LOADED



def test_nan_coordinates_become_unlabeled_and_null_is_an_error(tmp_path, caplog):
    nan = annotation(2, 1, keypoints({0: (float("nan"), 10, 2), 1: (12, 12, 2)}),
                     [5, 5, 30, 30], area=300.0)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        people = _people(_load(tmp_path, [GOOD, nan]))
    assert "1 labeled keypoints with NaN/inf coordinates made unlabeled" in _one_warning(caplog)
    points = np.asarray(people[2]["keypoints"]).reshape(-1, 3)
    assert points[0].tolist() == [0, 0, 0] and points[1].tolist() == [12.5, 12.5, 2]

    null = annotation(3, 1, [None] + keypoints({})[1:], [5, 5, 30, 30], area=300.0)
    with pytest.raises(ValueError, match=r"data\.json: annotation id 3 .*not a number"):
        _load(tmp_path, [GOOD, null])


def test_zero_area_people_use_their_box_or_are_dropped_and_counted(tmp_path, caplog):
    zero_area = annotation(2, 1, keypoints({0: (12, 12, 2)}), [5, 5, 10, 20], area=0.0)
    no_area = annotation(3, 1, keypoints({0: (14, 12, 2)}), [5, 5, 10, 10])
    nothing = annotation(4, 1, keypoints({0: (16, 12, 2)}), [5, 5, 0, 0], area=0.0)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        people = _people(_load(tmp_path, [GOOD, zero_area, no_area, nothing]))
    assert {i: p["area"] for i, p in people.items()} == {1: 400.0, 2: 200.0, 3: 100.0}
    assert "1 people with no positive area or box dropped" in _one_warning(caplog)
    assert "2 people given their box area" in _info(caplog)


def test_mapper_uses_box_area_without_area_and_rejects_people_with_neither(tmp_path):
    (record,) = _load(tmp_path, [GOOD])
    mapper = GroupPoseDatasetMapper(True, augmentations=[], image_format="RGB", num_keypoints=K)
    (person,) = record["annotations"]
    del person["area"]  # e.g. a dataset registered with Detectron2's own COCO loader
    assert mapper(record)["instances"].gt_area.tolist() == [900.0]  # its 30 x 30 box
    person["bbox"] = [5, 5, 0, 30]
    with pytest.raises(ValueError, match=r"annotation id 1 of '.*1\.png' has neither"):
        mapper(record)


def test_images_whose_people_are_all_crowd_are_counted_and_give_no_target(tmp_path, caplog):
    second = {"id": 2, "file_name": "2.png", "height": 40, "width": 50}
    crowd = annotation(2, 2, keypoints({}), [0, 0, 20, 20], area=400.0, iscrowd=1)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        records = _load(tmp_path, [GOOD, crowd], images=(IMAGE, second))
    assert "1 images whose people are all crowd" in _info(caplog)
    assert not [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]
    mapper = GroupPoseDatasetMapper(True, augmentations=[T.NoOpTransform()],
                                    image_format="RGB", num_keypoints=K)
    assert len(mapper(records[0])["instances"]) == 1
    assert len(mapper(records[1])["instances"]) == 0


def test_json_with_a_different_k_is_an_error_naming_file_and_annotation(tmp_path):
    fourteen = annotation(2, 1, keypoints({0: (12, 12, 2)}, 14), [5, 5, 10, 20], area=50.0)
    with pytest.raises(ValueError, match=r"data\.json: annotation id 2 has 42 keypoint values "
                                         r"\(14 keypoints\).*K = 17"):
        _load(tmp_path, [GOOD, fourteen])


def test_non_finite_box_is_an_error_naming_the_annotation(tmp_path):
    bad_box = annotation(5, 1, keypoints({0: (12, 12, 2)}), [5, 5, float("inf"), 20], area=50.0)
    with pytest.raises(ValueError, match="annotation id 5 has a non-finite bbox"):
        _load(tmp_path, [GOOD, bad_box])


def test_evaluators_reject_jsons_missing_the_fields_they_need(tmp_path):
    cfg = get_cfg()
    add_grouppose_config(cfg)
    no_area = annotation(1, 1, keypoints({0: (10, 10, 2)}), [5, 5, 30, 30])
    name = unique_name("no_area")
    register_keypoint_dataset(name, _dataset(tmp_path, [no_area]), str(tmp_path / "images"),
                              COCO_NAMES, [], [0.05] * K, [])
    try:
        with pytest.raises(ValueError, match="annotation id 1 has no 'area'"):
            build_keypoint_evaluator(cfg, name)
    finally:
        unregister(name)

    json_files = generate_synthetic_crowdpose(str(tmp_path / "cp"), 4, seed=0)
    val_json = Path(json_files["val"])
    val_json.write_text(val_json.read_text().replace('"crowdIndex"', '"crowd_index"'))
    name = unique_name("no_crowd_index")
    register_keypoint_dataset(name, json_files["val"], str(tmp_path / "cp" / "crowdpose" /
                                                           "images"),
                              CROWDPOSE_KEYPOINT_NAMES, CROWDPOSE_FLIP_MAP, CROWDPOSE_OKS_SIGMAS,
                              CROWDPOSE_SKELETON, evaluator_type="crowdpose")
    try:
        with pytest.raises(ValueError, match="has no 'crowdIndex'"):
            build_keypoint_evaluator(cfg, name)
    finally:
        unregister(name)


@pytest.mark.parametrize("empty", [{"annotations": []}, {}], ids=["empty_list", "no_key"])
def test_json_without_annotations_loads_as_people_free_images(tmp_path, caplog, empty):
    write_image(tmp_path / "images" / "1.png", 40, 50)
    json_file = tmp_path / "data.json"
    json_file.write_text(json.dumps({"images": [IMAGE], "categories": [PERSON], **empty}))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        records = load_keypoint_json(str(json_file), str(tmp_path / "images"),
                                     unique_name("people_free"), K)
    assert [(r["image_id"], r["annotations"]) for r in records] == [(1, [])]
    assert "1 images, 0 people" in _info(caplog)


def test_training_set_without_labeled_people_is_an_error_naming_dataset_and_json(tmp_path):
    unlabeled = annotation(1, 1, keypoints({}), [5, 5, 30, 30], area=400.0)
    crowd = annotation(2, 1, keypoints({0: (10, 10, 2)}), [5, 5, 30, 30], area=400.0, iscrowd=1)
    for annotations in ([], [unlabeled, crowd]):
        name = unique_name("no_people_train")
        json_file = _dataset(tmp_path, annotations)
        register_keypoint_dataset(name, json_file, str(tmp_path / "images"), COCO_NAMES, [],
                                  [0.05] * K, [])
        cfg = get_cfg()
        add_grouppose_config(cfg)
        cfg.DATASETS.TRAIN = (name,)
        cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = False  # Detectron2 then trained on nothing
        try:
            with pytest.raises(ValueError, match=f"no labeled person .*'{name}' "
                                                 f"\\({json_file}\\)"):
                training_dataset_dicts(cfg)
        finally:
            unregister(name)


def test_filters_that_leave_no_training_image_are_an_error_naming_the_key(tmp_path):
    name = unique_name("few_keypoints_train")
    register_keypoint_dataset(name, _dataset(tmp_path, [GOOD]), str(tmp_path / "images"),
                              COCO_NAMES, [], [0.05] * K, [])
    cfg = get_cfg()
    add_grouppose_config(cfg)
    cfg.DATASETS.TRAIN = (name,)
    cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE = 3  # GOOD has 2
    try:
        with pytest.raises(ValueError, match="MIN_KEYPOINTS_PER_IMAGE = 3"):
            training_dataset_dicts(cfg)
        cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE = 2
        assert len(training_dataset_dicts(cfg)) == 1
    finally:
        unregister(name)


def test_duplicate_image_ids_are_an_error_naming_them(tmp_path):
    images = [{**IMAGE, "id": i % 3, "file_name": f"{i}.png"} for i in range(5)]  # 0, 1 twice
    annotations = [annotation(i + 1, i % 3, GOOD["keypoints"], GOOD["bbox"], area=400.0)
                   for i in range(5)]
    with pytest.raises(ValueError, match=r"data\.json: several images share an id "
                                         r"\(2 such ids: 0, 1\)"):
        _load(tmp_path, annotations, images=images)


def _with_categories(tmp_path, categories, annotations):
    """A one-image json with these categories, loaded as a fresh dataset: (records, name)."""
    write_image(tmp_path / "images" / "1.png", 40, 50)
    json_file = tmp_path / "data.json"
    json_file.write_text(json.dumps({"images": [IMAGE], "annotations": annotations,
                                     "categories": categories}))
    name = unique_name("categories")
    return load_keypoint_json(str(json_file), str(tmp_path / "images"), name, K), name


def test_categories_without_keypoints_are_ignored_counted_and_mapped(tmp_path, caplog):
    person = {**PERSON, "id": 7}
    dog, cat = {"id": 1, "name": "dog"}, {"id": 3, "name": "cat"}
    people = [{**GOOD, "category_id": 7}, {**GOOD, "id": 2, "category_id": 7}]
    animals = [{"id": 10 + i, "image_id": 1, "category_id": category, "iscrowd": 0,
                "bbox": [1, 1, 5, 5], "area": 25.0} for i, category in enumerate((1, 1, 3))]
    with caplog.at_level(logging.INFO, logger=LOGGER):
        records, name = _with_categories(tmp_path, [dog, person, cat], people + animals)
    try:
        assert sorted(_people(records)) == [1, 2]
        assert {a["category_id"] for a in records[0]["annotations"]} == {0}
        metadata = MetadataCatalog.get(name)
        assert metadata.thing_classes == ["person"]
        assert metadata.thing_dataset_id_to_contiguous_id == {7: 0}
        assert ("annotations of categories other than keypoint category 'person' ignored: "
                "'dog' 2, 'cat' 1") in _info(caplog)
    finally:
        MetadataCatalog.remove(name)

    # Without keypoint names, the category the labeled annotations use is the keypoint one.
    records, name = _with_categories(tmp_path, [dog, {"id": 7, "name": "person"}],
                                     people + animals[:1])
    MetadataCatalog.remove(name)
    assert sorted(_people(records)) == [1, 2]


def test_ambiguous_or_unknown_categories_are_errors_naming_the_json(tmp_path):
    hands = {"id": 2, "name": "hand", "keypoints": list(COCO_NAMES)}
    with pytest.raises(ValueError, match=r"data\.json: cannot tell the keypoint category: 2 "
                                         r"categories list 'keypoints' names .*'person', 'hand'"):
        _with_categories(tmp_path, [PERSON, hands], [GOOD])
    unlabeled = [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}]
    with pytest.raises(ValueError, match="cannot tell the keypoint category: 0 categories"):
        _with_categories(tmp_path, unlabeled, [])
    with pytest.raises(ValueError, match=r"data\.json: annotation id 1 has category_id 5, which "
                                         r"is not in 'categories' \[1\]"):
        _with_categories(tmp_path, [PERSON], [{**GOOD, "category_id": 5}])
