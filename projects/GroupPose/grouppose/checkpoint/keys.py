"""Helpers reading architecture numbers from state-dict key names."""

import re
from typing import Iterable


def count_layers(keys: Iterable[str], prefix: str) -> int:
    """Number of indexed submodules ``{prefix}{i}.`` (max index + 1, 0 if none)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for m in map(pattern.match, keys) if m}
    return max(indices) + 1 if indices else 0
