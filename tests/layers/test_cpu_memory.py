"""grouppose.layers.reuse_freed_memory: a forward's freed memory stays for the next one (no page
faults to take it back), and GroupPosePredictor applies it on the CPU."""

import subprocess
import sys
from unittest import mock

import pytest

from grouppose.layers import cpu_memory

# Run in a child: the setting lasts for the whole process. It allocates, fills and frees five
# 64 MB tensors twice (the first pass grows the heap) and prints the page faults of the second.
# 64 MB: above the largest mmap threshold glibc adapts to by itself (32 MB), as the backbone's
# first feature maps at 800x1333 are.
_FAULTS_OF_REUSED_TENSORS = """
import resource, sys, torch
from grouppose.layers import reuse_freed_memory
if sys.argv[1] == "reuse":
    assert reuse_freed_memory()
def faults():
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        x = torch.empty(16 << 20).fill_(1.0)
        del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start
faults()
print(faults())
"""

needs_glibc = pytest.mark.skipif(cpu_memory._glibc() is None, reason="needs glibc's mallopt")


def _faults(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", _FAULTS_OF_REUSED_TENSORS, mode],
                            capture_output=True, text=True, check=True)
    return int(result.stdout.split()[-1])


@needs_glibc
def test_freed_tensors_are_reused_without_page_faults():
    # 5 x 64 MB is 81920 pages of 4 KiB: glibc's defaults unmap each of these tensors when it
    # is freed, so every page faults again; kept, a few hundred at most (the interpreter's own).
    assert _faults("default") > 40000
    assert _faults("reuse") < 2000


def test_without_glibc_it_does_nothing():
    with mock.patch.object(cpu_memory, "_glibc", return_value=None):
        cpu_memory.reuse_freed_memory.cache_clear()
        try:
            assert cpu_memory.reuse_freed_memory() is False
        finally:
            cpu_memory.reuse_freed_memory.cache_clear()
