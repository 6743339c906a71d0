"""COCO-format keypoint jsons without Python: ``--dataset NAME=JSON:IMAGE_ROOT`` and
``--dataset-meta`` (grouppose.data.command_line) for train_net.py and demo.py; --eval-only takes
the evaluated set's sigmas; keypoint names out of the json's order are refused; a batch larger
than the training set is one warning."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import COCO_PERSON_KEYPOINT_FLIP_MAP
from detectron2.modeling import build_model
from helpers.keypoint_test_data import unique_name
from helpers.training_utils import (
    FAST_OPTS,
    IMAGE_SIZE,
    REPO_ROOT,
    TINY_CONFIG,
    TRAIN_NET,
    subprocess_env,
    tiny_training_config,
)

import train_net
from grouppose import demo
from grouppose.config import get_grouppose_cfg
from grouppose.data import register_keypoint_dataset
from grouppose.data.command_line import parse_dataset_spec, register_command_line_datasets
from grouppose.data.synthetic import generate_synthetic_dataset
from grouppose.engine.trainer import training_dataset_dicts
from grouppose.modeling.oks import COCO_OKS_SIGMAS

# A 5-keypoint dataset made from the generated 17-keypoint one: these COCO keypoints.
FIVE = {"nose": 0, "left_wrist": 9, "right_wrist": 10, "left_ankle": 15, "right_ankle": 16}
FIVE_META = {
    "flip_map": [["left_wrist", "right_wrist"], ["left_ankle", "right_ankle"]],
    "oks_sigmas": [0.026, 0.062, 0.062, 0.089, 0.089],
}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """{split: (json file, image root)} of a generated COCO-format dataset, K = 17."""
    root = tmp_path_factory.mktemp("generated")
    splits = {}
    for split, (num_images, seed) in {"train": (8, 0), "val": (4, 1)}.items():
        json_file = generate_synthetic_dataset(str(root / split), num_images, seed,
                                               (IMAGE_SIZE, IMAGE_SIZE))
        splits[split] = (json_file, str(root / split / "images"))
    return splits


def five_keypoint_json(json_file, path):
    """``json_file`` with only the FIVE keypoints (in FIVE's order)."""
    with open(json_file) as f:
        content = json.load(f)
    (category,) = content["categories"]
    category["keypoints"] = list(FIVE)
    category["skeleton"] = [[1, 2], [1, 3], [1, 4], [1, 5]]
    for annotation in content["annotations"]:
        values = annotation["keypoints"]
        annotation["keypoints"] = [v for i in FIVE.values() for v in values[3 * i: 3 * i + 3]]
        annotation["num_keypoints"] = sum(v > 0 for v in annotation["keypoints"][2::3])
    path.write_text(json.dumps(content))
    return str(path)


def spec(name, json_file, image_root):
    return f"{name}={json_file}:{image_root}"


# ------------------------------------------------------------------------------------------
# Registration


def test_dataset_spec_is_name_json_image_root():
    assert parse_dataset_spec("a=x/train.json:im/") == ("a", "x/train.json", "im/")
    for bad in ("train.json:im/", "a=train.txt:im/", "a=train.json:", "a=train.json"):
        with pytest.raises(ValueError, match=rf"--dataset '{bad}' must be NAME=JSON:IMAGE_ROOT"):
            parse_dataset_spec(bad)


def test_coco_keypoints_need_no_meta_file(generated):
    json_file, image_root = generated["val"]
    name = unique_name("cli_coco")
    register_command_line_datasets([spec(name, json_file, image_root)])
    metadata = MetadataCatalog.get(name)
    assert metadata.keypoint_flip_map == tuple(COCO_PERSON_KEYPOINT_FLIP_MAP)
    assert metadata.kpt_oks_sigmas == pytest.approx(COCO_OKS_SIGMAS)
    with open(json_file) as f:
        category = json.load(f)["categories"][0]
    assert metadata.keypoint_names == tuple(category["keypoints"])
    names = category["keypoints"]
    assert [(a, b) for a, b, _ in metadata.keypoint_connection_rules] == [
        (names[i - 1], names[j - 1]) for i, j in category["skeleton"]]
    assert len(DatasetCatalog.get(name)) == 4


def test_other_keypoints_take_flip_map_and_sigmas_from_the_meta_file(generated, tmp_path):
    json_file = five_keypoint_json(generated["val"][0], tmp_path / "five.json")
    name = unique_name("cli_five")
    dataset = spec(name, json_file, generated["val"][1])
    with pytest.raises(ValueError, match=rf"--dataset '{name}' \(.*five.json, K=5\): give its "
                                         r"flip_map .* in a --dataset-meta file"):
        register_command_line_datasets([dataset])
    meta = tmp_path / "five.yaml"
    meta.write_text(json.dumps(FIVE_META))  # json is yaml
    register_command_line_datasets([dataset], str(meta))
    metadata = MetadataCatalog.get(name)
    assert metadata.keypoint_names == tuple(FIVE)
    assert metadata.kpt_oks_sigmas == pytest.approx(FIVE_META["oks_sigmas"])
    lengths = {len(a["keypoints"]) for r in DatasetCatalog.get(name) for a in r["annotations"]}
    assert lengths == {15}


@pytest.mark.parametrize("meta, message", [
    ({"flip_map": []}, r"give its oks_sigmas \(5 values\) in --dataset-meta"),
    ({**FIVE_META, "oks_sigma": [1]}, r"unknown: \['oks_sigma'\]"),
    ({**FIVE_META, "flip_map": [["nose", "hip"]]}, r"flip_map entry \('nose', 'hip'\)"),
])
def test_meta_file_mistakes_are_named(generated, tmp_path, meta, message):
    json_file = five_keypoint_json(generated["val"][0], tmp_path / "five.json")
    meta_file = tmp_path / "meta.json"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=message):
        register_command_line_datasets([spec(unique_name("cli_bad"), json_file, "im")],
                                       str(meta_file))


def test_keypoint_names_out_of_the_jsons_order_are_refused(generated, tmp_path):
    json_file = five_keypoint_json(generated["val"][0], tmp_path / "five.json")
    swapped = ["nose", "right_wrist", "left_wrist", "left_ankle", "right_ankle"]
    both_orders = (r"five.json: keypoint_names \[.nose., .right_wrist., .*\] are its "
                   r"category's 'keypoints' in another order \(\[.nose., .left_wrist., .*\]\)")
    meta_file = tmp_path / "meta.json"
    meta_file.write_text(json.dumps({**FIVE_META, "keypoint_names": swapped}))
    with pytest.raises(ValueError, match=both_orders):
        register_command_line_datasets([spec(unique_name("cli_order"), json_file, "im")],
                                       str(meta_file))
    # The Python API: refused when the dataset is loaded.
    name = unique_name("api_order")
    register_keypoint_dataset(name, json_file, generated["val"][1], swapped,
                              FIVE_META["flip_map"], FIVE_META["oks_sigmas"], [])
    with pytest.raises(ValueError, match=both_orders):
        DatasetCatalog.get(name)


def test_batch_larger_than_the_training_set_is_one_warning(tmp_path, caplog):
    cfg = tiny_training_config(tmp_path / "data", tmp_path / "out",
                               ["SOLVER.IMS_PER_BATCH", "32"])
    with caplog.at_level(logging.WARNING, logger="grouppose"):
        training_dataset_dicts(cfg)
    (warning,) = [r.getMessage() for r in caplog.records if "IMS_PER_BATCH" in r.getMessage()]
    # The filters keep 15 of the 16 generated images.
    assert "SOLVER.IMS_PER_BATCH 32 is larger than the training set (15 images" in warning


# ------------------------------------------------------------------------------------------
# train_net.py


def run_train_net(args, timeout=300):
    """train_net.py in a subprocess, nothing registered beforehand; returns its output."""
    result = subprocess.run(
        [sys.executable, str(TRAIN_NET), "--config-file", str(TINY_CONFIG), *args],
        env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=timeout, cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stdout[-6000:]
    return result.stdout


def test_train_and_evaluate_a_coco_json_from_the_command_line(generated, tmp_path):
    datasets = ["--dataset", spec("my_train", *generated["train"]),
                "--dataset", spec("my_val", *generated["val"])]
    opts = [*FAST_OPTS, "DATASETS.TRAIN", "('my_train',)", "DATASETS.TEST", "('my_val',)",
            "OUTPUT_DIR", str(tmp_path)]
    output = run_train_net([*datasets, *opts, "SOLVER.MAX_ITER", "2"])
    assert "Evaluation results for my_val" in output
    assert "dataset 'my_train'" in output  # the load summary of the json
    output = run_train_net([*datasets, "--eval-only", *opts,
                            "MODEL.WEIGHTS", str(tmp_path / "model_final.pth")])
    assert "Evaluation results for my_val" in output


def test_eval_only_takes_the_sigmas_of_the_evaluated_set(generated, tmp_path):
    """A 5-keypoint set is evaluated with DATASETS.TRAIN left at the config's 17-keypoint
    set: the model's losses take the evaluated set's sigmas, not DATASETS.TRAIN's."""
    json_file = five_keypoint_json(generated["val"][0], tmp_path / "five.json")
    meta = tmp_path / "five.yaml"
    meta.write_text(json.dumps(FIVE_META))
    name = unique_name("eval_five")
    opts = [*FAST_OPTS, "DATASETS.TRAIN", "('synthetic_train',)", "DATASETS.TEST", f"('{name}',)",
            "MODEL.GROUP_POSE.NUM_KEYPOINTS", "5", "OUTPUT_DIR", str(tmp_path / "eval")]
    cfg = get_grouppose_cfg(str(TINY_CONFIG), [*opts, "MODEL.GROUP_POSE.OKS_SIGMAS",
                                                str(FIVE_META["oks_sigmas"])])
    weights = tmp_path / "five.pth"
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    args = ["--config-file", str(TINY_CONFIG), "--eval-only", "--dataset",
            spec(name, json_file, generated["val"][1]), "--dataset-meta", str(meta),
            *opts, "MODEL.WEIGHTS", str(weights)]
    results = train_net.main(train_net.get_parser().parse_args(args))
    assert 0.0 <= results["keypoints"]["AP"] <= 100.0
    assert len(MetadataCatalog.get("synthetic_train").keypoint_names) == 17


def test_demo_draws_a_five_keypoint_model_with_its_datasets_skeleton(generated, tmp_path):
    """demo.py with --dataset / --dataset-meta and a K = 5 model; DATASETS.TRAIN stays the
    config's 17-keypoint set (the model's unused losses take the test set's sigmas)."""
    json_file = five_keypoint_json(generated["val"][0], tmp_path / "five.json")
    meta = tmp_path / "five.yaml"
    meta.write_text(json.dumps(FIVE_META))
    name = unique_name("demo_five")
    opts = ["MODEL.GROUP_POSE.NUM_KEYPOINTS", "5", "DATASETS.TEST", f"('{name}',)"]
    cfg = get_grouppose_cfg(str(TINY_CONFIG), [*opts, "MODEL.GROUP_POSE.OKS_SIGMAS",
                                                str(FIVE_META["oks_sigmas"])])
    weights = tmp_path / "five.pth"
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    image = sorted(Path(generated["val"][1]).glob("*.jpg"))[0]
    status = demo.main(["--config-file", str(TINY_CONFIG), "--dataset",
                           spec(name, json_file, generated["val"][1]), "--dataset-meta",
                           str(meta), "--input", str(image), "--output", str(tmp_path / "drawn"),
                           "--opts", *opts, "MODEL.WEIGHTS", str(weights)])
    assert status == 0
    assert (tmp_path / "drawn" / image.name).is_file()
    assert len(MetadataCatalog.get(name).keypoint_connection_rules) == 4
    assert len(cfg.DATASETS.TRAIN) and cfg.DATASETS.TRAIN[0] != name
