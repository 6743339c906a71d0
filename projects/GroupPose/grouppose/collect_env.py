"""Print the environment facts a GroupPose-D2 bug report needs.

Run ``python -m grouppose.collect_env``.
"""

from __future__ import annotations

import importlib
import importlib.util
import platform
import sys
from typing import List, Tuple

OPTIONAL_PACKAGES = ("numpy", "PIL", "cv2", "scipy", "pycocotools", "xtcocotools", "timm")


def _version(module_name: str) -> str:
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # any import failure is itself worth reporting
        return f"not importable ({type(e).__name__}: {e})"
    return str(getattr(module, "__version__", "unknown version"))


def detectron2_info() -> str:
    """detectron2's version and how it was installed (see tools/install_detectron2.py)."""
    try:
        import detectron2
    except ImportError as e:
        return f"not importable ({e})"
    if importlib.util.find_spec("detectron2._python_only") is not None:
        how = "python-only build from the PyPI sdist (no C++ ops)"
    elif importlib.util.find_spec("detectron2._C") is not None:
        how = "built with C++ ops (from source)"
    else:
        how = "without C++ ops"
    return f"{detectron2.__version__} @ {detectron2.__path__[0]} [{how}]"


def op_extension_info() -> str:
    """Whether ``grouppose._C`` is built, and for which devices it has kernels."""
    import torch

    try:
        importlib.import_module("grouppose._C")
    except ImportError as e:
        return f"not built ({e}); the pure-PyTorch fallback is used"
    devices = [
        key
        for key in ("CPU", "CUDA")
        if torch._C._dispatch_has_kernel_for_dispatch_key("grouppose::ms_deform_attn", key)
    ]
    return "built, kernels: " + (", ".join(devices) or "none registered")


def collect_env_info() -> List[Tuple[str, str]]:
    import torch

    import grouppose

    rows = [
        ("sys.platform", sys.platform),
        ("Python", sys.version.replace("\n", " ")),
        ("machine", platform.machine()),
        ("grouppose", f"{grouppose.__version__} @ {grouppose.__path__[0]}"),
        ("grouppose._C", op_extension_info()),
        ("torch", f"{torch.__version__} @ {torch.__path__[0]}"),
        ("torch CUDA build", str(torch.version.cuda)),
        ("CUDA available", str(torch.cuda.is_available())),
    ]
    if torch.cuda.is_available():
        rows.append(("GPU 0", torch.cuda.get_device_name(0)))
    rows += [
        ("torchvision", _version("torchvision")),
        ("detectron2", detectron2_info()),
    ]
    rows += [(name, _version(name)) for name in OPTIONAL_PACKAGES]
    return rows


def format_env_info(rows: List[Tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


if __name__ == "__main__":
    print(format_env_info(collect_env_info()))
