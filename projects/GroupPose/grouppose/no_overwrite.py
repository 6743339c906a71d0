"""Refuse, before any work, an output that would be written over something the run reads.

demo.py saves each drawing under the input's own file name when ``--output`` is a folder, so an
output folder that is the input folder would replace every photo by its drawing, and a video
written to the file being read is cut short. ``check_not_overwriting`` refuses those cases (and
an output that is an input file or folder itself) in one line naming both paths.
"""

import os
from typing import Dict, Hashable, Iterable, List, Sequence

__all__ = ["check_not_overwriting"]


def _identities(path: str) -> List[Hashable]:
    """What names a file: its resolved path (after ``~``, ``..`` and symbolic links) and, when
    it exists, its device and inode (hard links)."""
    path = os.path.expanduser(path)
    identities: List[Hashable] = [os.path.realpath(path)]
    if os.path.exists(path):
        status = os.stat(path)
        identities.append((status.st_dev, status.st_ino))
    return identities


def check_not_overwriting(
    output: str, inputs: Iterable[str], destinations: Sequence[str], option: str = "--output"
) -> None:
    """Refuse an ``output`` that is an input, or whose files would replace one.

    Args:
        output: the output path as given (a file or a folder).
        inputs: every path the run reads: input files, and the folders or files named on the
            command line.
        destinations: the files the run would write.
        option: how the output was given, for the message.

    Raises:
        ValueError naming ``output`` and the input it would overwrite.
    """
    read: Dict[Hashable, str] = {}
    for path in inputs:
        read.update(dict.fromkeys(_identities(path), path))
    overwritten = next((read[i] for i in _identities(output) if i in read), None)
    if overwritten is not None:
        raise ValueError(
            f"{option} '{output}' is the input '{overwritten}': the results would be written "
            "over it; choose another output"
        )
    for written in destinations:
        overwritten = next((read[i] for i in _identities(written) if i in read), None)
        if overwritten is not None:
            raise ValueError(
                f"{option} '{output}' would overwrite the input '{overwritten}' (with "
                f"'{written}'); choose an output outside the inputs"
            )
