"""The CUDA build of grouppose._C compiles with nvcc without warnings, links, holds kernels for
every value dtype and registers CUDA kernels.

Needs nvcc but no GPU: it builds the extension with FORCE_CUDA=1 into a temporary folder and
loads it in a fresh process (one process cannot load two libraries defining the same ops).
Running the kernels needs a GPU: tools/gpu_check.py does that.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO_ROOT

LOAD_AND_CHECK = """
import sys, torch
torch.ops.load_library(sys.argv[1])
for key in ("CPU", "CUDA"):
    for op in ("grouppose::ms_deform_attn", "grouppose::ms_deform_attn_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, key), (op, key)
"""

# (value, sampling_locations, attention_weights) element types each CUDA kernel must be built
# for: the dtype policy's combinations (half values with their own or float32 companions).
KERNEL_TYPES = [("float", "float", "float"), ("double", "double", "double")] + [
    (half, location, weight)
    for half in ("c10::Half", "c10::BFloat16")
    for location in (half, "float")
    for weight in (half, "float")
]


@pytest.mark.slow  # about a minute on 2 cores
def test_cuda_extension_compiles_links_and_registers(tmp_path):
    # Named explicitly: left to itself, torch would derive the toolkit from the `nvcc` on PATH,
    # which may be a wrapper script outside the toolkit (then -lcudart is not found).
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    if not (Path(cuda_home) / "bin" / "nvcc").is_file():
        pytest.skip(f"nvcc not found in {cuda_home} (set CUDA_HOME)")
    # One architecture keeps the build short: Hopper's, that of the H100 / H200 the GPU checks
    # run on (the sources hold nothing architecture-specific).
    env = dict(os.environ, CUDA_HOME=cuda_home, FORCE_CUDA="1", TORCH_CUDA_ARCH_LIST="9.0")
    build = subprocess.run(
        [sys.executable, "setup.py", "build_ext",
         "--build-lib", str(tmp_path / "lib"), "--build-temp", str(tmp_path / "temp")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True,
    )
    assert build.returncode == 0, build.stdout[-5000:] + build.stderr[-5000:]
    assert "nvcc" in build.stdout and "ms_deform_attn_cuda.cu" in build.stdout
    warnings = [line for line in (build.stdout + build.stderr).splitlines()
                if "warning" in line.lower() and "ms_deform_attn" in line]
    assert not warnings, "\n".join(warnings)
    libraries = list((tmp_path / "lib" / "grouppose").glob("_C*.so"))
    assert len(libraries) == 1
    # The host-side launch stubs are named after the kernels' template arguments (nm comes
    # with binutils, which the C++ build needs anyway).
    symbols = subprocess.run(["nm", "-C", str(libraries[0])], capture_output=True, text=True,
                             check=True).stdout
    for kernel in ("forward_kernel", "backward_kernel"):
        for types in KERNEL_TYPES:
            assert f"{kernel}<{', '.join(types)}>(" in symbols, (kernel, types)
    load = subprocess.run(
        [sys.executable, "-c", LOAD_AND_CHECK, str(libraries[0])],
        capture_output=True, text=True,
    )
    assert load.returncode == 0, load.stderr[-5000:]
