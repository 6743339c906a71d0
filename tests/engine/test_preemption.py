"""SIGTERM / SIGUSR1 / SIGINT: training finishes the step, checkpoints it and exits with
PREEMPTED_EXIT_CODE; further signals during the save change nothing; in a multi-process run
every process stops at the same step when one is signalled, the launcher relays signals, and
data-loader workers outlive them.
(Resuming after a SIGTERM ends bit for bit where an uninterrupted run ends: test_resume.py.)"""

import multiprocessing
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import weakref
from pathlib import Path

import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.engine import HookBase
from helpers.training_utils import (
    FAST_OPTS,
    REPO_ROOT,
    TINY_CONFIG,
    TRAIN_SET,
    subprocess_env,
    tiny_training_config,
)

from grouppose.engine import Trainer
from grouppose.engine.preemption import PREEMPTED_EXIT_CODE, STOP_SIGNALS

NO_EVAL = ["DATASETS.TEST", "()", "TEST.EVAL_PERIOD", "0", "SOLVER.CHECKPOINT_PERIOD", "1000"]



class SignalAt(HookBase):
    """Sends this process ``signum`` at the end of step ``iteration`` (before other hooks)."""

    def __init__(self, iteration: int, signum: int):
        self.iteration, self.signum = iteration, signum

    def after_step(self):
        if self.trainer.iter == self.iteration:
            os.kill(os.getpid(), self.signum)


@pytest.mark.usefixtures("restore_grouppose_logger", "one_cpu_thread")
def test_signals_during_the_save_do_not_corrupt_it(tmp_path, monkeypatch):
    cfg = tiny_training_config(tmp_path / "data", tmp_path / "out",
                               ["SOLVER.MAX_ITER", "20", *NO_EVAL])
    trainer = Trainer(cfg)
    hook = SignalAt(1, signal.SIGUSR1)
    hook.trainer = weakref.proxy(trainer)
    trainer._hooks.insert(0, hook)
    real_save = torch.save

    def save_under_fire(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # would be a KeyboardInterrupt mid-write
        os.kill(os.getpid(), signal.SIGTERM)
        return real_save(*args, **kwargs)

    monkeypatch.setattr(torch, "save", save_under_fire)
    previous_handlers = [signal.getsignal(s) for s in STOP_SIGNALS]
    with pytest.raises(SystemExit) as stop:
        trainer.train()
    assert stop.value.code == PREEMPTED_EXIT_CODE
    assert [signal.getsignal(s) for s in STOP_SIGNALS] == previous_handlers

    output_dir = tmp_path / "out"
    assert (output_dir / "last_checkpoint").read_text() == "model_0000001.pth"
    checkpoint = torch.load(output_dir / "model_0000001.pth", weights_only=False)
    assert checkpoint["iteration"] == 1
    assert checkpoint["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 2
    assert checkpoint["model"].keys() == trainer.model.state_dict().keys()
    assert "received SIGUSR1: saving iteration 1" in (output_dir / "log.txt").read_text()
    assert not list(output_dir.glob(".*.tmp"))


def test_data_loader_workers_outlive_the_signals(tmp_path):
    """A scheduler signals every process of the job: a data-loader worker killed by it would
    end the step in flight, so the workers ignore the signals."""
    cfg = tiny_training_config(tmp_path / "data", tmp_path / "out",
                               ["DATALOADER.NUM_WORKERS", "1"])
    batches = iter(Trainer.build_train_loader(cfg))
    next(batches)
    workers = multiprocessing.active_children()
    assert len(workers) == 1
    for signum in STOP_SIGNALS:
        os.kill(workers[0].pid, signum)
    time.sleep(0.5)
    assert workers[0].is_alive()
    assert len(next(batches)) == 4


# Run as a script: torch.multiprocessing starts the workers by importing its __main__, which
# registers the tiny datasets (already generated) in each of them.
LAUNCH_SCRIPT = textwrap.dedent(
    """
    import sys
    import time
    from pathlib import Path

    sys.path[:0] = [{tests_dir!r}, {repo_root!r}]
    from helpers.training_utils import register_tiny_datasets

    register_tiny_datasets(Path({data_root!r}))
    import train_net
    from grouppose.engine import launch
    from grouppose.engine.preemption import StopSignals, TrainingPreempted


    def wait_for_a_signal(ready_file):
        signals = StopSignals()
        signals.install()
        Path(ready_file + str(time.monotonic_ns())).touch()
        while not signals.received:
            time.sleep(0.01)
        raise TrainingPreempted()


    if __name__ == "__main__":
        if sys.argv[1] == "--wait-for-a-signal":
            launch(wait_for_a_signal, 2, args=(sys.argv[2],))
        else:
            args = train_net.get_parser().parse_args(sys.argv[1:])
            launch(train_net.main, args.num_gpus, args=(args,))
    """
)


def _script(tmp_path: Path) -> Path:
    data_root = tmp_path / "data"
    tiny_training_config(data_root, tmp_path / "unused")
    DatasetCatalog.get(TRAIN_SET)  # generated here, not by both processes at once
    script = tmp_path / "launch.py"
    script.write_text(LAUNCH_SCRIPT.format(
        tests_dir=str(REPO_ROOT / "tests"), repo_root=str(REPO_ROOT), data_root=str(data_root)
    ))
    return script


def _wait_for(condition, process, timeout=300.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"exited ({process.returncode}) too early")
        if time.monotonic() > deadline:
            pytest.fail("timed out")
        time.sleep(0.05)


def _training_processes(launcher_pid: int):
    """The launcher's torch.multiprocessing children, in the order they started (ranks)."""
    children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split()
    return sorted(int(pid) for pid in children
                  if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_one_signalled_process_stops_all_at_the_same_step(tmp_path):
    output_dir = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, str(_script(tmp_path)), "--config-file", str(TINY_CONFIG),
         "--num-gpus", "2", *FAST_OPTS, "OUTPUT_DIR", str(output_dir),
         "SOLVER.MAX_ITER", "200", *NO_EVAL],
        env=subprocess_env(), cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        log = output_dir / "log.txt"
        _wait_for(lambda: log.is_file() and "Starting training" in log.read_text(), process)
        ranks = _training_processes(process.pid)
        assert len(ranks) == 2
        os.kill(ranks[1], signal.SIGTERM)  # rank 1 only; rank 0 writes the checkpoint
        assert process.wait(timeout=300) == PREEMPTED_EXIT_CODE
    finally:
        process.kill()
        process.wait()
    tag = (output_dir / "last_checkpoint").read_text()
    stopped_at = int(re.fullmatch(r"model_(\d{7})\.pth", tag).group(1))
    main_log, rank1_log = log.read_text(), (output_dir / "log.txt.rank1").read_text()
    assert (f"another training process received a stop signal: saving iteration {stopped_at}"
            in main_log)
    assert f"received SIGTERM: saving iteration {stopped_at}" in rank1_log
    assert torch.load(output_dir / tag, weights_only=False)["iteration"] == stopped_at


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_launcher_relays_the_signal_and_the_exit_status(tmp_path):
    ready = tmp_path / "ready-"
    process = subprocess.Popen(
        [sys.executable, str(_script(tmp_path)), "--wait-for-a-signal", str(ready)],
        env=subprocess_env(), cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: len(list(tmp_path.glob("ready-*"))) == 2, process)
        process.send_signal(signal.SIGTERM)  # the launcher only
        assert process.wait(timeout=120) == PREEMPTED_EXIT_CODE
    finally:
        process.kill()
        process.wait()
