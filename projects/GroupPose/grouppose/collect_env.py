"""Print the environment facts a GroupPose-D2 bug report needs.

Run ``python -m grouppose.collect_env``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import platform
import re
import sys
from importlib import metadata
from typing import Dict, List, Tuple

OPTIONAL_PACKAGES = ("numpy", "PIL", "cv2", "scipy", "pycocotools", "xtcocotools", "timm")
# The /proc/cpuinfo flags that decide which kernels oneDNN runs for fp32 / bf16 / fp16 GEMMs
# and convolutions (a figure measured on one CPU holds on another only if these agree).
CPU_ISA_FLAGS = (
    "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
    "amx_tile", "amx_bf16", "amx_fp16", "amx_int8",
)


@functools.cache
def _distributions_by_import_name() -> Dict[str, List[str]]:
    """Import name -> the installed distributions that provide it (PIL -> [pillow])."""
    # New in Python 3.10; before it, distribution names are taken to be import names.
    find = getattr(metadata, "packages_distributions", None)
    return dict(find()) if find else {}


def _canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): opencv_python == OpenCV-Python."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed_distributions(import_name: str) -> List[Tuple[str, str]]:
    """(name, version) of each installed distribution providing ``import_name``."""
    names = _distributions_by_import_name().get(import_name) or [import_name]
    found = []
    for name in sorted(set(names)):
        try:
            found.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            continue
    return found


def _version(module_name: str) -> str:
    """The version of importable ``module_name`` as pip has it, from its distribution's
    metadata (many modules, e.g. pycocotools, have no ``__version__``), naming the distribution
    where it is not the import name (``13.0.0 (pillow)``), and adding the module's
    ``__version__`` where it says otherwise (local build tags such as ``+cu130``)."""
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # any import failure is itself worth reporting
        return f"not importable ({type(e).__name__}: {e})"
    own = getattr(module, "__version__", None)
    installed = _installed_distributions(module_name)
    entries = [
        version if _canonical(name) == _canonical(module_name) else f"{version} ({name})"
        for name, version in installed
    ]
    if own is not None and all(str(own) != version for _, version in installed):
        entries.append(f"__version__ {own}" if installed else str(own))
    return "; ".join(entries) or "unknown version"


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


def cpu_info() -> Dict[str, object]:
    """This CPU: its model name, the CPU_ISA_FLAGS it has, the ISA PyTorch's own kernels use and
    ``ONEDNN_MAX_CPU_ISA`` (which caps oneDNN's kernels) when set. Linux reads /proc/cpuinfo;
    elsewhere the model is ``platform.processor()`` and the flags are unknown (None)."""
    import os

    import torch

    model, flags = platform.processor() or platform.machine(), None
    try:
        with open("/proc/cpuinfo") as f:
            fields = {
                key.strip(): value.strip()
                for key, _, value in (line.partition(":") for line in f) if value
            }
        model = fields.get("model name", model)
        present = set(fields.get("flags", "").split())
        flags = [flag for flag in CPU_ISA_FLAGS if flag in present]
    except OSError:
        pass
    return {
        "model": model,
        "isa_flags": flags,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
    }


def format_cpu_info(info: Dict[str, object]) -> str:
    """One line: model, ISA flags, PyTorch's capability and the oneDNN cap if any."""
    flags = "unknown" if info["isa_flags"] is None else " ".join(info["isa_flags"]) or "none"
    line = f"{info['model']} (ISA: {flags}; torch kernels: {info['torch_cpu_capability']}"
    if info["onednn_max_cpu_isa"]:
        line += f"; ONEDNN_MAX_CPU_ISA={info['onednn_max_cpu_isa']}"
    return line + ")"


def collect_env_info() -> List[Tuple[str, str]]:
    import torch

    import grouppose

    rows = [
        ("sys.platform", sys.platform),
        ("Python", sys.version.replace("\n", " ")),
        ("machine", platform.machine()),
        ("CPU", format_cpu_info(cpu_info())),
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
