"""Keypoint evaluators: COCO (pycocotools through Detectron2), CrowdPose (xtcocotools) and
custom K, chosen by build_keypoint_evaluator. Ground truth fed back scores AP = 100; a known
perturbation scores exactly what the COCO API computes directly on the same json."""

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, Instances
from helpers.keypoint_test_data import (
    COCO_NAMES,
    annotation,
    coco_results,
    gt_predictions,
    keypoints,
    unique_name,
    unregister,
    write_json,
)
from pycocotools import coco as pycoco
from pycocotools import cocoeval as pycocoeval
from xtcocotools import coco as xtcoco
from xtcocotools import cocoeval as xtcocoeval

from grouppose.config import add_grouppose_config
from grouppose.data import register_keypoint_dataset
from grouppose.data.datasets import (
    CROWDPOSE_FLIP_MAP,
    CROWDPOSE_KEYPOINT_NAMES,
    CROWDPOSE_SKELETON,
    register_all_crowdpose,
)
from grouppose.data.synthetic import (
    generate_synthetic_crowdpose,
    generate_synthetic_dataset,
    register_synthetic_dataset,
)
from grouppose.evaluation import CROWDPOSE_METRICS, CrowdPoseEvaluator, build_keypoint_evaluator
from grouppose.modeling.oks import COCO_OKS_SIGMAS, CROWDPOSE_OKS_SIGMAS

COCO_METRICS = ("AP", "AP50", "AP75", "APm", "APl")
PERSON = {"id": 1, "name": "person", "keypoints": list(COCO_NAMES), "skeleton": []}


def _cfg():
    cfg = get_cfg()
    add_grouppose_config(cfg)
    return cfg


def _perturbation(json_file):
    """Per-person shifts (multiples of 0.5 px: exact in float32) and scores."""
    people = [a for a in json.loads(json_file.read_text())["annotations"]
              if not a["iscrowd"] and a["num_keypoints"] > 0]
    shifts = {a["id"]: (1.5 * (i % 5), -1.0 * (i % 3)) for i, a in enumerate(people)}
    scores = {a["id"]: 1.0 - (i % 7) / 16 for i, a in enumerate(people)}
    return shifts, scores


def _evaluate(evaluator, inputs, outputs):
    evaluator.reset()
    evaluator.process(inputs, outputs)
    return evaluator.evaluate()["keypoints"]


def _percentages(names, stats):
    """COCO API stats as Detectron2 reports them: percentages, NaN for undefined (-1)."""
    return {name: float(value * 100) if value >= 0 else float("nan")
            for name, value in zip(names, stats)}


def _assert_same(metrics, expected):
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, rel=0, abs=0, nan_ok=True), name


def _pycocotools_stats(json_file, results, sigmas):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = pycoco.COCO(str(json_file))
        coco_eval = pycocoeval.COCOeval(gt, gt.loadRes(results), "keypoints")
        coco_eval.params.kpt_oks_sigmas = np.asarray(sigmas)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return _percentages(COCO_METRICS, coco_eval.stats)


def _xtcocotools_stats(json_file, results, sigmas):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = xtcoco.COCO(str(json_file))
        coco_eval = xtcocoeval.COCOeval(gt, gt.loadRes(results), "keypoints_crowd",
                               sigmas=np.asarray(sigmas), use_area=False)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return _percentages(CROWDPOSE_METRICS, coco_eval.stats)


@pytest.fixture(scope="module")
def coco_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_eval")
    generate_synthetic_dataset(str(root), 12, seed=5)
    name = unique_name("eval_synthetic")
    register_synthetic_dataset(name, str(root))
    yield name, root / "annotations.json"
    unregister(name)


@pytest.fixture(scope="module")
def crowdpose_root(tmp_path_factory):
    """A generated CrowdPose-layout root registered as crowdpose_* (restored afterwards)."""
    root = tmp_path_factory.mktemp("crowdpose_root")
    generate_synthetic_crowdpose(str(root), 40, seed=2)
    names = [f"crowdpose_{split}" for split in ("train", "val", "trainval", "test")]
    for name in names:
        unregister(name)
    register_all_crowdpose(str(root))
    yield root
    for name in names:
        unregister(name)
    register_all_crowdpose(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))


def test_coco_evaluator_ground_truth_scores_100(coco_dataset):
    name, json_file = coco_dataset
    evaluator = build_keypoint_evaluator(_cfg(), name)
    assert isinstance(evaluator, COCOEvaluator)
    metrics = _evaluate(evaluator, *gt_predictions(json_file))
    for metric in ("AP", "AP50", "AP75"):
        assert metrics[metric] == 100.0


def test_coco_evaluator_matches_pycocotools(coco_dataset):
    name, json_file = coco_dataset
    inputs, outputs = gt_predictions(json_file, *_perturbation(json_file))
    expected = _pycocotools_stats(json_file, coco_results(inputs, outputs), COCO_OKS_SIGMAS)
    metrics = _evaluate(build_keypoint_evaluator(_cfg(), name), inputs, outputs)
    assert expected["AP"] < 95.0  # the perturbation is felt
    _assert_same(metrics, expected)


def test_custom_k_dataset_evaluates_with_its_own_sigmas(tmp_path):
    names = ("head", "left_hand", "right_hand")
    sigmas = (0.05, 0.2, 0.3)
    people = [
        {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [10, 10, 40, 60],
         "area": 1500.0, "num_keypoints": 3, "keypoints": [30, 15, 2, 12, 40, 2, 48, 40, 2]},
        {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [60, 20, 30, 50],
         "area": 900.0, "num_keypoints": 2, "keypoints": [75, 25, 2, 62, 50, 1, 0, 0, 0]},
    ]
    json_file = write_json(tmp_path / "k3.json",
                           [{"id": 1, "file_name": "a.jpg", "height": 100, "width": 100}],
                           people, names)
    (tmp_path / "a.jpg").write_bytes(b"")  # the loader checks that image files exist
    name = unique_name("eval_k3")
    register_keypoint_dataset(name, str(json_file), str(tmp_path), names,
                              [("left_hand", "right_hand")], sigmas, [("head", "left_hand")])
    try:
        inputs, outputs = gt_predictions(json_file, shifts={1: (3.0, 2.0), 2: (1.0, -2.5)},
                                         scores={1: 0.9, 2: 0.75})
        expected = _pycocotools_stats(json_file, coco_results(inputs, outputs), sigmas)
        with_coco_sigmas = _pycocotools_stats(
            json_file, coco_results(inputs, outputs), COCO_OKS_SIGMAS[:3]
        )
        metrics = _evaluate(build_keypoint_evaluator(_cfg(), name), inputs, outputs)
    finally:
        unregister(name)
    assert expected["AP"] != with_coco_sigmas["AP"]  # the sigmas matter on this data
    _assert_same(metrics, expected)


def test_crowdpose_registration_and_evaluation_end_to_end(crowdpose_root):
    json_file = crowdpose_root / "crowdpose" / "json" / "crowdpose_test.json"
    data = json.loads(json_file.read_text())
    crowd = [image["crowdIndex"] for image in data["images"]]
    # The generated split has easy, medium and hard images, so every metric is defined.
    assert min(crowd) < 0.2 and any(0.2 <= c < 0.8 for c in crowd) and max(crowd) >= 0.8

    evaluator = build_keypoint_evaluator(_cfg(), "crowdpose_test")
    assert isinstance(evaluator, CrowdPoseEvaluator)
    metrics = _evaluate(evaluator, *gt_predictions(json_file))
    for metric in ("AP", "AP50", "AP75", "AP_E", "AP_M", "AP_H"):
        assert metrics[metric] == 100.0, metric

    inputs, outputs = gt_predictions(json_file, *_perturbation(json_file))
    expected = _xtcocotools_stats(json_file, coco_results(inputs, outputs), CROWDPOSE_OKS_SIGMAS)
    metrics = _evaluate(evaluator, inputs, outputs)
    assert expected["AP"] < 95.0
    _assert_same(metrics, expected)


def test_crowdpose_evaluator_writes_results_and_handles_no_predictions(crowdpose_root, tmp_path):
    evaluator = CrowdPoseEvaluator("crowdpose_val", CROWDPOSE_OKS_SIGMAS, output_dir=str(tmp_path),
                                   distributed=False)
    evaluator.reset()
    metrics = evaluator.evaluate()["keypoints"]
    assert set(metrics) == set(CROWDPOSE_METRICS)
    assert all(np.isnan(v) for v in metrics.values())
    assert json.loads((tmp_path / "crowdpose_keypoint_results.json").read_text()) == []


def test_coco_evaluation_works_without_xtcocotools_and_crowdpose_says_what_to_install():
    """xtcocotools is needed by CrowdPose evaluation only: importing grouppose (and evaluating
    COCO-format datasets) must not need it, and a CrowdPose evaluator tells how to install it."""
    script = (
        "import sys; sys.modules['xtcocotools'] = None\n"
        "import grouppose\n"
        "from grouppose.evaluation import crowdpose\n"
        "try:\n"
        "    crowdpose.CrowdPoseEvaluator('crowdpose_val', [0.1] * 14)\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True)
    assert "CrowdPose evaluation needs xtcocotools: pip install" in result.stdout


def test_score_oracle_ranks_each_persons_best_detection_first(tmp_path):
    """tools/benchmarks/score_oracle.py: with the right detections present but misranked
    (a duplicate and a false detection above them), the oracle scores reach AP 100."""
    from tools.benchmarks import score_oracle

    def person(x0: float) -> list:
        points = np.stack([x0 + np.arange(17) * 2.0, 20.0 + np.arange(17) * 3.0,
                           np.full(17, 2.0)], axis=1)
        return points.reshape(-1).tolist()

    people = [person(10.0), person(60.0)]
    annotations = [annotation(i + 1, 1, kpts, [kpts[0], 20.0, 32.0, 48.0], area=1536.0)
                   for i, kpts in enumerate(people)]
    annotations_file = write_json(tmp_path / "gt.json", [{"id": 1, "width": 120,
                                                         "height": 90}], annotations)
    shifted = (np.asarray(people[0]) + np.tile([2.0, 1.0, 0.0], 17)).tolist()
    detections = [
        {"image_id": 1, "category_id": 1, "keypoints": people[0], "score": 0.1},
        {"image_id": 1, "category_id": 1, "keypoints": shifted, "score": 0.9},  # duplicate
        {"image_id": 1, "category_id": 1, "keypoints": person(100.0), "score": 0.8},  # false
        {"image_id": 1, "category_id": 1, "keypoints": people[1], "score": 0.05},
    ]
    as_is, oracle = score_oracle.as_is_and_oracle(str(annotations_file), detections)
    assert as_is["AP"] < 90.0
    assert oracle == {"AP": 100.0, "AP50": 100.0, "AP75": 100.0}
    # the pairing is greedy by OKS: the exact detection, not the duplicate, gets person 0
    oks = np.array([[1.0, 0.0], [0.6, 0.0], [0.0, 0.1], [0.0, 1.0]])
    assert score_oracle.oracle_scores(oks, np.array([0.1, 0.9, 0.8, 0.05])).tolist() == [
        2.0, 0.9, 0.8, 2.0]


def _register_json(image_root, content):
    """Write ``content`` next to ``image_root`` (empty files for its missing images) and
    register it: (name, json file)."""
    json_file = image_root.parent / f"{unique_name('gt')}.json"
    json_file.write_text(json.dumps(content))
    for image in content["images"]:
        path = image_root / image["file_name"]
        if not path.exists():
            path.write_bytes(b"")  # the loader checks that image files exist
    name = unique_name("eval_json")
    register_keypoint_dataset(name, str(json_file), str(image_root), COCO_NAMES, [],
                              COCO_OKS_SIGMAS, [])
    return name, json_file


def _false_detection(image_id):
    """One confident prediction on an image, as model output."""
    instances = Instances((100, 100))
    instances.pred_keypoints = torch.cat([torch.full((1, 17, 2), 30.0), torch.ones(1, 17, 1)], 2)
    instances.pred_boxes = Boxes(torch.tensor([[20.0, 20.0, 40.0, 40.0]]))
    instances.scores = torch.tensor([0.9])
    instances.pred_classes = torch.zeros(1, dtype=torch.int64)
    return {"image_id": image_id}, {"instances": instances}


@pytest.mark.parametrize("people", ["none", "unlabeled"])
def test_people_free_ground_truth_evaluates_to_nan_with_a_warning(tmp_path, caplog, people):
    images = [{"id": i, "file_name": f"{i}.jpg", "height": 100, "width": 100} for i in (1, 2)]
    annotations = [] if people == "none" else [
        annotation(1, 1, keypoints({}), [10, 10, 40, 60], area=1500.0)]
    (tmp_path / "images").mkdir()
    name, json_file = _register_json(tmp_path / "images", {
        "images": images, "annotations": annotations, "categories": [PERSON]})
    output_dir = tmp_path / "inference"
    try:
        with caplog.at_level(logging.INFO, logger="grouppose"):
            evaluator = build_keypoint_evaluator(_cfg(), name, str(output_dir))
        built = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert built == [f"dataset '{name}' ({json_file}): no person has a labeled keypoint (a "
                         "non-crowd annotation with v > 0), so keypoint AP cannot be computed: "
                         "every metric will be NaN"]
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="grouppose"):
            inp, out = _false_detection(1)
            metrics = _evaluate(evaluator, [inp, {"image_id": 2}], [out, {}])
    finally:
        unregister(name)
    assert set(metrics) == set(COCO_METRICS) and all(np.isnan(v) for v in metrics.values())
    assert any("keypoint AP is undefined" in r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING)
    (result,) = json.loads((output_dir / "coco_instances_results.json").read_text())
    assert result["image_id"] == 1 and result["category_id"] == 1


def test_missing_or_wrong_num_keypoints_are_computed_before_inference(tmp_path, caplog):
    generate_synthetic_dataset(str(tmp_path), 6, seed=3)
    content = json.loads((tmp_path / "annotations.json").read_text())
    first, second = content["annotations"][:2]
    del first["num_keypoints"]
    assert second["num_keypoints"] > 0
    second["num_keypoints"] = 0  # pycocotools would ignore this labeled person
    name, _ = _register_json(tmp_path / "images", content)
    try:
        with caplog.at_level(logging.INFO, logger="grouppose"):
            evaluator = build_keypoint_evaluator(_cfg(), name)
        (line,) = [r.getMessage() for r in caplog.records if "num_keypoints" in r.getMessage()]
        assert "missing on 1 annotations and different from their labeled keypoints on 1" in line
        metrics = _evaluate(evaluator, *gt_predictions(tmp_path / "annotations.json"))
    finally:
        unregister(name)
    assert metrics["AP"] == pytest.approx(100.0)


def test_evaluation_uses_the_keypoint_category_of_a_json_with_others(tmp_path):
    """person (id 2, with keypoints) + dog (id 1, no keypoints): the dog annotations lack
    keypoint fields pycocotools needs, and the results must carry person's id 2."""
    person_json = tmp_path / "person_only.json"
    generate_synthetic_dataset(str(tmp_path), 4, seed=4)
    content = json.loads((tmp_path / "annotations.json").read_text())
    for item in content["annotations"]:
        item["category_id"] = 2
    content["categories"][0]["id"] = 2
    person_json.write_text(json.dumps(content))
    dogs = [{"id": 1000 + i, "image_id": image["id"], "category_id": 1, "iscrowd": 0,
             "bbox": [1, 1, 8, 8], "area": 64.0} for i, image in enumerate(content["images"])]
    content["annotations"] = dogs[:1] + content["annotations"] + dogs[1:]
    content["categories"].append({"id": 1, "name": "dog"})
    name, _ = _register_json(tmp_path / "images", content)
    output_dir = tmp_path / "inference"
    try:
        evaluator = build_keypoint_evaluator(_cfg(), name, str(output_dir))
        metrics = _evaluate(evaluator, *gt_predictions(person_json))
        assert MetadataCatalog.get(name).thing_classes == ["person"]
    finally:
        unregister(name)
    assert metrics["AP"] == pytest.approx(100.0) and "AP-dog" not in metrics
    results = json.loads((output_dir / "coco_instances_results.json").read_text())
    assert results and {r["category_id"] for r in results} == {2}


def test_crowdpose_results_use_the_keypoint_category_id(tmp_path):
    json_files = generate_synthetic_crowdpose(str(tmp_path), 8, seed=3)
    content = json.loads(Path(json_files["val"]).read_text())
    for item in content["annotations"]:
        item["category_id"] = 2
    content["categories"][0]["id"] = 2
    content["categories"].append({"id": 1, "name": "dog"})  # sorts first: contiguous 0 if naive
    Path(json_files["val"]).write_text(json.dumps(content))
    name = unique_name("eval_crowdpose_categories")
    register_keypoint_dataset(name, json_files["val"], str(tmp_path / "crowdpose" / "images"),
                              CROWDPOSE_KEYPOINT_NAMES, CROWDPOSE_FLIP_MAP, CROWDPOSE_OKS_SIGMAS,
                              CROWDPOSE_SKELETON, evaluator_type="crowdpose")
    try:
        evaluator = build_keypoint_evaluator(_cfg(), name, str(tmp_path / "inference"))
        metrics = _evaluate(evaluator, *gt_predictions(Path(json_files["val"])))
    finally:
        unregister(name)
    assert metrics["AP"] == 100.0
    results = json.loads((tmp_path / "inference" / "crowdpose_keypoint_results.json").read_text())
    assert {r["category_id"] for r in results} == {2}
