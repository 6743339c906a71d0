#!/usr/bin/env python
"""Accuracy of every inference mode against the reference: per-pose OKS and keypoint AP.

    python tools/benchmarks/check_inference_modes.py \
        --config-file configs/Synthetic/grouppose_tiny.yaml \
        --weights output/learn_synthetic/model_final.pth [--dataset synthetic_val] \
        [--modes fp32 bf16 fp16] [--top-k 20] [--threads 2] [--json FILE]

Runs the model on every image of a registered dataset in the reference mode (float32, the
pure-PyTorch deformable attention, no fused paths: as the official implementation computes) and
in each mode of ``--modes`` (see ``grouppose.evaluation.inference_modes``), then prints per mode
the keypoint AP (Detectron2's COCO evaluation), its change from the reference's, and how closely
the mode reproduces the reference's top poses of each image (``pose_agreement``: its
``--top-k`` best poses scoring at least ``--min-score``; the OKS of each with its counterpart:
the minimum, the 1st percentile, the median and the share of poses at OKS >= 0.99; the largest
change of a top pose's score). Exit status 1 when a mode misses the bounds (``--min-oks`` and
``--max-score-change`` for every top pose, ``--max-ap-change`` points). The AP bound judges only
a large set (the issue tracker's claim is made on synthetic_val's 550 top poses): on a few dozen
poses, one swap of two near-equal scores, which rounding differs on from one CPU to another,
moves AP by about 0.5 points.
"""

import argparse
import json
import sys
from typing import Dict, List, Optional

import grouppose  # noqa: F401  (first: it quiets a warning of Detectron2's imports)

# isort: split
import torch
from detectron2.evaluation import inference_context
from detectron2.modeling import build_model

from grouppose.checkpoint import add_trust_pickle_argument
from grouppose.engine import Trainer
from grouppose.evaluation import build_keypoint_evaluator, keypoint_oks_sigmas
from grouppose.evaluation.inference_modes import (
    REFERENCE_MODE,
    PoseAgreement,
    check_mode,
    inference_mode,
    pose_agreement,
)
from grouppose.modeling.oks import as_sigmas
from grouppose.predictor import build_inference_config, load_trained_weights

# The agreement the issue tracker holds every fast mode to.
MIN_OKS = 0.99
MAX_AP_CHANGE = 0.3  # AP points (Detectron2 reports AP in percent)
# A kept pose's score on [0, 1]: bf16's 8-bit mantissa moves a logit by well under 0.1, which
# moves a sigmoid score by under 0.025 (its slope is at most 1/4); twice that is the bound.
MAX_SCORE_CHANGE = 0.05
# Top poses are those a user keeps (the demo draws poses from 0.3); lower ones are background
# hypotheses whose order is noise, judged by the AP bound instead.
MIN_SCORE = 0.3


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--weights", required=True, help="trained Group Pose checkpoint")
    parser.add_argument("--dataset", default="synthetic_val", help="registered dataset name")
    parser.add_argument("--modes", nargs="+", default=["fp32", "bf16"],
                        help="modes compared with the reference (default: %(default)s)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--top-k", type=int, default=20, help="best poses compared per image")
    parser.add_argument("--min-score", type=float, default=MIN_SCORE,
                        help="the reference's top poses score at least this "
                             "(default: %(default)s)")
    parser.add_argument("--min-oks", type=float, default=MIN_OKS)
    parser.add_argument("--max-score-change", type=float, default=MAX_SCORE_CHANGE)
    parser.add_argument("--max-ap-change", type=float, default=MAX_AP_CHANGE)
    parser.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--json", metavar="FILE", help="also write the results to FILE")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER,
                        help="config overrides: KEY VALUE pairs")
    add_trust_pickle_argument(parser)
    return parser


def compare_modes(model, data_loader, evaluators: Dict, sigmas: torch.Tensor, top_k: int,
                  min_score: float) -> Dict[str, PoseAgreement]:
    """Runs every mode of ``evaluators`` (the reference first) on each batch, feeds each mode's
    evaluator and returns, per mode other than the reference, the OKS and score change of every
    top pose (see ``pose_agreement``)."""
    agreement: Dict[str, List[PoseAgreement]] = {
        name: [] for name in evaluators if name != REFERENCE_MODE
    }
    for evaluator in evaluators.values():
        evaluator.reset()
    with inference_context(model), torch.no_grad():
        for inputs in data_loader:
            outputs = {}
            for name in evaluators:
                with inference_mode(model, name):
                    outputs[name] = model(inputs)
            for name in agreement:
                for reference, other in zip(outputs[REFERENCE_MODE], outputs[name]):
                    agreement[name].append(pose_agreement(
                        reference["instances"].to("cpu"), other["instances"].to("cpu"),
                        sigmas, top_k, min_score,
                    ))
            # Last: Detectron2's COCOEvaluator shifts the predicted keypoints in place.
            for name, evaluator in evaluators.items():
                evaluator.process(inputs, outputs[name])
    return {
        name: PoseAgreement(*(torch.cat(values) for values in zip(*per_image)))
        if per_image else PoseAgreement(torch.zeros(0), torch.zeros(0))
        for name, per_image in agreement.items()
    }


def summarize(name: str, ap: float, reference_ap: float,
              agreement: Optional[PoseAgreement]) -> Dict:
    result = {"mode": name, "AP": ap, "AP change": ap - reference_ap}
    if agreement is None:  # the reference itself
        return result
    values = agreement.oks
    result["poses"] = len(values)
    if len(values):
        result.update({
            "min OKS": values.min().item(),
            "OKS 1st percentile": values.quantile(0.01).item(),
            "median OKS": values.median().item(),
            "share at OKS >= 0.99": (values >= 0.99).float().mean().item(),
            "max score change": agreement.score_change.max().item(),
        })
    return result


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = build_inference_config(args.config_file, args.weights, args.device, args.opts)
    model = build_model(cfg)
    load_trained_weights(model, cfg.MODEL.WEIGHTS, trust_pickle=args.trust_pickle)
    modes = [REFERENCE_MODE, *(name for name in args.modes if name != REFERENCE_MODE)]
    for name in modes:
        try:
            check_mode(name, model.device)
        except ValueError as error:
            raise SystemExit(f"--modes: {error}") from None
    evaluators = {name: build_keypoint_evaluator(cfg, args.dataset) for name in modes}
    sigmas = as_sigmas(keypoint_oks_sigmas(cfg, args.dataset))
    data_loader = Trainer.build_test_loader(cfg, args.dataset)
    agreement = compare_modes(model, data_loader, evaluators, sigmas, args.top_k,
                              args.min_score)
    ap = {name: evaluators[name].evaluate()["keypoints"]["AP"] for name in modes}
    results = [summarize(name, ap[name], ap[REFERENCE_MODE], agreement.get(name))
               for name in modes]

    print(f"\n{args.dataset}, {args.weights}, the reference's top {args.top_k} poses per image "
          f"scoring >= {args.min_score}, {torch.get_num_threads()} threads:")
    print("| mode | keypoint AP | change (points) | min OKS | 1st percentile | median "
          "| share at OKS >= 0.99 | max score change |")
    print("| --- " * 8 + "|")
    failed = []
    for r in results:
        if r["mode"] == REFERENCE_MODE:
            print(f"| {r['mode']} | {r['AP']:.2f} | | | | | | |")
            continue
        if r["poses"]:
            agreement = (f"{r['min OKS']:.4f} | {r['OKS 1st percentile']:.4f} "
                         f"| {r['median OKS']:.4f} | {r['share at OKS >= 0.99']:.1%} "
                         f"| {r['max score change']:.4f}")
        else:  # the reference scored no pose >= --min-score: only the AP bound applies
            agreement = "no top poses | | | |"
        print(f"| {r['mode']} | {r['AP']:.2f} | {r['AP change']:+.2f} | {agreement} |")
        if (r["poses"] and (r["min OKS"] < args.min_oks
                            or r["max score change"] > args.max_score_change)) or (
            abs(r["AP change"]) > args.max_ap_change
        ):
            failed.append(r["mode"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if failed:
        print(f"\nout of bounds (min OKS >= {args.min_oks}, max score change <= "
              f"{args.max_score_change}, |AP change| <= {args.max_ap_change}): "
              f"{', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
