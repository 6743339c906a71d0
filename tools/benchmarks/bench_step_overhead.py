#!/usr/bin/env python
"""What gradient accumulation and the preemption / unreadable-image hooks add to a training step.

    python tools/benchmarks/bench_step_overhead.py [--steps 40] [--threads 2] [--processes 2]

Trains configs/Synthetic/grouppose_tiny.yaml on a small generated set with grouppose's Trainer
and times, for every optimizer step, the step itself (``run_step``: with one micro-batch,
``GradientAccumulation`` is Detectron2's ``SimpleTrainer.run_step`` behind one attribute check)
and the ``after_step`` of the two hooks that stop a run cleanly (``UnreadableImageHook`` and
``PreemptionHook``, which share one ``StepAgreement``). With ``--processes 2`` it also times the
agreement of two processes (one gloo all-reduce of their flags), which a multi-process run adds
once per step. Prints the medians and their share of a step.

Timing parts of the same steps in one process makes the comparison immune to the machine's
load, unlike two whole runs before / after (docs/long_runs.md, "Cost").
"""

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from typing import List, Optional, Tuple

import grouppose  # noqa: F401  (first: it quiets a warning of Detectron2's imports)

# isort: split
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.utils.events import EventStorage

from grouppose.config import get_grouppose_cfg
from grouppose.data import register_synthetic_dataset
from grouppose.engine import Trainer
from grouppose.engine.agreement import StepAgreement
from grouppose.engine.preemption import PreemptionHook
from grouppose.engine.unreadable_image_hook import UnreadableImageHook

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_CONFIG = os.path.join(REPO_ROOT, "configs", "Synthetic", "grouppose_tiny.yaml")
DATASET = "step_overhead_train"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    parser.add_argument("--processes", type=int, default=2,
                        help="processes for the agreement timing (1: skip it)")
    return parser.parse_args(argv)


def step_and_hook_times(steps: int, warmup: int, root: str) -> Tuple[List[float], List[float]]:
    """(step seconds, hooks seconds) of each of ``steps`` training steps after ``warmup``
    untimed ones, training in a fresh folder under ``root``."""
    register_synthetic_dataset(DATASET, os.path.join(root, "train"), 64, 0, (160, 240))
    cfg = get_grouppose_cfg(TINY_CONFIG, [
        "DATASETS.TRAIN", f"('{DATASET}',)", "DATASETS.TEST", "()", "TEST.EVAL_PERIOD", "0",
        "DATALOADER.NUM_WORKERS", "0", "SOLVER.MAX_ITER", "100000",
        "SOLVER.CHECKPOINT_PERIOD", "100000", "OUTPUT_DIR", os.path.join(root, "output"),
    ])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    timed = [h for h in trainer._hooks if isinstance(h, (UnreadableImageHook, PreemptionHook))]
    step_seconds, hook_seconds = [], []
    with EventStorage(0) as trainer.storage:
        trainer.before_train()
        for iteration in range(warmup + steps):
            trainer.iter = trainer.storage.iter = iteration
            trainer.before_step()
            start = time.perf_counter()
            trainer.run_step()
            step_end = time.perf_counter()
            hooks_time = 0.0
            for hook in trainer._hooks:
                hook_start = time.perf_counter()
                hook.after_step()
                if hook in timed:
                    hooks_time += time.perf_counter() - hook_start
            if iteration >= warmup:
                step_seconds.append(step_end - start)
                hook_seconds.append(hooks_time)
            trainer.storage.step()
        trainer.after_train()
    return step_seconds, hook_seconds


def _agreement_worker(rank: int, world_size: int, port: int, calls: int, queue) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size)
    agreement = StepAgreement()
    agreement.add("stop signal", lambda: False)
    agreement.add("unreadable images", lambda: False)
    agreement.any_process("stop signal", -1)  # the group's first collective sets it up
    times = []
    for iteration in range(calls):
        start = time.perf_counter()
        agreement.any_process("stop signal", iteration)
        agreement.any_process("unreadable images", iteration)
        times.append(time.perf_counter() - start)
    if rank == 0:
        queue.put(statistics.median(times))
    dist.barrier()  # neither process tears the group down while the other still uses it
    dist.destroy_process_group()


def agreement_seconds(world_size: int, calls: int = 2000) -> float:
    """Median time of one step's agreement between ``world_size`` processes on this machine."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_agreement_worker, args=(world_size, port, calls, queue), nprocs=world_size)
    return queue.get()


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as root:
        step_seconds, hook_seconds = step_and_hook_times(args.steps, args.warmup, root)
    step, hooks = statistics.median(step_seconds), statistics.median(hook_seconds)
    print(f"tiny config, {args.threads} threads, {args.steps} steps: step {step * 1e3:.1f} ms "
          f"(median; {min(step_seconds) * 1e3:.1f}-{max(step_seconds) * 1e3:.1f}), "
          f"stop / unreadable-image hooks {hooks * 1e6:.1f} us = {hooks / step:.2e} of a step")
    if args.processes > 1:
        agree = agreement_seconds(args.processes)
        print(f"agreement of {args.processes} processes (one gloo all-reduce per step): "
              f"{agree * 1e6:.1f} us = {agree / step:.2e} of a step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
