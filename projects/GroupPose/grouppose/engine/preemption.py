"""Stop training cleanly on SIGTERM, SIGUSR1 or SIGINT, e.g. when a cluster preempts the job.

A scheduler asks a job to stop with a signal some time before it kills it (SLURM: SIGTERM at
preemption and at the time limit, or the signal of ``--signal``, e.g. SIGUSR1). Here:

- the signal handler only records the signal (so a second signal, e.g. during the save, changes
  nothing), and costs nothing while training runs;
- after each optimizer step, ``PreemptionHook`` asks whether any process has received one
  (``StepAgreement``: every process stops at the same step even if only one was signalled), and
  if so writes the checkpoint of that step, as a periodic checkpoint would (model, optimizer,
  scheduler, iteration, data stream, hooks; written atomically, see
  ``grouppose.checkpoint.atomic``), updates ``last_checkpoint`` and exits with
  ``PREEMPTED_EXIT_CODE``, so that a requeue script can tell a preempted run from a failed one;
- ``relay_preemption`` makes the launcher of a multi-process run pass the signals on to its
  training processes and exit with the same status;
- data-loader workers ignore the signals (``ignore_stop_signals``): the training process decides
  when they stop, and a worker killed by the signal would end the step in flight.

``--resume`` then continues from the next step and ends with the weights of an uninterrupted run.
"""

import logging
import multiprocessing
import os
import signal
import threading
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional

import torch.multiprocessing as mp
from detectron2.engine import HookBase
from detectron2.utils import comm

from grouppose.engine.agreement import StepAgreement

__all__ = [
    "PREEMPTED_EXIT_CODE",
    "STOP_SIGNALS",
    "PreemptionHook",
    "StopSignals",
    "TrainingPreempted",
    "ignore_stop_signals",
    "relay_preemption",
]

logger = logging.getLogger(__name__)

# EX_TEMPFAIL of sysexits.h ("temporary failure; the user is invited to retry"): neither 0 nor
# the 1 of an exception nor the 128 + n of a process killed by signal n.
PREEMPTED_EXIT_CODE = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class TrainingPreempted(SystemExit):
    """Training stopped on a signal after checkpointing its last step; exits the process with
    ``PREEMPTED_EXIT_CODE`` (Detectron2's loop lets it through: it is not an ``Exception``)."""

    def __init__(self) -> None:
        super().__init__(PREEMPTED_EXIT_CODE)


class StopSignals:
    """Records the STOP_SIGNALS this process receives while installed."""

    def __init__(self) -> None:
        self.received: List[str] = []
        self._previous: Dict[int, object] = {}

    def install(self) -> None:
        """Handle STOP_SIGNALS (main thread only, as Python requires)."""
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._record)

    def restore(self) -> None:
        """Give the signals back to their previous handlers."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _record(self, signum: int, frame) -> None:
        # Nothing else here: logging or saving from a handler could re-enter the code it
        # interrupted.
        self.received.append(signal.Signals(signum).name)


class PreemptionHook(HookBase):
    """After each step, save and exit if any process received a stop signal (see module doc).

    Registered after the LR scheduler hook, so that its checkpoint holds the state a periodic
    checkpoint of the same step holds. A signal during the last step lets training finish.
    ``agreement``: shared with the other hooks that all processes decide on together."""

    QUESTION = "stop signal"

    def __init__(self, agreement: Optional[StepAgreement] = None) -> None:
        self.signals = StopSignals()
        self.agreement = agreement or StepAgreement()
        self.agreement.add(self.QUESTION, lambda: bool(self.signals.received))

    def before_train(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self.signals.install()
        else:
            logger.warning("Training runs outside the main thread: SIGTERM, SIGUSR1 and SIGINT "
                           "will not checkpoint it before it stops")

    def after_step(self) -> None:
        iteration = self.trainer.iter
        if not self.agreement.any_process(self.QUESTION, iteration):
            return
        source = (f"received {', '.join(self.signals.received)}" if self.signals.received
                  else "another training process received a stop signal")
        if iteration + 1 >= self.trainer.max_iter:
            logger.info(f"{source} during the last iteration: finishing training")
            return
        logger.info(f"{source}: saving iteration {iteration}, then exiting with status "
                    f"{PREEMPTED_EXIT_CODE} (continue with --resume)")
        # Written by the main process only (the checkpointer's save_to_disk); the others wait
        # for it, so that no process exits before the checkpoint is complete.
        self.trainer.checkpointer.save(f"model_{iteration:07d}", iteration=iteration)
        comm.synchronize()
        raise TrainingPreempted()

    def after_train(self) -> None:
        self.signals.restore()


def ignore_stop_signals(worker_id: int = 0) -> None:
    """Data-loader ``worker_init_fn``: the worker ignores STOP_SIGNALS."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _forward_to_children(signum: int, frame) -> None:
    for child in multiprocessing.active_children():
        os.kill(child.pid, signum)


@contextmanager
def relay_preemption() -> Iterator[None]:
    """For a launcher of training processes (``torch.multiprocessing``): pass STOP_SIGNALS on
    to them instead of dying, and raise ``TrainingPreempted`` when one of them exited with
    ``PREEMPTED_EXIT_CODE`` (the others are then stopped by torch, after the checkpoint)."""
    previous = {signum: signal.signal(signum, _forward_to_children) for signum in STOP_SIGNALS}
    try:
        yield
    except mp.ProcessExitedException as e:
        if e.exit_code != PREEMPTED_EXIT_CODE:
            raise
        raise TrainingPreempted() from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
