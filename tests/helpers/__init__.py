"""Shared test helpers: tiny models and configs, generated training data, keypoint test data."""

from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = TESTS_DIR.parent
