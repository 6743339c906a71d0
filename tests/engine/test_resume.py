"""Kill training (SIGKILL) between checkpoints, or stop it with SIGTERM between them or between
the micro-batches of an accumulated step, --resume, and end where an uninterrupted run ends:
same iteration, weights, optimizer state, learning rate and data order."""

import itertools
import signal
import subprocess
import textwrap
import time

import pytest
import torch
from helpers.training_utils import (
    REPO_ROOT,
    run_train_net,
    subprocess_env,
    tiny_training_config,
    train_net_command,
)

from grouppose.engine import Trainer
from grouppose.engine.preemption import PREEMPTED_EXIT_CODE

MAX_ITER, PERIOD = 12, 4
OPTS = ["SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.CHECKPOINT_PERIOD", str(PERIOD),
        "SOLVER.STEPS", "(6,)", "DATASETS.TEST", "()", "TEST.EVAL_PERIOD", "0"]
# Detectron2 names a checkpoint after the iteration that just finished.
FIRST_CHECKPOINT = f"model_{PERIOD - 1:07d}.pth"


def signal_after_first_checkpoint(data_root, output_dir, signum, timeout=300.0) -> int:
    """Start training, send it ``signum`` as soon as its first periodic checkpoint is complete
    (``last_checkpoint`` names it), check it was still running then; its exit status."""
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
        process.send_signal(signum)
        return process.wait(timeout=timeout)
    finally:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """The tiny datasets' folder and the final checkpoint of an uninterrupted run."""
    root = tmp_path_factory.mktemp("resume")
    run_train_net(root / "data", root / "straight", opts=OPTS)
    return root / "data", load_checkpoint(root / "straight" / "model_final.pth")


def load_checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_same_tensors(a, b, what, rtol=1e-4, atol=1e-6):
    assert a.keys() == b.keys(), what
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=rtol, atol=atol, msg=f"{what} {key}")


def test_sigkill_then_resume_matches_uninterrupted_run(straight_run, tmp_path):
    data_root, straight = straight_run
    assert signal_after_first_checkpoint(data_root, tmp_path / "killed", signal.SIGKILL) == -9, \
        "training finished before it could be killed"
    assert not (tmp_path / "killed" / "model_final.pth").exists()
    output = run_train_net(data_root, tmp_path / "killed", args=["--resume"], opts=OPTS)
    assert f"Starting training from iteration {PERIOD}" in output

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


def test_sigterm_checkpoints_the_step_and_resume_is_bitwise(straight_run, tmp_path):
    """SIGTERM during the step after the first checkpoint: that step finishes, is checkpointed
    (between the periodic checkpoints, unless the machine is too slow to signal in time) and
    the exit status says "preempted"; --resume ends with the uninterrupted run's weights and
    optimizer state, bit for bit (one thread: CPU results are reproducible)."""
    data_root, straight = straight_run
    output_dir = tmp_path / "stopped"
    assert signal_after_first_checkpoint(data_root, output_dir, signal.SIGTERM) == \
        PREEMPTED_EXIT_CODE
    stopped_at = int((output_dir / "last_checkpoint").read_text().strip()[len("model_"):-4])
    assert PERIOD <= stopped_at < MAX_ITER - 1
    checkpoint = load_checkpoint(output_dir / f"model_{stopped_at:07d}.pth")
    assert checkpoint["iteration"] == checkpoint["trainer"]["iteration"] == stopped_at
    log = (output_dir / "log.txt").read_text()
    assert f"received SIGTERM: saving iteration {stopped_at}" in log
    assert not (output_dir / "model_final.pth").exists()

    output = run_train_net(data_root, output_dir, args=["--resume"], opts=OPTS)
    assert f"Starting training from iteration {stopped_at + 1}" in output
    resumed = load_checkpoint(output_dir / "model_final.pth")
    assert resumed["iteration"] == straight["iteration"]
    assert resumed["model"].keys() == straight["model"].keys()
    for name, weight in straight["model"].items():
        assert torch.equal(resumed["model"][name], weight), name
    optimizers = [s["trainer"]["_trainer"]["optimizer"] for s in (straight, resumed)]
    for index, state in optimizers[0]["state"].items():
        for key, value in state.items():
            assert torch.equal(optimizers[1]["state"][index][key], value), (index, key)


# SOLVER.IMS_PER_BATCH 4 (FAST_OPTS) in micro-batches of 2 images: 2 forward passes per step.
ACCUMULATED = [*OPTS, "SOLVER.IMS_PER_DEVICE", "2"]
MICRO_BATCHES, STOP_STEP = 2, PERIOD + 1  # a step between the periodic checkpoints
# Run before train_net.py: the process sends itself SIGTERM as the second micro-batch of step
# STOP_STEP starts, i.e. after the first one's backward pass (a signal is handled by the main
# thread before its next Python instruction, so the moment is exact).
SIGTERM_BETWEEN_MICRO_BATCHES = textwrap.dedent(f"""
    import os
    import signal
    from grouppose.modeling.meta_arch import GroupPose

    training_passes, forward = [], GroupPose.forward

    def forward_then_signal(self, batched_inputs):
        if self.training:
            training_passes.append(len(batched_inputs))
            if len(training_passes) == {STOP_STEP * MICRO_BATCHES + 2}:
                os.kill(os.getpid(), signal.SIGTERM)
        return forward(self, batched_inputs)

    GroupPose.forward = forward_then_signal
""")


def test_sigterm_between_micro_batches_then_resume_is_bitwise(straight_run, tmp_path):
    """SIGTERM during an accumulated step, after its first micro-batch: the step's other
    micro-batch and the optimizer step run, the step is checkpointed, exit "preempted";
    --resume ends with the weights and optimizer state of an uninterrupted run with the same
    accumulation, bit for bit."""
    data_root, output_dir = straight_run[0], tmp_path / "stopped"
    stopped = subprocess.run(
        train_net_command(data_root, output_dir, opts=ACCUMULATED,
                          prelude=SIGTERM_BETWEEN_MICRO_BATCHES),
        env=subprocess_env(), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=300,
    )
    assert stopped.returncode == PREEMPTED_EXIT_CODE, stopped.stdout[-6000:]
    assert (output_dir / "last_checkpoint").read_text() == f"model_{STOP_STEP:07d}.pth"
    checkpoint = load_checkpoint(output_dir / f"model_{STOP_STEP:07d}.pth")
    assert checkpoint["iteration"] == STOP_STEP
    assert checkpoint["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == STOP_STEP + 1
    assert f"received SIGTERM: saving iteration {STOP_STEP}" in (output_dir / "log.txt").read_text()

    output = run_train_net(data_root, output_dir, args=["--resume"], opts=ACCUMULATED)
    assert f"Starting training from iteration {STOP_STEP + 1}" in output
    run_train_net(data_root, tmp_path / "straight", opts=ACCUMULATED)
    straight, resumed = (load_checkpoint(tmp_path / run / "model_final.pth")
                         for run in ("straight", "stopped"))
    assert resumed["iteration"] == straight["iteration"] == MAX_ITER - 1
    assert resumed["model"].keys() == straight["model"].keys()
    for name, weight in straight["model"].items():
        assert torch.equal(resumed["model"][name], weight), name
    optimizers = [s["trainer"]["_trainer"]["optimizer"] for s in (straight, resumed)]
    for index, state in optimizers[0]["state"].items():
        assert state["step"] == MAX_ITER
        for key, value in state.items():
            assert torch.equal(optimizers[1]["state"][index][key], value), (index, key)


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
