#!/usr/bin/env python
"""How much keypoint AP do a model's scores cost? Re-rank its detections with oracle scores.

    python tools/benchmarks/score_oracle.py \\
        output/learn_synthetic/inference/synthetic_val/coco_instances_results.json \\
        datasets/synthetic_pose_small/val/annotations.json

Prints keypoint AP / AP50 / AP75 of the detections as they are, and with oracle scores: in each
image, ground-truth people and detections are paired greedily by OKS (best pairs first), each
paired detection is scored by its OKS and ranks above every unpaired one (duplicates and false
detections, which keep their own order). The keypoints are not touched, so the gap is what
scoring and duplicate removal cost, and the oracle AP is what the predicted keypoints are worth
with perfect ones. A diagnostic for the NMS-free model, not part of it.
"""

import argparse
import contextlib
import io
import json
from typing import Dict, List, Optional, Tuple

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

Detection = Dict  # a COCO keypoint result: image_id, category_id, keypoints, score
METRICS = ("AP", "AP50", "AP75")


def keypoint_eval(ground_truth: COCO, detections: List[Detection]) -> COCOeval:
    """pycocotools' keypoint evaluation of ``detections`` (quietly)."""
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(detections), "keypoints")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation


def oracle_scores(oks: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Scores that rank greedily OKS-paired detections first, by their OKS.

    Args:
        oks: (D, G) OKS of each detection with each ground-truth person of one image.
        scores: (D,) the detections' own scores, in [0, 1].
    Returns:
        (D,) paired detections get 1 + OKS, the others keep their score (so rank below).
    """
    ranked = scores.astype(np.float64).copy()
    paired_detections, paired_people = set(), set()
    for flat in np.argsort(-oks, axis=None, kind="stable"):
        detection, person = np.unravel_index(flat, oks.shape)
        if detection in paired_detections or person in paired_people:
            continue
        paired_detections.add(detection)
        paired_people.add(person)
        ranked[detection] = 1.0 + oks[detection, person]
    return ranked


def rescore_with_oracle(evaluation: COCOeval) -> List[Detection]:
    """The evaluated detections with ``oracle_scores``, per image, from the OKS matrices that
    ``evaluation.evaluate()`` computed (detections sorted by score, at most maxDets of them)."""
    max_detections = evaluation.params.maxDets[-1]
    rescored = []
    for (image_id, category_id), oks in evaluation.ious.items():
        detections = evaluation._dts[image_id, category_id]
        if not detections:
            continue
        order = np.argsort([-d["score"] for d in detections], kind="mergesort")[:max_detections]
        detections = [detections[i] for i in order]
        oks = np.asarray(oks).reshape(len(detections), -1)
        scores = oracle_scores(oks, np.array([d["score"] for d in detections]))
        for detection, score in zip(detections, scores):
            rescored.append({"image_id": image_id, "category_id": category_id,
                             "keypoints": detection["keypoints"], "score": float(score)})
    return rescored


def as_is_and_oracle(annotations_file: str,
                     detections: List[Detection]) -> Tuple[Dict[str, float], Dict[str, float]]:
    """AP / AP50 / AP75 (percent) of ``detections`` as they are and with oracle scores."""
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(annotations_file)
    as_is = keypoint_eval(ground_truth, detections)
    oracle = keypoint_eval(ground_truth, rescore_with_oracle(as_is))
    return tuple(
        {name: 100.0 * float(value) for name, value in zip(METRICS, evaluation.stats[:3])}
        for evaluation in (as_is, oracle)
    )


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="coco_instances_results.json of a COCO evaluation")
    parser.add_argument("annotations", help="the ground truth, COCO keypoint json")
    args = parser.parse_args(argv)
    with open(args.results) as f:
        detections = json.load(f)
    for label, stats in zip(("as is", "oracle scores"),
                            as_is_and_oracle(args.annotations, detections)):
        print(f"{label:>13}: " + "  ".join(f"{name} {stats[name]:.1f}" for name in METRICS))


if __name__ == "__main__":
    main()
