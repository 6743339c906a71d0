"""train_net.py end to end on a tiny generated dataset: training lowers the loss, evaluation
runs during training and with --eval-only, and a non-finite loss stops training cleanly."""

import csv
import json
import math

import pytest
import torch
from helpers.training_utils import (
    FAST_OPTS,
    TINY_CONFIG,
    register_tiny_datasets,
    run_train_net,
    tiny_training_config,
)

from grouppose.engine import NonFiniteLossError, Trainer

MAX_ITER = 40  # PeriodicWriter logs every 20 iterations: two smoothed loss values


def read_metrics(output_dir):
    with open(output_dir / "metrics.json") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data root, output dir, output) of one tiny training run with a final evaluation."""
    root = tmp_path_factory.mktemp("train_net")
    data_root, output_dir = root / "data", root / "train"
    output = run_train_net(data_root, output_dir, opts=["SOLVER.MAX_ITER", str(MAX_ITER)])
    return data_root, output_dir, output


def test_training_lowers_the_loss_and_logs_every_term(trained):
    _, output_dir, output = trained
    records = read_metrics(output_dir)
    losses = [r for r in records if "total_loss" in r]
    assert [r["iteration"] for r in losses] == [19, 39]
    # smoothed (median over 20 iterations) total loss of iterations 20-39 < 0-19
    assert losses[1]["total_loss"] < 0.9 * losses[0]["total_loss"]
    for suffix in ("", "_0", "_interm"):  # final layer, auxiliary layer 0, encoder
        for term in ("loss_cls", "loss_keypoints", "loss_oks"):
            assert term + suffix in losses[0]
    assert losses[0]["lr"] == pytest.approx(3e-4)
    assert "eta:" in output  # CommonMetricPrinter's progress line
    assert (output_dir / "model_final.pth").is_file()
    assert list(output_dir.glob("events.out.tfevents.*"))  # TensorBoard


def test_evaluation_runs_after_training(trained):
    _, output_dir, output = trained
    final = read_metrics(output_dir)[-1]
    assert final["iteration"] == MAX_ITER
    assert 0.0 <= final["keypoints/AP"] <= 100.0
    assert "Evaluation results for tiny_synthetic_val" in output


def test_eval_only_evaluates_the_given_weights(trained, tmp_path):
    data_root, train_dir, _ = trained
    weights = train_dir / "model_final.pth"
    output = run_train_net(data_root, tmp_path, args=["--eval-only"],
                           opts=["MODEL.WEIGHTS", str(weights)])
    assert "Evaluation results for tiny_synthetic_val" in output
    assert not (tmp_path / "model_final.pth").exists()  # no training
    predictions = [
        json.loads((d / "inference" / "tiny_synthetic_val" / "coco_instances_results.json")
                   .read_text())
        for d in (train_dir, tmp_path)
    ]
    assert len(predictions[0]) == len(predictions[1]) > 0
    for during_training, eval_only in zip(*predictions):
        assert during_training["image_id"] == eval_only["image_id"]
        assert during_training["score"] == pytest.approx(eval_only["score"], abs=1e-4)
        assert during_training["keypoints"] == pytest.approx(eval_only["keypoints"], abs=1e-2)


def test_non_finite_loss_stops_training_before_the_step(tmp_path):
    cfg = tiny_training_config(tmp_path / "data", tmp_path / "out",
                               ["SOLVER.MAX_ITER", "5", "DATASETS.TEST", "()"])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    criterion = trainer.model.criterion
    compute_losses = criterion.forward

    def nan_from_iteration_2(outputs, targets):
        losses = compute_losses(outputs, targets)
        if trainer.iter >= 2:
            losses["loss_oks_0"] = losses["loss_oks_0"] * math.nan
        return losses

    criterion.forward = nan_from_iteration_2
    with pytest.raises(NonFiniteLossError, match=r"iteration 2: loss_oks_0 = nan"):
        trainer.train()
    # the NaN gradients of iteration 2 were never applied
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_real_divergence_stops_with_the_diverged_outputs_named(tmp_path):
    """A learning rate far too high without clipping (as `SOLVER.BASE_LR 0.5` on the tiny config)
    makes the weights NaN within a few steps: training stops naming the iteration and outputs,
    before scipy's Hungarian matching fails on NaN costs."""
    cfg = tiny_training_config(tmp_path / "data", tmp_path / "out", [
        "SOLVER.MAX_ITER", "20", "DATASETS.TEST", "()", "SOLVER.BASE_LR", "1e3",
        "SOLVER.CLIP_GRADIENTS.ENABLED", "False",
    ])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    with pytest.raises(FloatingPointError, match=(
        r"^Non-finite predictions at iteration \d+: the last decoder layer's outputs "
        r"\(pred_logits has \d+ of 40 values NaN/inf, pred_keypoints has \d+ of \d+ values"
    )):
        trainer.train()


def test_learning_benchmark_writes_curve_and_drawings(tmp_path):
    from tools.benchmarks import learn_synthetic

    register_tiny_datasets(tmp_path / "data")
    output_dir = tmp_path / "benchmark"
    argv = ["--config-file", str(TINY_CONFIG), "--output-dir", str(output_dir),
            "--threads", str(torch.get_num_threads()),
            "--max-iter", "6", "--eval-period", "3", "--draw", "2", "--draw-threshold", "0",
            *FAST_OPTS]
    assert learn_synthetic.main(argv) == 0
    with open(output_dir / "learning_curve.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [3, 6]
    assert 0 < float(rows[0]["minutes"]) < float(rows[1]["minutes"])
    table = (output_dir / "learning_curve.md").read_text()
    assert "| 6 |" in table and "AP >= 50" in table
    assert (output_dir / "learning_curve.png").stat().st_size > 0
    assert len(list((output_dir / "predictions").glob("*.png"))) == 2
