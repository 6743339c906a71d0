"""Detectron2's ``launch``, extended to CPU-only machines.

Detectron2 0.6's ``launch`` requires CUDA (NCCL, one GPU per process). Without a GPU, this one
starts the processes itself and joins them with the gloo backend, the way upstream Detectron2
does today; with a GPU it is Detectron2's ``launch``. With several processes, the launcher passes
SIGTERM, SIGUSR1 and SIGINT on to them and exits with their preemption status
(``grouppose.engine.preemption``); a user error in them is raised by the launcher as a
ValueError with their message (``grouppose.user_errors``), not as a traceback of
torch.multiprocessing.
"""

import argparse
import socket
from datetime import timedelta
from typing import Callable, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import default_argument_parser
from detectron2.engine import launch as detectron2_launch
from detectron2.utils import comm

from grouppose.checkpoint import add_trust_pickle_argument
from grouppose.data.command_line import add_dataset_arguments
from grouppose.engine.preemption import relay_preemption
from grouppose.user_errors import exit_on_user_error, user_errors_of_processes

__all__ = ["launch", "launch_command", "training_argument_parser"]

DEFAULT_TIMEOUT = timedelta(minutes=30)


def _free_local_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


def _set_local_process_group(processes_per_machine: int, machine_rank: int) -> None:
    """Detectron2's process group of this machine's processes (``comm.get_local_rank``)."""
    if hasattr(comm, "create_local_process_group"):  # Detectron2 after 0.6
        comm.create_local_process_group(processes_per_machine)
        return
    num_machines = dist.get_world_size() // processes_per_machine
    for machine in range(num_machines):  # every process must create every group
        ranks = list(range(machine * processes_per_machine, (machine + 1) * processes_per_machine))
        group = dist.new_group(ranks)
        if machine == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group


def _cpu_worker(
    local_rank: int, main_func: Callable, processes_per_machine: int, num_machines: int,
    machine_rank: int, dist_url: str, args: Sequence, timeout: timedelta,
) -> None:
    dist.init_process_group(
        backend="gloo", init_method=dist_url, world_size=processes_per_machine * num_machines,
        rank=machine_rank * processes_per_machine + local_rank, timeout=timeout,
    )
    _set_local_process_group(processes_per_machine, machine_rank)
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()


def launch(
    main_func: Callable,
    num_processes_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
    args: Sequence = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Run ``main_func(*args)`` in ``num_processes_per_machine`` processes on each machine.

    Args:
        num_processes_per_machine: GPUs per machine (``--num-gpus``); without CUDA, CPU
            processes joined with gloo.
        num_machines, machine_rank, dist_url, timeout: as Detectron2's ``launch``;
            ``dist_url="auto"`` picks a free local port (single machine only).
    """
    world_size = num_processes_per_machine * num_machines
    if num_processes_per_machine < 1 or num_machines < 1 or not 0 <= machine_rank < num_machines:
        raise ValueError(
            f"invalid --num-gpus {num_processes_per_machine} / --num-machines {num_machines} / "
            f"--machine-rank {machine_rank}"
        )
    if world_size == 1:  # in this process, which handles the signals itself
        detectron2_launch(main_func, 1, num_machines, machine_rank, dist_url, args=tuple(args),
                          timeout=timeout)
        return
    with relay_preemption(), user_errors_of_processes(main_func) as process_main:
        if torch.cuda.is_available():
            detectron2_launch(process_main, num_processes_per_machine, num_machines,
                              machine_rank, dist_url, args=tuple(args), timeout=timeout)
            return
        if dist_url == "auto":
            if num_machines > 1:
                raise ValueError("--dist-url auto only works on one machine")
            dist_url = _free_local_url()
        mp.spawn(
            _cpu_worker, nprocs=num_processes_per_machine, daemon=False,
            args=(process_main, num_processes_per_machine, num_machines, machine_rank, dist_url,
                  tuple(args), timeout),
        )


def training_argument_parser() -> argparse.ArgumentParser:
    """The arguments of the training scripts (train_net.py, tools/lazyconfig_train_net.py):
    Detectron2's, ``--trust-pickle``, ``--dataset`` and ``--dataset-meta``."""
    parser = default_argument_parser()
    add_trust_pickle_argument(parser)
    add_dataset_arguments(parser)
    return parser


def launch_command(main_func: Callable, args: argparse.Namespace) -> None:
    """A training script's ``__main__``: ``main_func(args)`` on ``args.num_gpus`` processes per
    machine; a user error, also one of a training process, is one line and status 2."""
    print("Command Line Args:", args)
    with exit_on_user_error():
        launch(
            main_func, args.num_gpus, num_machines=args.num_machines,
            machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,),
        )
