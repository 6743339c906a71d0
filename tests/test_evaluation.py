"""Keypoint evaluators: COCO (pycocotools through Detectron2), CrowdPose (xtcocotools) and
custom K, chosen by build_keypoint_evaluator. Ground truth fed back scores AP = 100; a known
perturbation scores exactly what the COCO API computes directly on the same json."""

import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.evaluation import COCOEvaluator
from keypoint_test_data import (
    annotation,
    coco_results,
    gt_predictions,
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
from grouppose.data.datasets import register_all_crowdpose
from grouppose.data.synthetic import (
    generate_synthetic_crowdpose,
    generate_synthetic_dataset,
    register_synthetic_dataset,
)
from grouppose.evaluation import CROWDPOSE_METRICS, CrowdPoseEvaluator, build_keypoint_evaluator
from grouppose.oks import COCO_OKS_SIGMAS, CROWDPOSE_OKS_SIGMAS

COCO_METRICS = ("AP", "AP50", "AP75", "APm", "APl")


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


def test_score_oracle_ranks_each_persons_best_detection_first(tmp_path, monkeypatch):
    """tools/benchmarks/score_oracle.py: with the right detections present but misranked
    (a duplicate and a false detection above them), the oracle scores reach AP 100."""
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.syspath_prepend(os.path.join(repo_root, "tools", "benchmarks"))
    import score_oracle

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
