#!/usr/bin/env python
"""Learning benchmark: train the tiny Group Pose from scratch on the generated dataset, on CPU.

    python tools/benchmarks/learn_synthetic.py                      # the benchmark (~30 min)
    python tools/benchmarks/learn_synthetic.py --max-iter 300 --eval-period 300 --draw 4  # demo

Trains configs/Synthetic/grouppose_tiny.yaml (synthetic_train, 2000 images, generated under
$DETECTRON2_DATASETS on first use) with ``--threads`` CPU threads, evaluates keypoint AP on
the held-out synthetic_val (200 images) every ``--eval-period`` iterations and at the end, and
writes to ``--output-dir``:
    learning_curve.csv / learning_curve.md   iteration, training minutes, AP, AP50, AP75
    learning_curve.png                       AP and AP50 against training minutes
    predictions/*.png                        ``--draw`` validation images with predicted poses
Training minutes count the training steps only (Detectron2's per-iteration "time"), not the
evaluations. Trailing KEY VALUE pairs override the config.
"""

import argparse
import csv
import logging
import os
import sys
from typing import Dict, List, Optional

import grouppose  # noqa: F401  (first: it quiets a warning of Detectron2's imports)

# isort: split
import cv2
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.engine import HookBase, hooks
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from grouppose.checkpoint import add_trust_pickle_argument
from grouppose.config import get_grouppose_cfg
from grouppose.engine import Trainer
from grouppose.visualization import draw_poses

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "Synthetic", "grouppose_tiny.yaml")
METRICS = ("AP", "AP50", "AP75")
TARGET_AP = 50.0  # Detectron2 reports AP in percent: the target is 0.5

logger = logging.getLogger("learn_synthetic")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--output-dir", default=os.path.join("output", "learn_synthetic"))
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    parser.add_argument("--device", default="cpu", help="MODEL.DEVICE (the benchmark is CPU)")
    parser.add_argument("--max-iter", type=int, help="override SOLVER.MAX_ITER (and scale "
                        "SOLVER.STEPS with it)")
    parser.add_argument("--eval-period", type=int, help="override TEST.EVAL_PERIOD")
    parser.add_argument("--draw", type=int, default=0, metavar="N",
                        help="draw the predictions on the first N validation images")
    parser.add_argument("--draw-threshold", type=float, default=0.3,
                        help="draw poses scoring above this")
    add_trust_pickle_argument(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config KEY VALUE overrides")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> CfgNode:
    cfg = get_grouppose_cfg(args.config_file, args.opts)
    if args.max_iter is not None:
        if args.max_iter <= 0:
            raise ValueError(f"--max-iter must be positive, got {args.max_iter}")
        scale = args.max_iter / cfg.SOLVER.MAX_ITER
        cfg.SOLVER.STEPS = tuple(int(round(step * scale)) for step in cfg.SOLVER.STEPS)
        cfg.SOLVER.MAX_ITER = args.max_iter
    if args.eval_period is not None:
        cfg.TEST.EVAL_PERIOD = args.eval_period
    if not len(cfg.DATASETS.TEST):
        raise ValueError("DATASETS.TEST must name the held-out dataset to evaluate on")
    cfg.OUTPUT_DIR = args.output_dir
    cfg.MODEL.DEVICE = args.device
    cfg.freeze()
    return cfg


class LearningCurve(HookBase):
    """Records (iteration, training minutes, AP...) after each evaluation of the EvalHook,
    which must run before it."""

    def __init__(self):
        self.rows: List[Dict[str, float]] = []

    def _record(self, iterations_done: int) -> None:
        storage = self.trainer.storage
        latest = storage.latest()
        if "keypoints/AP" not in latest or latest["keypoints/AP"][1] != storage.iter:
            return  # no evaluation at this iteration
        seconds = sum(value for value, _ in storage.history("time").values())
        row = {"iteration": iterations_done, "minutes": seconds / 60.0}
        row.update({m: float(latest[f"keypoints/{m}"][0]) for m in METRICS})
        self.rows.append(row)
        logger.info("learning curve: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()))

    def after_step(self) -> None:
        self._record(iterations_done=self.trainer.iter + 1)

    def after_train(self) -> None:
        # Detectron2 evaluates after the last iteration here, with storage.iter = MAX_ITER
        self._record(iterations_done=self.trainer.iter)


class BenchmarkTrainer(Trainer):
    """The Trainer with a LearningCurve hook after its evaluation hook."""

    def build_hooks(self) -> List[HookBase]:
        self.learning_curve = LearningCurve()
        ret = super().build_hooks()
        after_eval = next(i for i, h in enumerate(ret) if isinstance(h, hooks.EvalHook)) + 1
        return ret[:after_eval] + [self.learning_curve] + ret[after_eval:]


def write_learning_curve(rows: List[Dict[str, float]], output_dir: str) -> str:
    """Write the CSV, markdown table and PNG plot; returns the markdown."""
    with open(os.path.join(output_dir, "learning_curve.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["iteration", "minutes", *METRICS])
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| iteration | training minutes | " + " | ".join(METRICS) + " |",
             "|---:|---:|" + "---:|" * len(METRICS)]
    for row in rows:
        lines.append(f"| {row['iteration']} | {row['minutes']:.1f} | "
                     + " | ".join(f"{row[m]:.1f}" for m in METRICS) + " |")
    reached = next((row for row in rows if row["AP"] >= TARGET_AP), None)
    lines.append("")
    lines.append(
        f"AP >= {TARGET_AP:g} first reached at iteration {reached['iteration']} after "
        f"{reached['minutes']:.1f} training minutes." if reached
        else f"AP >= {TARGET_AP:g} not reached (best {max(r['AP'] for r in rows):.1f})."
    )
    markdown = "\n".join(lines) + "\n"
    with open(os.path.join(output_dir, "learning_curve.md"), "w") as f:
        f.write(markdown)

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    minutes = [row["minutes"] for row in rows]
    for metric in ("AP", "AP50"):
        axes.plot(minutes, [row[metric] for row in rows], marker="o", label=metric)
    axes.axhline(TARGET_AP, color="gray", linestyle="--", linewidth=1, label="target AP")
    axes.set_xlabel("training minutes (CPU)")
    axes.set_ylabel("keypoint AP on synthetic_val (%)")
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(os.path.join(output_dir, "learning_curve.png"), dpi=120)
    plt.close(figure)
    return markdown


def draw_predictions(cfg: CfgNode, model: torch.nn.Module, count: int, threshold: float,
                     output_dir: str) -> List[str]:
    """Draw the poses scoring above ``threshold`` on the first ``count`` images of
    DATASETS.TEST[0]; returns the written files."""
    dataset_name = cfg.DATASETS.TEST[0]
    metadata = MetadataCatalog.get(dataset_name)
    os.makedirs(output_dir, exist_ok=True)
    written = []
    model.eval()
    with torch.no_grad():
        for inputs in Trainer.build_test_loader(cfg, dataset_name):
            if len(written) == count:
                break
            instances = model(inputs)[0]["instances"].to("cpu")
            instances = instances[instances.scores > threshold]
            image = cv2.imread(inputs[0]["file_name"])
            path = os.path.join(output_dir, os.path.basename(inputs[0]["file_name"]))
            path = os.path.splitext(path)[0] + ".png"
            cv2.imwrite(path, draw_poses(image, instances, metadata))
            written.append(path)
    return written


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = build_config(args)
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    setup_logger(cfg.OUTPUT_DIR)
    setup_logger(cfg.OUTPUT_DIR, name="learn_synthetic")
    with open(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED)
    trainer = BenchmarkTrainer(cfg, trust_pickle=args.trust_pickle)
    trainer.resume_or_load(resume=False)
    trainer.train()
    markdown = write_learning_curve(trainer.learning_curve.rows, cfg.OUTPUT_DIR)
    where = f"{args.threads} CPU threads" if args.device == "cpu" else args.device
    print(f"\nKeypoint AP on {cfg.DATASETS.TEST[0]} ({where}):\n\n{markdown}")
    if args.draw:
        written = draw_predictions(cfg, trainer.model, args.draw, args.draw_threshold,
                                   os.path.join(cfg.OUTPUT_DIR, "predictions"))
        print("Predictions drawn:\n" + "\n".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
