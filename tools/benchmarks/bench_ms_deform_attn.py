#!/usr/bin/env python
"""Benchmark the compiled ms_deform_attn op against the pure-PyTorch reference.

Times forward and forward+backward and measures the peak memory each needs beyond its inputs,
at Group Pose's shapes for an 800x1333 image (levels 100x167, 50x84, 25x42, 13x21; M=8 heads,
D=32, P=4 points, batch 1):
  encoder: every position queries (Lq = S = 22223);
  decoder: 100 instances x 18 queries (Lq = 1800).
Sampling locations are what the model produces: each query's reference point (its own cell
center in the encoder, a random point in the decoder) plus offsets of a few cells.

Usage: PYTHONPATH=projects/GroupPose python tools/benchmarks/bench_ms_deform_attn.py
       [--device cpu|cuda] [--threads T] [--repeats R]
"""

import argparse
import functools
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch

from grouppose.layers import ms_deform_attn, ms_deform_attn_reference

LEVEL_SHAPES = [(100, 167), (50, 84), (25, 42), (13, 21)]
HEADS, CHANNELS, POINTS = 8, 32, 4
DECODER_QUERIES = 100 * 18
OFFSET_STD_CELLS = 2.0
# CPU peak memory is read from the process's peak resident size; a fixed glibc mmap threshold
# makes every large tensor its own mapping, returned to the system when freed, so that freed
# memory does not stay resident and hide later allocations.
MMAP_THRESHOLD_ENV = "MALLOC_MMAP_THRESHOLD_"


def make_inputs(case: str, device: torch.device) -> List[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    spatial_shapes = torch.tensor(LEVEL_SHAPES, dtype=torch.int64)
    areas = spatial_shapes.prod(dim=1)
    level_start_index = torch.cumsum(areas, dim=0) - areas
    S = int(areas.sum())
    if case == "encoder":
        centers = []
        for height, width in LEVEL_SHAPES:
            y, x = torch.meshgrid(
                (torch.arange(height) + 0.5) / height, (torch.arange(width) + 0.5) / width,
                indexing="ij",
            )
            centers.append(torch.stack([x, y], dim=-1).reshape(-1, 2))
        reference_points = torch.cat(centers)[None]  # (1, S, 2)
    else:
        reference_points = torch.rand(1, DECODER_QUERIES, 2, generator=generator)
    Lq, L = reference_points.shape[1], len(LEVEL_SHAPES)
    level_sizes_xy = spatial_shapes.flip(-1).float()  # (L, 2) = (W, H)
    offsets = torch.randn(1, Lq, HEADS, L, POINTS, 2, generator=generator) * OFFSET_STD_CELLS
    locations = reference_points[:, :, None, None, None, :] + offsets / level_sizes_xy[:, None, :]
    weights = torch.rand(1, Lq, HEADS, L, POINTS, generator=generator)
    weights = weights / weights.sum(dim=(-2, -1), keepdim=True)
    value = torch.randn(1, S, HEADS, CHANNELS, generator=generator)
    inputs = [value, spatial_shapes, level_start_index, locations, weights]
    return [tensor.to(device) for tensor in inputs]


def forward(fn: Callable, inputs: List[torch.Tensor]) -> None:
    with torch.no_grad():
        fn(*inputs)


def forward_backward(fn: Callable, inputs: List[torch.Tensor]) -> None:
    value, spatial_shapes, level_start_index, locations, weights = inputs
    differentiable = [t.detach().requires_grad_() for t in (value, locations, weights)]
    output = fn(differentiable[0], spatial_shapes, level_start_index, *differentiable[1:])
    output.backward(torch.ones_like(output))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(step: Callable, device: torch.device, repeats: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_bytes(step: Callable, device: torch.device) -> int:
    """Peak memory that ``step`` needs beyond what is allocated when it starts."""
    step()  # warm-up: one-time allocations (thread pools, kernels) are not the op's
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    before = _proc_status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets the peak resident size (VmHWM) to the current one
    step()
    return (_proc_status_kib("VmHWM") - before) * 1024


def measure_impl(fn: Callable, inputs: List[torch.Tensor], device: torch.device,
                 repeats: int) -> Dict[str, float]:
    fwd = functools.partial(forward, fn, inputs)
    fwd_bwd = functools.partial(forward_backward, fn, inputs)
    return {
        "fwd_ms": 1e3 * median_seconds(fwd, device, repeats),
        "fwd_bwd_ms": 1e3 * median_seconds(fwd_bwd, device, repeats),
        "fwd_mib": peak_extra_bytes(fwd, device) / 2**20,
        "fwd_bwd_mib": peak_extra_bytes(fwd_bwd, device) / 2**20,
    }


def measure(case: str, device: torch.device, repeats: int) -> Dict[str, Dict[str, float]]:
    inputs = make_inputs(case, device)
    return {
        "compiled": measure_impl(ms_deform_attn, inputs, device, repeats),
        "reference": measure_impl(ms_deform_attn_reference, inputs, device, repeats),
    }


def print_table(all_results: Dict[str, Dict[str, Dict[str, float]]]) -> None:
    columns = ("fwd_ms", "fwd_bwd_ms", "fwd_mib", "fwd_bwd_mib")
    header = ("case", "impl", "fwd ms", "fwd+bwd ms", "fwd peak MiB", "fwd+bwd peak MiB")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for case, results in all_results.items():
        for impl, row in results.items():
            print(f"| {case} | {impl} | " + " | ".join(f"{row[c]:.1f}" for c in columns) + " |")
    print()
    print("| case | fwd speed-up | fwd+bwd speed-up | fwd memory ratio | fwd+bwd memory ratio |")
    print("|---|---|---|---|---|")
    for case, results in all_results.items():
        compiled, reference = results["compiled"], results["reference"]
        speedups = [reference[c] / compiled[c] for c in columns[:2]]
        memory = [compiled[c] / reference[c] for c in columns[2:]]
        print(f"| {case} | " + " | ".join(f"{s:.2f}x" for s in speedups) + " | "
              + " | ".join(f"{m:.3f}" for m in memory) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch default)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.device == "cpu" and MMAP_THRESHOLD_ENV not in os.environ:
        env = dict(os.environ, **{MMAP_THRESHOLD_ENV: str(64 * 1024)})
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} CPU threads, "
          f"median of {args.repeats} runs")
    print_table({case: measure(case, device, args.repeats) for case in ("encoder", "decoder")})


if __name__ == "__main__":
    main()
