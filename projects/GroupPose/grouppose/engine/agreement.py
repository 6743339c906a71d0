"""Decisions every training process takes together, at the same step.

A process that stops alone (on a signal, or on too many unreadable images) leaves the others
waiting in the next gradient all-reduce until the process group times out. So such decisions
are all-reduced once per step, all together (``StepAgreement``): a few integers, on the CPU
(gloo, Detectron2's group for CPU collectives), which costs about 0.3 ms between two processes
on one machine (tools/benchmarks/bench_step_overhead.py) and no device
synchronisation.
"""

from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
from detectron2.utils import comm

__all__ = ["StepAgreement", "any_process"]


def any_process(flags: Sequence[bool]) -> List[bool]:
    """For each flag, whether it is true on any process. Every process must call it at the
    same point with as many flags; with one process it is ``flags``, without communication."""
    if comm.get_world_size() == 1:
        return list(flags)
    values = torch.tensor([int(flag) for flag in flags], dtype=torch.int32)
    # Detectron2's cached gloo group (the world group when the backend is already gloo), the
    # one its all_gather uses every step too.
    dist.all_reduce(values, op=dist.ReduceOp.MAX, group=comm._get_global_gloo_group())
    return [bool(value) for value in values.tolist()]


class StepAgreement:
    """Yes / no questions that the training hooks of every process ask after each step,
    answered for all processes with one all-reduce per step for all the questions."""

    def __init__(self) -> None:
        self._questions: Dict[str, Callable[[], bool]] = {}
        self._answers: Dict[str, bool] = {}
        self._iteration: Optional[int] = None

    def add(self, name: str, question: Callable[[], bool]) -> None:
        """Ask ``question`` (this process's answer) after every step, as ``name``."""
        self._questions[name] = question

    def any_process(self, name: str, iteration: int) -> bool:
        """Whether question ``name`` was true on any process after step ``iteration``.

        The first call of a step asks this process every question and agrees on all the
        answers; every process must make it at the same point (e.g. in the same hook)."""
        if iteration != self._iteration:
            local = [question() for question in self._questions.values()]
            self._answers = dict(zip(self._questions, any_process(local)))
            self._iteration = iteration
        return self._answers[name]
