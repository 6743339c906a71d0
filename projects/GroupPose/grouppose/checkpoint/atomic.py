"""Checkpoint files written atomically: a file is either the previous one or the complete new one.

fvcore's ``Checkpointer`` writes ``model_XXXXXXX.pth`` and then ``last_checkpoint`` in place, so
a process killed (e.g. by a cluster, after its grace period) or a disk filling up during the
write leaves a truncated file that ``--resume`` then fails to read. Here every file the
checkpointer opens for writing is written to a temporary file in the same folder (``.NAME.tmp``,
which no ``*.pth`` listing matches), flushed to disk and renamed over NAME; ``last_checkpoint``
is written the same way, after the checkpoint it names is complete. A failed write removes the
temporary file and leaves NAME as it was; a killed one leaves only the temporary file, which
``remove_stale_temporaries`` deletes (``SafeCheckpointer`` does on --resume).
"""

import errno
import logging
import os
import shutil
from contextlib import contextmanager
from typing import IO, Any, Iterator

__all__ = ["AtomicWrites", "atomic_open", "remove_stale_temporaries", "temporary_name"]

logger = logging.getLogger(__name__)

_TEMPORARY_SUFFIX = ".tmp"


def temporary_name(path: str) -> str:
    """The temporary file ``path`` is written to before it is renamed."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}{_TEMPORARY_SUFFIX}")


def _sync_folder(folder: str) -> None:
    """Make a rename in ``folder`` durable (where the OS lets a folder be opened)."""
    try:
        descriptor = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError as e:  # some file systems do not sync folders
        if e.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(descriptor)


def _free_space(path: str) -> str:
    try:
        return f"{shutil.disk_usage(os.path.dirname(path) or '.').free / 2**20:.0f} MiB free"
    except OSError as e:
        return f"its folder: {e.strerror}"


@contextmanager
def atomic_open(path: str, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open ``path`` for writing such that it is replaced only once the block completes.

    Raises:
        OSError naming ``path`` when writing fails (e.g. a full disk); ``path`` is unchanged.
    """
    temporary = temporary_name(path)
    try:
        with open(temporary, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException as e:
        if os.path.exists(temporary):
            os.remove(temporary)
        # torch.save reports a failed write (e.g. ENOSPC) as a RuntimeError of its zip writer.
        if isinstance(e, (OSError, RuntimeError)):
            raise OSError(
                f"writing '{path}' failed, so it was left as it was ({_free_space(path)}): "
                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from None
        raise
    _sync_folder(os.path.dirname(path))


class AtomicWrites:
    """A path manager (Detectron2's ``PathManager`` interface) whose ``open`` for writing a
    local file is ``atomic_open``; everything else is the wrapped manager's."""

    def __init__(self, path_manager: Any):
        self._path_manager = path_manager

    def open(self, path: str, mode: str = "r", **kwargs: Any):
        if ("w" in mode or "x" in mode) and "://" not in path:
            return atomic_open(path, mode)
        return self._path_manager.open(path, mode, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._path_manager, name)


def remove_stale_temporaries(folder: str) -> None:
    """Delete the temporary files that writes killed before their rename left in ``folder``."""
    if not os.path.isdir(folder):
        return
    for name in sorted(os.listdir(folder)):
        if name.startswith(".") and name.endswith(_TEMPORARY_SUFFIX):
            os.remove(os.path.join(folder, name))
            logger.info(f"removed '{os.path.join(folder, name)}', left by a write that was "
                        "interrupted")
