"""Shared pytest fixtures: the official reference tensors and device selection."""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


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
