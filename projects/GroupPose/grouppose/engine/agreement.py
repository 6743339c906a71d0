"""Decisions every training process takes together, at the same step.

A process that stops alone (on a signal, or on too many unreadable images) leaves the others
waiting in the next gradient all-reduce until the process group times out. So such a decision
is all-reduced once per step: one integer, on the CPU (gloo, Detectron2's group for CPU
collectives), which costs tens of microseconds and no device synchronisation.
"""

import torch
import torch.distributed as dist
from detectron2.utils import comm

__all__ = ["any_process"]


def any_process(flag: bool) -> bool:
    """Whether ``flag`` is true on any process. Every process must call it at the same point;
    with one process it is ``flag`` itself, without communication."""
    if comm.get_world_size() == 1:
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int32)
    # Detectron2's cached gloo group (the world group when the backend is already gloo), the
    # one its all_gather uses every step too.
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=comm._get_global_gloo_group())
    return bool(value.item())
