"""Checkpoints and last_checkpoint are replaced atomically: a full disk or a kill during the write
leaves the previous checkpoint usable; --resume passes over checkpoints that cannot be read, with
one warning, or stops with one line naming them all."""

import errno
import io
import logging
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers.training_utils import PACKAGE_ROOT, subprocess_env
from torch import nn

from grouppose.checkpoint import SafeCheckpointer, UnsafeCheckpointError
from grouppose.checkpoint.resume import NoReadableCheckpointError


def _model(value: float) -> nn.Module:
    model = nn.Linear(4, 3)
    nn.init.constant_(model.weight, value)
    return model


def _resumed_weight(save_dir) -> float:
    """The weight value a fresh model has after --resume from ``save_dir``."""
    model = _model(0.0)
    SafeCheckpointer(model, str(save_dir)).resume_or_load("", resume=True)
    return model.weight[0, 0].item()


def _half_written_then(error):
    """A torch.save that writes half of the file, then fails with ``error``."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise error

    return save


def test_full_disk_mid_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    SafeCheckpointer(_model(1.0), str(tmp_path)).save("model_0000001")
    first = (tmp_path / "model_0000001.pth").read_bytes()
    monkeypatch.setattr(torch, "save",
                        _half_written_then(OSError(errno.ENOSPC, "No space left on device")))
    checkpointer = SafeCheckpointer(_model(2.0), str(tmp_path))
    for name in ("model_0000002", "model_0000001"):  # a new file, and one that exists
        with pytest.raises(OSError, match=rf"writing '.*{name}.pth' failed, so it was left as "
                                          r"it was \(\d+ MiB free\): .*No space left"):
            checkpointer.save(name)
    monkeypatch.undo()

    assert not (tmp_path / "model_0000002.pth").exists()
    assert (tmp_path / "model_0000001.pth").read_bytes() == first
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000001.pth"]
    assert _resumed_weight(tmp_path) == 1.0


KILLED_WRITER = textwrap.dedent(
    """
    import io, os, signal, sys
    import torch
    from torch import nn
    from grouppose.checkpoint import SafeCheckpointer, UnsafeCheckpointError

    model = nn.Linear(4, 3)
    nn.init.constant_(model.weight, 1.0)
    checkpointer = SafeCheckpointer(model, sys.argv[1])
    checkpointer.save("model_0000001")
    real_save = torch.save

    def killed_mid_write(obj, f):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = killed_mid_write
    nn.init.constant_(model.weight, 2.0)
    checkpointer.save("model_0000002")
    """
)


def test_kill_mid_write_leaves_the_previous_checkpoint(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(tmp_path)], env=subprocess_env(),
        cwd=PACKAGE_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert (tmp_path / ".model_0000002.pth.tmp").is_file()  # the interrupted write
    assert not (tmp_path / "model_0000002.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert _resumed_weight(tmp_path) == 1.0
    assert not (tmp_path / ".model_0000002.pth.tmp").exists()  # removed on resume


def _three_checkpoints(save_dir) -> None:
    """model_0000003 / 7 / 11.pth with weights 3, 7, 11; last_checkpoint names the 11th."""
    for iteration in (3, 7, 11):
        SafeCheckpointer(_model(iteration), str(save_dir)).save(f"model_{iteration:07d}")


def _truncate(path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def test_resume_passes_over_unreadable_checkpoints_with_one_warning(tmp_path, caplog):
    _three_checkpoints(tmp_path)
    _truncate(tmp_path / "model_0000011.pth")
    (tmp_path / "model_0000007.pth").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        assert _resumed_weight(tmp_path) == 3.0
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "model_0000011.pth" in warnings[0] and "model_0000007.pth" in warnings[0]
    assert f"resuming from '{tmp_path / 'model_0000003.pth'}'" in warnings[0]


def test_resume_from_a_missing_tagged_checkpoint_falls_back(tmp_path):
    _three_checkpoints(tmp_path)
    (tmp_path / "model_0000011.pth").unlink()
    assert _resumed_weight(tmp_path) == 7.0


def test_resume_without_a_readable_checkpoint_stops_with_one_line(tmp_path):
    _three_checkpoints(tmp_path)
    for iteration in (3, 7, 11):
        _truncate(tmp_path / f"model_{iteration:07d}.pth")
    path = tmp_path / "model_0000007.pth"
    path.write_bytes(bytes(path.stat().st_size))  # zeroed on disk
    with pytest.raises(NoReadableCheckpointError) as error:
        _resumed_weight(tmp_path)
    message = str(error.value)
    assert "\n" not in message
    assert error.value.__cause__ is None and error.value.__context__ is None  # no zip traceback
    assert message.startswith("--resume: no checkpoint can be read: ")
    positions = [message.index(f"model_{i:07d}.pth") for i in (11, 7, 3)]
    assert positions == sorted(positions)  # newest first
    assert "last_checkpoint" in message


def test_resume_passes_over_a_refused_checkpoint_unless_all_are(tmp_path):
    """A checkpoint refused because it could run code is passed over like a damaged one; when
    all are refused, the refusal is the error (it names --trust-pickle)."""
    _three_checkpoints(tmp_path)
    torch.save({"model": {}, "code": print}, tmp_path / "model_0000011.pth")
    assert _resumed_weight(tmp_path) == 7.0
    for iteration in (3, 7):
        (tmp_path / f"model_{iteration:07d}.pth").unlink()
    with pytest.raises(UnsafeCheckpointError, match="model_0000011.pth: refused to load"):
        _resumed_weight(tmp_path)
