"""Shared pytest fixtures: the official reference tensors, device selection, and what an
in-process Trainer changes (the grouppose logger, the CPU threads)."""

import logging
import os
from pathlib import Path

import pytest
from helpers import REPO_ROOT


def _reference_dir() -> Path:
    env = os.environ.get("GROUPPOSE_REFERENCE_DIR")
    if env:
        return Path(env)
    return REPO_ROOT.parent / "shared" / "reference" / "grouppose_official"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """Folder of tensors produced by the official implementation (see its README).

    Outside CI a missing folder skips the parity tests; in CI (``CI=true``) it is an error,
    so that a wrong path can never turn the parity tests into silent skips.
    """
    path = _reference_dir()
    if not (path / "README.md").is_file():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"official reference tensors not found at {path}")
        pytest.skip(f"official reference tensors not found at {path} "
                    "(set GROUPPOSE_REFERENCE_DIR)")
    return path


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``cuda`` when no CUDA device is present."""
    import torch

    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)


@pytest.fixture
def restore_grouppose_logger():
    """Undo the handlers and settings the Trainer gives the "grouppose" logger, so that later
    tests still see its records through pytest's caplog (on the root logger)."""
    logger = logging.getLogger("grouppose")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


@pytest.fixture
def one_cpu_thread():
    """Train in this process with one CPU thread, as the training subprocesses do: several
    threads on a shared machine make the tiny model's steps several times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
