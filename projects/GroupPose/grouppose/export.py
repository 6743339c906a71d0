"""Deprecated: the torch.export path lives in ``grouppose.deploy`` (module ``torch_export``).

``from grouppose.export import export_grouppose`` still works, with a DeprecationWarning that
names the new import; nothing else is defined here.
"""

import warnings

__all__ = ["GroupPoseExportModule", "export_grouppose"]  # noqa: F822 (given by __getattr__)


def __getattr__(name: str):
    # Warned on each use, at the importing line: a warning at import time would point into
    # importlib and show once per process.
    if name in __all__:
        warnings.warn(
            f"grouppose.export is deprecated: use `from grouppose.deploy import {name}`",
            DeprecationWarning,
            stacklevel=2,
        )
        from grouppose.deploy import torch_export

        return getattr(torch_export, name)
    raise AttributeError(f"module 'grouppose.export' has no attribute '{name}'")
