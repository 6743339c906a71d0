"""Read weights files without letting them run code.

Reading a pickle can call any importable function (an object's ``__reduce__``), so a crafted
weights file runs its author's code on the machine that loads it. Detectron2's
``DetectionCheckpointer`` reads ``.pkl`` files with plain ``pickle.load``. Here:

- ``.pkl`` files go through ``WeightsUnpickler``, which builds only what real Detectron2 /
  Caffe2 / pycls ``.pkl`` weights hold (dicts, lists, numbers, strings, numpy arrays) and refuses
  every other global, naming it;
- every other file (``.pth``, ``.pyth``, ...) goes through ``torch.load(weights_only=True)``,
  whose refusal is reworded into one line naming the file and the refused global.

``trust_pickle=True`` (``--trust-pickle`` on the command line) is the one opt-in, for files of a
trusted source: it loads exactly as Detectron2 does.

A truncated or corrupt file (an interrupted download or copy) is one ``CorruptCheckpointError``
line naming it, whichever way it is read.
"""

import argparse
import io
import os
import pickle
import re
import zipfile
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

from grouppose.checkpoint.atomic import AtomicWrites, remove_stale_temporaries
from grouppose.checkpoint.resume import newest_readable_checkpoint

__all__ = [
    "CorruptCheckpointError", "SafeCheckpointer", "UnsafeCheckpointError",
    "add_trust_pickle_argument", "read_weights_file",
]

TRUST_HINT = "if you trust this file, load it with trust_pickle=True (--trust-pickle)"

# The globals that pickled weights need: numpy arrays and scalars (their reconstructors, under
# the numpy 1 and numpy 2 module names; protocol 5 rebuilds arrays from a buffer), ordered dicts,
# and `_codecs.encode`, with which Python 3 pickles byte strings at protocol 2 (Detectron2's
# model-zoo files). None of them has side effects.
_ALLOWED_PICKLE_GLOBALS = frozenset({
    ("collections", "OrderedDict"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    *((module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
      for name in ("_reconstruct", "scalar")),
    *((module, "_frombuffer") for module in ("numpy.core.numeric", "numpy._core.numeric")),
    ("_codecs", "encode"),
})
# How torch names the global that weights_only refused (the first line of its message).
_TORCH_REFUSED_GLOBAL = re.compile(r"(?:Unsupported global|GLOBAL) ([\w.]+)")
# How torch's weights_only refusals begin (other unpickling errors are damaged data).
_TORCH_REFUSAL = "Weights only load failed"
# torch.save's zip format begins with a zip local file header, its legacy format with a pickle
# protocol >= 2 header.
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"


def add_trust_pickle_argument(parser: argparse.ArgumentParser) -> None:
    """``--trust-pickle``, the one opt-in of every command of ours that reads weights."""
    parser.add_argument(
        "--trust-pickle", action="store_true",
        help="read weights files with plain pickle, which runs any code they hold (only for "
        "files from a trusted source); without it, objects other than weights are refused",
    )


class UnsafeCheckpointError(ValueError):
    """A weights file holds objects that could run code while it is read."""


class CorruptCheckpointError(ValueError):
    """A weights file that cannot be read: truncated (an interrupted download or copy) or
    otherwise damaged."""

    def __init__(self, path: str, reason: str):
        super().__init__(
            f"{path}: cannot read this weights file: it is truncated or corrupt ({reason}); "
            "download or copy it again"
        )


class WeightsUnpickler(pickle.Unpickler):
    """Unpickles weights only: refuses every global outside ``_ALLOWED_PICKLE_GLOBALS``."""

    def __init__(self, file: io.BufferedIOBase, path: str):
        super().__init__(file, encoding="latin1")  # as Detectron2: Python 2 era model-zoo files
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_PICKLE_GLOBALS:
            raise UnsafeCheckpointError(
                f"{self.path}: refused to load: it needs the global '{module}.{name}', which "
                f"could run code while the file is read (weights files hold only dicts, lists, "
                f"numbers, strings and arrays); {TRUST_HINT}"
            )
        return super().find_class(module, name)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _read_pickle(path: str, trust_pickle: bool) -> Any:
    with PathManager.open(path, "rb") as f:
        try:
            if trust_pickle:
                return pickle.load(f, encoding="latin1")
            return WeightsUnpickler(f, path).load()
        except (EOFError, pickle.UnpicklingError) as e:  # "pickle data was truncated", ...
            raise CorruptCheckpointError(path, _first_line(e)) from None


def _check_intact(path: str, f: io.BufferedIOBase) -> None:
    """Refuse an empty file, one that torch.save cannot have written, or a zip (torch.save's
    format) whose directory at its end is missing or damaged: torch fails on those with errors
    that name neither the file nor the cause ("PytorchStreamReader failed reading zip archive",
    "Invalid argument", "Unsupported operand")."""
    magic = f.read(len(_ZIP_MAGIC))
    f.seek(0)
    if not magic:
        raise CorruptCheckpointError(path, "the file is empty")
    if not magic.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):
        raise CorruptCheckpointError(path, "it begins as neither a zip file nor a pickle")
    if magic == _ZIP_MAGIC:
        try:
            zipfile.ZipFile(f).close()
        except zipfile.BadZipFile:
            raise CorruptCheckpointError(
                path, "a zip file, as torch.save writes, whose directory at the end is missing"
            ) from None
        f.seek(0)


def _read_torch(path: str, trust_pickle: bool, allowed_globals: Iterable[Callable]) -> Any:
    with PathManager.open(path, "rb") as f:
        _check_intact(path, f)
        try:
            if trust_pickle:
                return torch.load(f, map_location="cpu", weights_only=False)
            with torch.serialization.safe_globals(list(allowed_globals)):
                return torch.load(f, map_location="cpu", weights_only=True)
        # Damaged data inside an intact zip directory, or a damaged legacy (non-zip) file (torch's
        # weights_only unpickler raises KeyError on a bad memo reference).
        except (EOFError, RuntimeError, KeyError) as e:
            raise CorruptCheckpointError(path, _first_line(e)) from None
        except pickle.UnpicklingError as e:
            if _TORCH_REFUSAL not in str(e):
                raise CorruptCheckpointError(path, _first_line(e)) from None
            refused = _TORCH_REFUSED_GLOBAL.search(str(e))
            what = f"the global '{refused.group(1)}'" if refused else "objects other than weights"
            raise UnsafeCheckpointError(
                f"{path}: refused to load with weights_only=True: it needs {what}, which could "
                f"run code while the file is read; {TRUST_HINT}"
            ) from None


def read_weights_file(
    path: str, trust_pickle: bool = False, allowed_globals: Iterable[Callable] = ()
) -> Any:
    """The object stored in a weights file, read without running code from it.

    Args:
        path: a local ``.pkl`` file (read as a pickle) or any file ``torch.save`` wrote.
        trust_pickle: read it with plain pickle / ``weights_only=False`` (trusted files only).
        allowed_globals: classes or functions ``torch.load`` may also build (e.g.
            ``argparse.Namespace`` for the official training checkpoints).

    Raises:
        UnsafeCheckpointError naming the file and the refused global.
        CorruptCheckpointError naming the file when it is truncated or damaged.
        FileNotFoundError naming the file.
    """
    if not PathManager.isfile(path):
        raise FileNotFoundError(f"weights file not found: '{path}'")
    if path.endswith(".pkl"):
        return _read_pickle(path, trust_pickle)
    return _read_torch(path, trust_pickle, allowed_globals)


def _as_detectron2_checkpoint(path: str, data: Any) -> Dict[str, Any]:
    """The checkpoint dict Detectron2's checkpointer makes of each file format."""
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict of weights, got {type(data).__name__}")
    if path.endswith(".pkl"):
        if "model" in data and "__author__" in data:  # Detectron2 model zoo
            return data
        weights = data.get("blobs", data)  # Caffe2 / Detectron1 model zoo
        weights = {k: v for k, v in weights.items() if not k.endswith("_momentum")}
        return {"model": weights, "__author__": "Caffe2", "matching_heuristics": True}
    if path.endswith(".pyth"):  # pycls
        if "model_state" not in data:
            raise ValueError(f"{path}: a pycls (.pyth) checkpoint must contain 'model_state'")
        weights = {k: v for k, v in data["model_state"].items()
                   if not k.endswith("num_batches_tracked")}
        return {"model": weights, "__author__": "pycls", "matching_heuristics": True}
    return data if "model" in data else {"model": data}


class SafeCheckpointer(DetectionCheckpointer):
    """Detectron2's ``DetectionCheckpointer`` that reads weights with ``read_weights_file``.

    It loads what Detectron2 loads (its own, model-zoo, Caffe2 and pycls files) but refuses files
    that could run code, unless ``trust_pickle``. Every entry point of this project loads
    ``MODEL.WEIGHTS`` and resumes through it. It also writes checkpoints and
    ``last_checkpoint`` atomically (``grouppose.checkpoint.atomic``) and resumes from the newest
    checkpoint that can be read (``grouppose.checkpoint.resume``).

    Attributes:
        incompatible_keys: missing / unexpected keys of the last ``load`` (None before it).
    """

    def __init__(self, model, save_dir: str = "", *, trust_pickle: bool = False, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.trust_pickle = trust_pickle
        self.incompatible_keys: Optional[Any] = None
        self.path_manager = AtomicWrites(self.path_manager)
        # (path, contents) of the checkpoint resume_or_load has read already, to load once.
        self._read_ahead: Optional[Tuple[str, Dict[str, Any]]] = None

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """With ``resume`` and a ``last_checkpoint`` in ``save_dir``: its checkpoint or, if
        that cannot be read (or is refused), the newest one that can
        (``newest_readable_checkpoint``), with everything it holds; otherwise the model weights
        of ``path``."""
        if not (resume and self.has_checkpoint()):
            return super().resume_or_load(path, resume=resume)
        if self.save_to_disk:  # the process that writes checkpoints
            remove_stale_temporaries(self.save_dir)
        self._read_ahead = newest_readable_checkpoint(
            self.save_dir, self.get_checkpoint_file(), self._load_file,
            refusals=(UnsafeCheckpointError,),
        )
        return self.load(self._read_ahead[0])

    def load(self, path: str, *args, **kwargs) -> Dict[str, Any]:
        # fvcore would fail on a missing local file with a bare AssertionError.
        if path and "://" not in path and not os.path.isfile(path):
            raise FileNotFoundError(f"weights file not found: '{path}'")
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if self._read_ahead is not None and self._read_ahead[0] == filename:
            contents, self._read_ahead = self._read_ahead[1], None
            return contents
        return _as_detectron2_checkpoint(filename, read_weights_file(filename, self.trust_pickle))

    def _load_model(self, checkpoint: Dict[str, Any]):
        self.incompatible_keys = super()._load_model(checkpoint)
        return self.incompatible_keys
