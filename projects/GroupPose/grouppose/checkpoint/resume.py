"""--resume from the newest checkpoint that can be read.

``last_checkpoint`` names the checkpoint to resume from. If that file cannot be read (deleted,
truncated, corrupt: e.g. written before checkpoints were atomic, or damaged on disk), the
run resumes from the newest other checkpoint of the folder that can be, with one warning naming
the files passed over; if none can be read, it stops with one line naming them all.
"""

import logging
import os
import re
from typing import Any, Callable, Dict, List, Tuple

__all__ = ["NoReadableCheckpointError", "newest_readable_checkpoint", "resume_candidates"]

logger = logging.getLogger(__name__)

# The checkpoints of a run: Detectron2's periodic ``model_0000123.pth`` and ``model_final.pth``.
_CHECKPOINT_NAME = re.compile(r"_(\d+|final)\.pth$")


class NoReadableCheckpointError(RuntimeError):
    """No checkpoint of the output folder can be read."""


def _newest_first_key(name: str) -> float:
    number = _CHECKPOINT_NAME.search(name).group(1)
    return float("inf") if number == "final" else int(number)


def resume_candidates(save_dir: str, tagged: str) -> List[str]:
    """``tagged`` (the file ``last_checkpoint`` names), then the other checkpoints of
    ``save_dir`` (files named ``*_<iteration>.pth`` or ``*_final.pth``), newest first."""
    others = sorted(
        (name for name in os.listdir(save_dir)
         if _CHECKPOINT_NAME.search(name) and os.path.join(save_dir, name) != tagged),
        key=_newest_first_key, reverse=True,
    )
    return [tagged, *(os.path.join(save_dir, name) for name in others)]


def _reason(error: BaseException) -> str:
    """The first line of ``error``'s message (zip and pickle errors have long ones)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def newest_readable_checkpoint(
    save_dir: str, tagged: str, read: Callable[[str], Dict[str, Any]]
) -> Tuple[str, Dict[str, Any]]:
    """The first of ``resume_candidates(save_dir, tagged)`` that ``read`` reads, and what it
    read.

    Raises:
        NoReadableCheckpointError naming every candidate and why it could not be read.
    """
    unreadable = []
    for path in resume_candidates(save_dir, tagged):
        try:
            data = read(path)
        except Exception as e:  # whatever a damaged file makes torch.load or pickle raise
            unreadable.append(f"'{path}' ({_reason(e)})")
            continue
        if unreadable:
            logger.warning(f"--resume: cannot read {', '.join(unreadable)}; resuming from "
                           f"'{path}', the newest checkpoint that can be read")
        return path, data
    raise NoReadableCheckpointError(
        f"--resume: no checkpoint can be read: {', '.join(unreadable)}; delete "
        f"'{os.path.join(save_dir, 'last_checkpoint')}' to start the run again without them"
    )
