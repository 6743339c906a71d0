"""Kill training (SIGKILL) between checkpoints, --resume, and end where an uninterrupted run
ends: same iteration, weights, optimizer state, learning rate and data order."""

import itertools
import subprocess
import time

import pytest
import torch
from training_utils import (
    REPO_ROOT,
    run_train_net,
    subprocess_env,
    tiny_training_config,
    train_net_command,
)

from grouppose.engine import Trainer

MAX_ITER, PERIOD = 12, 4
OPTS = ["SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.CHECKPOINT_PERIOD", str(PERIOD),
        "SOLVER.STEPS", "(6,)", "DATASETS.TEST", "()", "TEST.EVAL_PERIOD", "0"]
# Detectron2 names a checkpoint after the iteration that just finished.
FIRST_CHECKPOINT = f"model_{PERIOD - 1:07d}.pth"


def kill_after_first_checkpoint(data_root, output_dir, timeout=300.0) -> None:
    """Start training, SIGKILL it as soon as its first periodic checkpoint is complete
    (``last_checkpoint`` names it), and check it was still running then."""
    process = subprocess.Popen(
        train_net_command(data_root, output_dir, opts=OPTS), env=subprocess_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO_ROOT,
    )
    tag = output_dir / "last_checkpoint"
    deadline = time.monotonic() + timeout
    try:
        while not (tag.is_file() and tag.read_text().strip() == FIRST_CHECKPOINT):
            if process.poll() is not None:
                pytest.fail(f"training exited ({process.returncode}) before its first checkpoint")
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint within the timeout")
            time.sleep(0.02)
        process.kill()
    finally:
        process.kill()
        returncode = process.wait()
    assert returncode == -9, "training finished before it could be killed"
    assert not (output_dir / "model_final.pth").exists()


def load_checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_same_tensors(a, b, what, rtol=1e-4, atol=1e-6):
    assert a.keys() == b.keys(), what
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=rtol, atol=atol, msg=f"{what} {key}")


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    data_root = tmp_path / "data"
    run_train_net(data_root, tmp_path / "straight", opts=OPTS)
    kill_after_first_checkpoint(data_root, tmp_path / "killed")
    output = run_train_net(data_root, tmp_path / "killed", args=["--resume"], opts=OPTS)
    assert f"Starting training from iteration {PERIOD}" in output

    straight = load_checkpoint(tmp_path / "straight" / "model_final.pth")
    resumed = load_checkpoint(tmp_path / "killed" / "model_final.pth")
    assert straight["iteration"] == resumed["iteration"] == MAX_ITER - 1
    trainer_states = straight["trainer"], resumed["trainer"]
    assert trainer_states[0]["data_seed"] == trainer_states[1]["data_seed"]
    schedulers = [s["hooks"]["LRScheduler"] for s in trainer_states]
    assert schedulers[0] == schedulers[1]
    assert schedulers[0]["last_epoch"] == MAX_ITER
    optimizers = [s["_trainer"]["optimizer"] for s in trainer_states]
    # the learning rates after the drop at SOLVER.STEPS: base lr and backbone x 1.0, sampling
    # offsets x 0.1, all x 0.1
    for groups in (optimizers[0]["param_groups"], optimizers[1]["param_groups"]):
        assert sorted({round(g["lr"], 12) for g in groups}) == [3e-6, 3e-5]
    for index, state in optimizers[0]["state"].items():
        assert state["step"] == optimizers[1]["state"][index]["step"] == MAX_ITER
        assert_same_tensors(state, optimizers[1]["state"][index], f"optimizer state {index}")
    # same weights: the resumed run saw the same batches with the same augmentations
    assert_same_tensors(straight["model"], resumed["model"], "weights")


def test_batches_depend_only_on_seed_and_iteration(tmp_path):
    """Same images and augmentations (random resize and crop, flip) with 0 or 2 data-loader
    workers, and when the stream starts later (as after --resume)."""
    cfg = tiny_training_config(tmp_path / "data", tmp_path / "out", [
        "INPUT.MIN_SIZE_TRAIN", "(96, 112, 128)", "INPUT.CROP.ENABLED", "True",
        "INPUT.CROP.SIZE", "(64, 128)",
    ])

    def batches(num_workers: int, start_iter: int, count: int):
        cfg.DATALOADER.NUM_WORKERS = num_workers
        loader = Trainer.build_train_loader(cfg)
        loader.start_iter = start_iter
        return list(itertools.islice(loader, count))

    reference = batches(num_workers=0, start_iter=0, count=4)
    sizes = {tuple(x["image"].shape) for batch in reference for x in batch}
    assert len(sizes) > 1  # the augmentations are random
    for start_iter, num_workers in ((0, 2), (2, 0), (2, 2)):
        for expected, batch in zip(reference[start_iter:],
                                   batches(num_workers, start_iter, 4 - start_iter)):
            assert [x["file_name"] for x in batch] == [x["file_name"] for x in expected]
            for x, y in zip(batch, expected):
                assert torch.equal(x["image"], y["image"])
                assert torch.equal(x["instances"].gt_keypoints.tensor,
                                   y["instances"].gt_keypoints.tensor)
