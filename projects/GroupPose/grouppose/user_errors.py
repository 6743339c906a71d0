"""A user's mistake at a command's entry point: one line on stderr and exit status 2, never a
traceback.

The package reports what a user can fix (a bad config value, a --dataset spec, a truncated,
corrupt or unsafe weights file, no readable checkpoint to resume, too many unreadable images, a
missing file) with the exceptions of ``USER_ERRORS`` and a message that names the file or key.
Every command (train_net.py, demo.py, tools/) runs inside ``exit_on_user_error``; any other
exception is a bug and keeps its traceback (and so does every error with the environment variable
``GROUPPOSE_TRACEBACK=1``, for when a ValueError deep in a library needs its stack). In a
multi-process run (``grouppose.engine.launch``, in ``grouppose.engine.launcher``)
the training processes hand their messages to the launcher (``user_errors_of_processes``), which
reports each distinct one once, instead of a traceback of torch.multiprocessing.
"""

import functools
import os
import sys
import tempfile
from contextlib import contextmanager
from typing import Callable, Iterator, Type

import torch.multiprocessing as mp

from grouppose.checkpoint.resume import NoReadableCheckpointError
from grouppose.data.unreadable_images import TooManyUnreadableImagesError

__all__ = ["USER_ERRORS", "USER_ERROR_EXIT_CODE", "exit_on_user_error",
           "user_errors_of_processes"]

# As argparse's usage errors; the 1 of Python is an uncaught exception (a bug).
USER_ERROR_EXIT_CODE = 2
# ValueError: config checks, --dataset, weights files (CorruptCheckpointError,
# UnsafeCheckpointError), images; OSError: files that are missing or cannot be written.
USER_ERRORS = (ValueError, OSError, NoReadableCheckpointError, TooManyUnreadableImagesError)
# Set to 1: user errors keep their traceback too.
TRACEBACK_VARIABLE = "GROUPPOSE_TRACEBACK"


def _one_line(error: BaseException) -> str:
    return " ".join(line.strip() for line in str(error).splitlines()) or type(error).__name__


@contextmanager
def exit_on_user_error(*more: Type[BaseException]) -> Iterator[None]:
    """Print ``error: <message>`` (one line) to stderr and exit with USER_ERROR_EXIT_CODE when
    the block raises one of USER_ERRORS or ``more``."""
    try:
        yield
    except (*USER_ERRORS, *more) as e:
        if os.environ.get(TRACEBACK_VARIABLE) == "1":
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr, flush=True)
        raise SystemExit(USER_ERROR_EXIT_CODE) from None


def _run_reporting_user_errors(folder: str, main_func: Callable, *args) -> None:
    """``main_func(*args)`` in a training process: a user error's message goes to a file of
    ``folder`` and the process exits with USER_ERROR_EXIT_CODE."""
    try:
        main_func(*args)
    except USER_ERRORS as e:
        with open(os.path.join(folder, f"{os.getpid()}.txt"), "w") as report:
            report.write(_one_line(e))
        raise SystemExit(USER_ERROR_EXIT_CODE) from None


@contextmanager
def user_errors_of_processes(main_func: Callable) -> Iterator[Callable]:
    """For a launcher of training processes: yields ``main_func`` wrapped for them (picklable);
    when one of them exits on a user error, raises ValueError with their distinct messages
    (several processes usually meet the same mistake)."""
    with tempfile.TemporaryDirectory(prefix="grouppose-errors-") as folder:
        try:
            yield functools.partial(_run_reporting_user_errors, folder, main_func)
        except mp.ProcessExitedException as e:
            if e.exit_code != USER_ERROR_EXIT_CODE:
                raise
            messages = []
            for name in sorted(os.listdir(folder)):
                with open(os.path.join(folder, name)) as report:
                    messages.append(report.read())
            raise ValueError(" | ".join(dict.fromkeys(messages))) from None
