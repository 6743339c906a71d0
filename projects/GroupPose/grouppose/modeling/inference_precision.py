"""The arithmetic of inference (``MODEL.GROUP_POSE.INFERENCE_PRECISION``), chosen per device.

bfloat16 autocast halves the time of the GEMMs only where the processor has fast bfloat16
matmuls (AMX, or AVX512-BF16 on some CPUs); elsewhere oneDNN emulates them and bf16 is *slower*
than fp32 (measured: 2.2x the fp32 GEMM rate on an AMD EPYC with AVX512-BF16, half of it on an
Intel Xeon with AVX512-BF16 but without AMX). So ``auto`` measures instead of guessing from CPU
flags: one cheap probe per process and device times a matmul of the model's shape in both dtypes,
and bf16 is taken only where it is clearly faster. An explicit ``bf16`` on a device where the
probe finds it slower runs as asked, with one warning that gives both rates.
"""

import functools
import logging
import time
from typing import NamedTuple, Optional, Tuple

import torch

from grouppose.config import AUTO_PRECISION, INFERENCE_DTYPES, INFERENCE_PRECISIONS

__all__ = [
    "MatmulRates",
    "matmul_gflops",
    "measured_matmul_rates",
    "resolve_inference_dtype",
]

# The probe's matmul: (tokens x C) @ (C x 4C), the shape of the encoder's linear layers (C = 256)
# on a few thousand tokens; 1.07 GFLOP, a few milliseconds in either dtype.
PROBE_SHAPE = (2048, 256, 1024)
PROBE_REPEATS = 5
# auto takes bf16 only above this speed-up of the probe's matmul: the GEMMs are about 60-70 % of
# a forward and autocast adds casts, so a smaller gain would not survive end to end (measured on
# the AMD EPYC above: GEMM 2.2x -> forward 1.7x).
AUTO_MIN_SPEEDUP = 1.3

_logger = logging.getLogger(__name__)


class MatmulRates(NamedTuple):
    """Measured matmul throughput of one device, GFLOP/s."""

    fp32: float
    bf16: float

    @property
    def bf16_speedup(self) -> float:
        return self.bf16 / self.fp32

    def __str__(self) -> str:
        return f"fp32 {self.fp32:.0f} GFLOP/s, bf16 {self.bf16:.0f} GFLOP/s"


def _synchronized_time(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def matmul_gflops(
    device: torch.device, dtype: torch.dtype, shape: Tuple[int, int, int], repeats: int
) -> float:
    """Throughput (GFLOP/s, 2 flops per multiply-add) of ``(m x k) @ (k x n)`` on ``device``:
    the best of ``repeats`` timed calls after one untimed one (the best, not the mean: a busy
    machine only ever slows a call down)."""
    m, k, n = shape
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(k, n, generator=generator).to(device=device, dtype=dtype)
    with torch.no_grad():
        torch.matmul(a, b)
        best = float("inf")
        for _ in range(repeats):
            start = _synchronized_time(device)
            torch.matmul(a, b)
            best = min(best, _synchronized_time(device) - start)
    return 2 * m * k * n / best / 1e9


@functools.cache
def _probe(device_type: str, device_index: Optional[int], threads: int) -> MatmulRates:
    device = torch.device(device_type, device_index)
    rates = MatmulRates(*(
        matmul_gflops(device, dtype, PROBE_SHAPE, PROBE_REPEATS)
        for dtype in (torch.float32, torch.bfloat16)
    ))
    _logger.info(f"matmul probe on {device} ({threads} threads): {rates}")
    return rates


def measured_matmul_rates(device: torch.device) -> MatmulRates:
    """fp32 and bf16 matmul rates of ``device``, measured once per process (and CPU thread
    count: the rates scale with it)."""
    device = torch.device(device)
    return _probe(device.type, device.index, torch.get_num_threads())


def resolve_inference_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype (None: float32) that ``precision`` (one of INFERENCE_PRECISIONS) means
    on ``device``: ``auto`` is bf16 where the probe measures bf16 matmuls at least
    AUTO_MIN_SPEEDUP times faster than fp32, else fp32."""
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"inference precision must be one of {list(INFERENCE_PRECISIONS)}, "
                         f"got {precision!r}")
    if precision == AUTO_PRECISION:
        rates = measured_matmul_rates(device)
        chosen = "bf16" if rates.bf16_speedup >= AUTO_MIN_SPEEDUP else "fp32"
        _logger.info(f"INFERENCE_PRECISION auto on {torch.device(device)}: {chosen} ({rates})")
        return INFERENCE_DTYPES[chosen]
    if precision == "bf16":
        rates = measured_matmul_rates(device)
        if rates.bf16 < rates.fp32:
            _warn_slow_bf16(str(torch.device(device)), rates)
    return INFERENCE_DTYPES[precision]


@functools.cache
def _warn_slow_bf16(device: str, rates: MatmulRates) -> None:
    """Once per device and rates: building several models should not repeat it."""
    _logger.warning(
        f"MODEL.GROUP_POSE.INFERENCE_PRECISION is bf16, but bf16 matmuls are slower than fp32 "
        f"on this {device} ({rates}): inference will be slower than with fp32 (use fp32, or "
        f"auto to choose by measurement)"
    )
