"""Keep the memory a CPU forward frees in the process, for the next forward to reuse.

A forward at 800x1333 allocates and frees hundreds of tensors of 1-70 MB (feature maps, the
encoder's 22223 x 256 activations). glibc's malloc hands blocks above its mmap threshold (at
most 32 MB by default) back to the kernel when they are freed, and trims the top of its heap
once 64 MB there are free; the next forward then takes every such page again through a page
fault, and the kernel zeroes it. Measured on a 2-core AMD EPYC (docs/speed.md): 210-250
thousand page faults and 0.6-0.7 s of system time per ResNet-50 forward at 800x1333, 3.7 s
instead of 4.3 s once the memory is kept. The cost is that the process keeps its peak
inference memory (about 0.6 GB there) after a forward instead of returning it.

``reuse_freed_memory()`` raises both thresholds for the whole process (glibc's ``mallopt``);
``GroupPosePredictor`` calls it when it runs on the CPU. Elsewhere (another C library, or where
``mallopt`` is missing) it does nothing and returns False.
"""

import ctypes
import ctypes.util
import functools
from typing import Optional

__all__ = ["reuse_freed_memory"]

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap and stay there when freed; larger ones are mapped
# and unmapped as before (a tensor of over 1 GiB is rare at inference, and mapping it once is
# cheap next to filling it). mallopt takes a C int.
KEEP_BYTES = 1 << 30


@functools.cache
def _glibc() -> Optional[ctypes.CDLL]:
    """The C library when it is glibc (it has ``gnu_get_libc_version`` and ``mallopt``)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not (hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt")):
        return None
    return libc


@functools.cache
def reuse_freed_memory() -> bool:
    """Make glibc keep freed blocks of up to ``KEEP_BYTES`` in the process (once per process).

    Returns:
        True where it took effect (glibc accepted both settings), else False.
    """
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, KEEP_BYTES)
    )
