#!/usr/bin/env python
"""Plot the learning curves of several learn_synthetic.py runs side by side, and print tables.

    python tools/benchmarks/compare_learning_curves.py --output docs/ablations_self_attn.png \\
        group=output/ablations_learn/group standard=output/ablations_learn/standard

Each LABEL=DIR reads DIR/learning_curve.csv and DIR/metrics.json (written by
tools/benchmarks/learn_synthetic.py). The plot shows, against training iterations (the budget
every run gets equally; wall time depends on the load of the machine), the validation AP and the
training loss of the last decoder layer (loss_keypoints + loss_oks + loss_cls, weighted, averaged
over windows of LOSS_WINDOW iterations). The tables give every evaluation and those loss
averages.
"""

import argparse
import csv
import json
import os
import sys
from typing import Dict, List, Optional, Tuple

Curve = List[Dict[str, float]]
# The last decoder layer's weighted losses (what inference is made of).
FINAL_LOSSES = ("loss_cls", "loss_keypoints", "loss_oks")
LOSS_WINDOW = 100


class Run:
    """One run's evaluations and its training-loss averages per LOSS_WINDOW iterations."""

    def __init__(self, label: str, directory: str):
        self.label = label
        self.curve = read_curve(directory)
        self.losses = read_losses(directory)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", required=True, help="PNG to write")
    parser.add_argument("--title", default="Group Pose on synthetic_val", help="plot title")
    parser.add_argument("runs", nargs="+", metavar="LABEL=DIR")
    return parser.parse_args(argv)


def read_curve(directory: str) -> Curve:
    path = os.path.join(directory, "learning_curve.csv")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: not found (run tools/benchmarks/learn_synthetic.py first)")
    with open(path, newline="") as f:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(f)]


def read_losses(directory: str) -> List[Tuple[int, float]]:
    """(window end iteration, mean final-layer loss) from Detectron2's metrics.json, whose
    losses are already weighted (the model returns weighted losses)."""
    path = os.path.join(directory, "metrics.json")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: not found (run tools/benchmarks/learn_synthetic.py first)")
    windows: Dict[int, List[float]] = {}
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            if all(name in record for name in FINAL_LOSSES):
                window = int(record["iteration"]) // LOSS_WINDOW
                windows.setdefault(window, []).append(sum(record[n] for n in FINAL_LOSSES))
    return [((window + 1) * LOSS_WINDOW, sum(values) / len(values))
            for window, values in sorted(windows.items())]


def parse_runs(specs: List[str]) -> List[Run]:
    runs = []
    for spec in specs:
        label, sep, directory = spec.partition("=")
        if not sep or not label or not directory:
            raise ValueError(f"run '{spec}': expected LABEL=DIR")
        runs.append(Run(label, directory))
    return runs


def markdown_tables(runs: List[Run]) -> str:
    lines = ["| run | iteration | training minutes | AP | AP50 | AP75 |",
             "|---|---:|---:|---:|---:|---:|"]
    for run in runs:
        for row in run.curve:
            lines.append(f"| {run.label} | {row['iteration']:.0f} | {row['minutes']:.1f} | "
                         f"{row['AP']:.1f} | {row['AP50']:.1f} | {row['AP75']:.1f} |")
    windows = sorted({end for run in runs for end, _ in run.losses})
    lines += ["", f"Final-layer training loss (weighted, mean over {LOSS_WINDOW} iterations):", "",
              "| iterations up to | " + " | ".join(run.label for run in runs) + " |",
              "|---:|" + "---:|" * len(runs)]
    for end in windows:
        values = [dict(run.losses).get(end) for run in runs]
        lines.append(f"| {end} | " + " | ".join(
            "" if value is None else f"{value:.2f}" for value in values) + " |")
    return "\n".join(lines) + "\n"


def plot(runs: List[Run], output: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, (ap_axes, loss_axes) = plt.subplots(1, 2, figsize=(10, 4))
    for run in runs:
        ap_axes.plot([row["iteration"] for row in run.curve], [row["AP"] for row in run.curve],
                     marker="o", label=run.label)
        loss_axes.plot([end for end, _ in run.losses], [loss for _, loss in run.losses],
                       marker=".", label=run.label)
    ap_axes.set_ylabel("keypoint AP on synthetic_val (%)")
    loss_axes.set_ylabel(f"final-layer training loss (mean of {LOSS_WINDOW} it.)")
    for axes in (ap_axes, loss_axes):
        axes.set_xlabel("training iterations")
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(output, dpi=120)
    plt.close(figure)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        runs = parse_runs(args.runs)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    plot(runs, args.output, args.title)
    print(markdown_tables(runs))
    print(f"plot -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
