#!/usr/bin/env python
"""How well a model's keypoint scores tell visible keypoints from the others, on a val split.

    python tools/benchmarks/eval_keypoint_confidence.py \\
        --config-file output/learn_synthetic/config.yaml \\
        --weights output/learn_synthetic/model_final.pth [--json FILE]

Runs the model (GroupPosePredictor) on every image of ``--dataset`` (default the config's
DATASETS.TEST[0], e.g. the generated synthetic_val, whose visibility labels are exact). Each
person of the ground truth (not crowd, at least one labeled keypoint) is matched to the
highest-scoring unmatched prediction with score > ``--min-score`` and OKS >= ``--min-oks``
(predictions taken best first, COCO-style greedy matching). Every keypoint of a matched person is
one sample: its predicted keypoint score (``pred_keypoints[..., 2]``) against its label, positive
when visible (v = 2), negative when occluded (v = 1) or unlabeled (v = 0) - the target of
MODEL.GROUP_POSE.KEYPOINT_CONFIDENCE (grouppose.modeling.keypoint_confidence). Prints the AUROC
of visible vs not visible (and vs occluded, vs unlabeled alone), the mean score per v and the
matched people. A model without the head scores every keypoint sigmoid(1): AUROC 0.5.
"""

import argparse
import json
import sys
from typing import Dict, List, Optional, Tuple

import grouppose  # noqa: F401  (first: it quiets a warning of Detectron2's imports; registers)

# isort: split
import numpy as np
import torch
from detectron2.data import DatasetCatalog

from grouppose.checkpoint import add_trust_pickle_argument
from grouppose.data.keypoint_json import person_area
from grouppose.modeling.criterion import resolve_oks_sigmas
from grouppose.modeling.oks import pairwise_keypoint_similarity
from grouppose.predictor import GroupPosePredictor

VISIBLE = 2


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` (n,) for the bool labels ``positive`` (n,): the
    probability that a random positive scores above a random negative, ties counting half
    (Mann-Whitney U with average ranks). NaN without positives or negatives."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    num_pos, num_neg = int(positive.sum()), int((~positive).sum())
    if num_pos == 0 or num_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores))
    # Average 1-based rank of each run of equal scores.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + 1 + end) / 2
    u = ranks[positive].sum() - num_pos * (num_pos + 1) / 2
    return float(u / (num_pos * num_neg))


def match_people(
    pred_keypoints: np.ndarray, pred_scores: np.ndarray, gt_keypoints: np.ndarray,
    gt_areas: np.ndarray, sigmas: torch.Tensor, min_score: float, min_oks: float,
) -> List[Tuple[int, int]]:
    """(prediction, person) pairs of one image: each prediction scoring above ``min_score``,
    best first, takes the unmatched person of highest OKS if that is >= ``min_oks``.
    pred_keypoints (P, K, 3), pred_scores (P,) best first, gt_keypoints (G, K, 3) (v > 0:
    labeled, the keypoints OKS compares), gt_areas (G,)."""
    keep = np.flatnonzero(pred_scores > min_score)
    if len(keep) == 0 or len(gt_keypoints) == 0:
        return []
    oks = pairwise_keypoint_similarity(
        torch.from_numpy(pred_keypoints[keep, :, :2]).double(),
        torch.from_numpy(gt_keypoints[..., :2]).double(),
        torch.from_numpy(gt_keypoints[..., 2] > 0), torch.from_numpy(gt_areas).double(),
        sigmas.double(),
    ).numpy()
    pairs, taken = [], np.zeros(len(gt_keypoints), dtype=bool)
    for row, prediction in enumerate(keep):
        candidates = np.where(taken, -1.0, oks[row])
        person = int(candidates.argmax())
        if candidates[person] >= min_oks:
            taken[person] = True
            pairs.append((int(prediction), person))
    return pairs


def ground_truth(record: Dict, num_keypoints: int) -> Tuple[np.ndarray, np.ndarray]:
    """(G, K, 3) keypoints and (G,) areas of a dataset dict's people that are not crowd and have
    a labeled keypoint."""
    people, areas = [], []
    for annotation in record.get("annotations", []):
        keypoints = np.asarray(annotation.get("keypoints", []), dtype=np.float64)
        if annotation.get("iscrowd", 0) or keypoints.size != 3 * num_keypoints:
            continue
        keypoints = keypoints.reshape(num_keypoints, 3)
        area = person_area(annotation)
        if (keypoints[:, 2] > 0).any() and area:
            people.append(keypoints)
            areas.append(area)
    return (np.stack(people) if people else np.zeros((0, num_keypoints, 3)),
            np.asarray(areas, dtype=np.float64))


def evaluate(predictor: GroupPosePredictor, dataset: str, min_score: float,
             min_oks: float) -> Dict:
    """Keypoint samples of every matched person of ``dataset`` -> the figures (see the module
    docstring)."""
    cfg = predictor.cfg
    num_keypoints = cfg.MODEL.GROUP_POSE.NUM_KEYPOINTS
    sigmas = resolve_oks_sigmas(cfg)
    scores, labels = [], []
    num_people = num_matched = 0
    for record in DatasetCatalog.get(dataset):
        gt_keypoints, gt_areas = ground_truth(record, num_keypoints)
        poses = predictor(record["file_name"])
        pairs = match_people(poses.keypoints.astype(np.float64), poses.scores, gt_keypoints,
                             gt_areas, sigmas, min_score, min_oks)
        num_people += len(gt_keypoints)
        num_matched += len(pairs)
        for prediction, person in pairs:
            scores.append(poses.keypoints[prediction, :, 2])
            labels.append(gt_keypoints[person, :, 2])
    scores = np.concatenate(scores) if scores else np.zeros(0)
    labels = np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)
    visible = labels == VISIBLE
    figures = {
        "dataset": dataset, "people": num_people, "matched_people": num_matched,
        "keypoints": {f"v={v}": int((labels == v).sum()) for v in (0, 1, 2)},
        "auroc_visible_vs_not": auroc(scores, visible),
        "auroc_visible_vs_occluded": auroc(scores[labels > 0], visible[labels > 0]),
        "auroc_visible_vs_unlabeled": auroc(scores[labels != 1], visible[labels != 1]),
        "mean_score": {f"v={v}": float(scores[labels == v].mean()) if (labels == v).any()
                       else float("nan") for v in (0, 1, 2)},
    }
    return figures


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True, help="the trained model (MODEL.WEIGHTS)")
    parser.add_argument("--dataset", help="registered dataset (default DATASETS.TEST[0])")
    parser.add_argument("--min-score", type=float, default=0.0,
                        help="predictions must score above this to be matched (default any: "
                        "person scores are AP's business, this judges keypoint scores)")
    parser.add_argument("--min-oks", type=float, default=0.5,
                        help="a prediction matches a person with at least this OKS")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    add_trust_pickle_argument(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config KEY VALUE overrides")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    predictor = GroupPosePredictor(args.config_file, args.weights, device="cpu", opts=args.opts,
                                   trust_pickle=args.trust_pickle)
    dataset = args.dataset or predictor.cfg.DATASETS.TEST[0]
    figures = evaluate(predictor, dataset, args.min_score, args.min_oks)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
