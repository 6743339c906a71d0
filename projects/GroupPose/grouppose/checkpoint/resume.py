"""--resume from the newest checkpoint that can be read.

``last_checkpoint`` names the checkpoint to resume from. If that file cannot be read (deleted,
truncated, corrupt: e.g. written before checkpoints were atomic, or damaged on disk), the
run resumes from the newest other checkpoint of the folder that can be, with one warning naming
the files passed over; if none can be read, it stops with one line naming them all.
"""

import logging
import os
import re
from typing import Any, Callable, Dict, List, Tuple, Type

__all__ = ["NoReadableCheckpointError", "newest_readable_checkpoint", "resume_candidates"]

logger = logging.getLogger(__name__)

# The checkpoints of a run: Detectron2's periodic ``model_0000123.pth`` and ``model_final.pth``.
_CHECKPOINT_NAME = re.compile(r"_(\d+|final)\.pth$")


class NoReadableCheckpointError(RuntimeError):
    """No checkpoint of the output folder can be read."""


def _iteration_of(name: str) -> float:
    number = _CHECKPOINT_NAME.search(name).group(1)
    return float("inf") if number == "final" else int(number)


def resume_candidates(save_dir: str, tagged: str) -> List[str]:
    """``tagged`` (the file ``last_checkpoint`` names), then the other checkpoints of
    ``save_dir`` (files named ``*_<iteration>.pth`` or ``*_final.pth``), newest first."""
    others = sorted(
        (name for name in os.listdir(save_dir)
         if _CHECKPOINT_NAME.search(name) and os.path.join(save_dir, name) != tagged),
        key=_iteration_of, reverse=True,
    )
    return [tagged, *(os.path.join(save_dir, name) for name in others)]


def _reason(path: str, error: BaseException) -> str:
    """Why ``path`` could not be read: the first line of ``error``'s message (zip and pickle
    errors have long ones)."""
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return "empty file"
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def newest_readable_checkpoint(
    save_dir: str,
    tagged: str,
    read: Callable[[str], Dict[str, Any]],
    refusals: Tuple[Type[Exception], ...] = (),
) -> Tuple[str, Dict[str, Any]]:
    """The first of ``resume_candidates(save_dir, tagged)`` that ``read`` reads, and what it
    read.

    Args:
        refusals: errors of ``read`` that refuse a file rather than fail to read it (one that
            could run code): passed over like the others, but when every candidate is refused,
            the first refusal is raised as it is (it says how to read the file anyway).

    Raises:
        NoReadableCheckpointError naming every candidate and why it could not be read.
    """
    failures: List[Tuple[str, Exception]] = []
    for path in resume_candidates(save_dir, tagged):
        try:
            data = read(path)
        except Exception as e:  # whatever a damaged file makes torch.load or pickle raise
            failures.append((path, e))
            continue
        if failures:
            logger.warning(f"--resume: cannot read {_described(failures)}; resuming from "
                           f"'{path}', the newest checkpoint that can be read")
        return path, data
    if refusals and all(isinstance(e, refusals) for _, e in failures):
        raise failures[0][1] from None
    raise NoReadableCheckpointError(
        f"--resume: no checkpoint can be read: {_described(failures)}; delete "
        f"'{os.path.join(save_dir, 'last_checkpoint')}' to start the run again without them"
    )


def _described(failures: List[Tuple[str, Exception]]) -> str:
    return ", ".join(f"'{path}' ({_reason(path, error)})" for path, error in failures)
