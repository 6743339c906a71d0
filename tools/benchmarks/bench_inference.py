#!/usr/bin/env python
"""Inference benchmark of a Group Pose model: latency, peak memory, GFLOPs and time per stage.

    python tools/benchmarks/bench_inference.py --config-file configs/Base-GroupPose.yaml \
        [--weights model.pth] [--sizes 480x800 800x1333] [--warmup 1] [--runs 3]

For each input size (H x W, batch 1, image already in memory, as the paper's Table 6) it runs
the model with (a) the compiled deformable-attention op and (b) the pure-PyTorch reference op,
and prints the median latency after warm-up, the peak memory, the ratio (b) / (a), the GFLOPs
(fvcore; one multiply-add = one flop, as Detectron2 reports them) and the time spent in each
stage. On CUDA (``--device cuda``) it also runs fp16 and bf16 autocast and prints FPS.

Each configuration runs in its own process so that peak memory is its own: on the CPU the peak
resident set size during inference (Linux), on CUDA the peak of PyTorch's allocator.
"""

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from typing import Callable, Dict, List, Optional, Tuple
from unittest import mock

import grouppose  # noqa: F401  (first: it quiets a warning of Detectron2's imports)

# isort: split
import torch
from detectron2.modeling import build_model
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape

from grouppose.checkpoint import SafeCheckpointer, add_trust_pickle_argument
from grouppose.export import GroupPoseExportModule
from grouppose.layers import ms_deform_attn_reference
from grouppose.predictor import build_inference_config

OPS = ("compiled", "reference")
DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
# Model parts per stage, in order; the rest of the forward (normalisation and padding, masks,
# position encodings, flattening) is reported as "other".
STAGE_MODULES = {
    "backbone": ("backbone", "input_proj"),
    "encoder": ("encoder",),
    "query selection": ("query_selection", "queries"),
    "decoder": ("decoder",),
}
POSTPROCESS_STAGE = "post-processing"
OTHER_STAGE = "other"
_OP_MODULE = "grouppose.layers.ms_deform_attn"
_OP_NAME = "grouppose::ms_deform_attn"
_MIB = 2**20
# Deformable attention, per sampling point and channel: bilinear interpolation (4 multiply-adds)
# and the attention weighting (1 multiply-add).
_DEFORM_ATTN_MACS_PER_SAMPLE_CHANNEL = 5


def parse_size(text: str) -> List[int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"size must be HxW, e.g. 800x1333, got '{text}'"
        ) from None
    return [height, width]


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--weights", help="checkpoint (default: MODEL.WEIGHTS, else random)")
    parser.add_argument("--sizes", nargs="+", type=parse_size,
                        default=[[480, 800], [800, 1333]], help="input sizes HxW")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES),
                        help="default: fp32 on the CPU; fp32, fp16 and bf16 on CUDA")
    parser.add_argument("--threads", type=int,
                        help="CPU threads (torch.set_num_threads); default: PyTorch's choice")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    parser.add_argument("--runs", type=int, default=3, help="timed runs (median reported)")
    parser.add_argument("--no-flops", action="store_true", help="skip the GFLOPs count")
    parser.add_argument("--json", metavar="FILE", help="also write all results to FILE")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER,
                        help="config overrides: KEY VALUE pairs")
    add_trust_pickle_argument(parser)
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one configuration, as JSON
    return parser


# ------------------------------------------------------------------------------------------
# Worker: one (size, op, dtype) configuration in a fresh process.


def _reset_peak_rss() -> None:
    """Make the process's peak RSS (VmHWM) start again from its current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _rss_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / _MIB
    raise RuntimeError(f"{field} not in /proc/self/status")


def device_time(device: torch.device) -> float:
    """perf_counter() once ``device`` has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class StageTimer:
    """Wall time of each stage of the forward, through module hooks. While ``enabled`` it
    synchronises CUDA at every stage boundary, which slows the forward down a little."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        self.device = device
        self.enabled = True
        self.totals: Dict[str, float] = {}
        self._starts: Dict[str, float] = {}
        for stage, names in STAGE_MODULES.items():
            for name in names:
                module = getattr(model, name, None)
                if module is None:
                    raise ValueError(f"the model has no submodule '{name}' (stage '{stage}')")
                module.register_forward_pre_hook(self._starter(stage))
                module.register_forward_hook(self._stopper(stage))

    def _starter(self, stage: str) -> Callable:
        def hook(module, inputs):
            if self.enabled:
                self._starts[stage] = device_time(self.device)
        return hook

    def _stopper(self, stage: str) -> Callable:
        def hook(module, inputs, outputs):
            if self.enabled:
                self.add(stage, device_time(self.device) - self._starts.pop(stage))
        return hook

    def add(self, stage: str, seconds: float) -> None:
        self.totals[stage] = self.totals.get(stage, 0.0) + seconds

    def timed(self, stage: str, function: Callable) -> Callable:
        """``function`` with its calls' time added to ``stage`` (while enabled)."""
        def wrapper(*args, **kwargs):
            if not self.enabled:
                return function(*args, **kwargs)
            start = device_time(self.device)
            result = function(*args, **kwargs)
            self.add(stage, device_time(self.device) - start)
            return result
        return wrapper

    def take(self) -> Dict[str, float]:
        """Per-stage seconds since the last call."""
        totals, self.totals = self.totals, {}
        return totals


def time_forwards(model, image: torch.Tensor, timer: StageTimer, count: int
                  ) -> Tuple[List[float], List[Dict[str, float]], List[Dict]]:
    """``count`` forwards of one image: latencies (s), stage splits (when the timer is
    enabled; the remainder of the forward is "other") and the last outputs."""
    latencies, splits, outputs = [], [], None
    for _ in range(count):
        start = device_time(timer.device)
        outputs = model([{"image": image}])
        latencies.append(device_time(timer.device) - start)
        split = timer.take()
        if timer.enabled:
            split[OTHER_STAGE] = latencies[-1] - sum(split.values())
            splits.append(split)
    return latencies, splits, outputs


def deform_attn_flop_handle(inputs, outputs) -> int:
    """fvcore handle for the op: value (N, S, M, D), ..., attention_weights (N, Lq, M, L, P)."""
    channels = get_shape(inputs[0])[-1]
    samples = 1
    for size in get_shape(inputs[4]):
        samples *= size
    return samples * channels * _DEFORM_ATTN_MACS_PER_SAMPLE_CHANNEL


def attention_flop_handle(inputs, outputs) -> int:
    """fvcore handle for scaled_dot_product_attention: query (..., Lq, E), key (..., Lk, E),
    value (..., Lk, Ev): Q K^T and the weighted sum of the values."""
    *batch, queries, channels = get_shape(inputs[0])
    keys, value_channels = get_shape(inputs[2])[-2:]
    batch_size = 1
    for size in batch:
        batch_size *= size
    return batch_size * queries * keys * (channels + value_channels)


def count_gflops(model, image: torch.Tensor) -> Dict[str, float]:
    """GFLOPs of the network (post-processing has none), total and per stage."""
    module = GroupPoseExportModule(model)
    with torch.no_grad():
        normalized = module.normalize(image[None])
    flops = FlopCountAnalysis(module, (normalized,))
    flops.set_op_handle(_OP_NAME, deform_attn_flop_handle)
    flops.set_op_handle("aten::scaled_dot_product_attention", attention_flop_handle)
    flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    flops.tracer_warnings("none")
    by_module = flops.by_module()
    result = {"total": flops.total() / 1e9}
    for stage, names in STAGE_MODULES.items():
        result[stage] = sum(by_module[f"model.{name}"] for name in names) / 1e9
    result["not counted"] = sorted(flops.unsupported_ops())
    return result


def run_worker(spec: Dict) -> Dict:
    """Benchmark one configuration (see ``run_configuration`` for ``spec``)."""
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    cfg = build_inference_config(spec["config_file"], spec["weights"], spec["device"],
                                 spec["opts"])
    device = torch.device(cfg.MODEL.DEVICE)
    model = build_model(cfg).eval()
    SafeCheckpointer(model, trust_pickle=spec["trust_pickle"]).load(cfg.MODEL.WEIGHTS)
    height, width = spec["size"]
    image = torch.rand((3, height, width), generator=torch.Generator().manual_seed(0)) * 255
    image = image.to(device)
    autocast_dtype = DTYPES[spec["dtype"]]
    timer = StageTimer(model, device)
    meta_arch = importlib.import_module("grouppose.meta_arch")

    with ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        if spec["op"] == "reference":
            op_module = importlib.import_module(_OP_MODULE)
            stack.enter_context(mock.patch.object(op_module, "ms_deform_attn",
                                                  ms_deform_attn_reference))
        elif not torch._C._dispatch_has_kernel_for_dispatch_key(
            _OP_NAME, "CUDA" if device.type == "cuda" else "CPU"
        ):
            raise RuntimeError(f"the compiled op has no {device.type} kernel: build grouppose._C")
        stack.enter_context(mock.patch.object(
            meta_arch, "poses_to_instances",
            timer.timed(POSTPROCESS_STAGE, meta_arch.poses_to_instances),
        ))
        if autocast_dtype is not None:
            stack.enter_context(torch.autocast(device.type, dtype=autocast_dtype))

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        else:
            _reset_peak_rss()
        rss_before = _rss_mib("VmRSS") if device.type == "cpu" else 0.0
        # On CUDA the stage split's synchronisations would slow the timed forwards down: time
        # them without it, then split separate forwards. On the CPU the split costs nothing.
        timer.enabled = device.type != "cuda"
        time_forwards(model, image, timer, spec["warmup"])
        latencies, splits, outputs = time_forwards(model, image, timer, spec["runs"])
        if not timer.enabled:
            timer.enabled = True
            _, splits, _ = time_forwards(model, image, timer, spec["runs"])

    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / _MIB
        working = peak - sum(p.numel() * p.element_size() for p in model.parameters()) / _MIB
    else:
        peak = _rss_mib("VmHWM")
        working = peak - rss_before
    result = {
        **{key: spec[key] for key in ("size", "op", "dtype")},
        "device": str(device),
        "threads": torch.get_num_threads(),
        "latency_ms": statistics.median(latencies) * 1000,
        "latencies_ms": [t * 1000 for t in latencies],
        "stages_ms": {
            stage: statistics.median(split.get(stage, 0.0) for split in splits) * 1000
            for stage in [*STAGE_MODULES, POSTPROCESS_STAGE, OTHER_STAGE]
        },
        "peak_memory_mib": peak,
        "inference_memory_mib": working,
        "people": len(outputs[0]["instances"]),
    }
    if spec["flops"]:
        result["gflops"] = count_gflops(model, image)
    return result


# ------------------------------------------------------------------------------------------
# Driver: one worker process per configuration, then the tables.


def run_configuration(args, size: List[int], op: str, dtype: str, flops: bool) -> Dict:
    spec = {
        "config_file": args.config_file, "weights": args.weights, "device": args.device,
        "opts": args.opts, "size": size, "op": op, "dtype": dtype, "warmup": args.warmup,
        "runs": args.runs, "flops": flops, "threads": args.threads,
        "trust_pickle": args.trust_pickle,
    }
    label = f"{size[0]}x{size[1]} {op} op {dtype}"
    print(f"running {label} ...", file=sys.stderr, flush=True)
    completed = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--config-file", args.config_file,
         "--worker", json.dumps(spec)],
        capture_output=True, text=True,
    )
    if completed.returncode != 0:
        error = completed.stderr.strip().splitlines()[-1:] or ["(no output)"]
        print(f"  {label} failed: {error[0]}", file=sys.stderr)
        return {**spec, "error": error[0]}
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    print(f"  {result['latency_ms']:.1f} ms, peak {result['peak_memory_mib']:.0f} MiB",
          file=sys.stderr, flush=True)
    return result


def print_results(results: List[Dict]) -> None:
    ok = [r for r in results if "error" not in r]
    print("\n| size | op | dtype | latency ms (median) | FPS | peak memory MiB "
          "| of which inference MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in ok:
        print(f"| {r['size'][0]}x{r['size'][1]} | {r['op']} | {r['dtype']} "
              f"| {r['latency_ms']:.1f} | {1000 / r['latency_ms']:.2f} "
              f"| {r['peak_memory_mib']:.0f} | {r['inference_memory_mib']:.0f} |")
    for r in results:
        if "error" in r:
            print(f"| {r['size'][0]}x{r['size'][1]} | {r['op']} | {r['dtype']} "
                  f"| failed: {r['error']} | | | |")

    print("\nreference op / compiled op, end-to-end latency:")
    for r in ok:
        if r["op"] != "reference":
            continue
        compiled = [c for c in ok if c["op"] == "compiled" and c["size"] == r["size"]
                    and c["dtype"] == r["dtype"]]
        if compiled:
            print(f"  {r['size'][0]}x{r['size'][1]} {r['dtype']}: "
                  f"{r['latency_ms'] / compiled[0]['latency_ms']:.2f}x")

    stages = [*STAGE_MODULES, POSTPROCESS_STAGE, OTHER_STAGE]
    print("\ntime per stage, ms (median over the timed runs):")
    print("| size | op | dtype | " + " | ".join(stages) + " |")
    print("| --- " * (3 + len(stages)) + "|")
    for r in ok:
        print(f"| {r['size'][0]}x{r['size'][1]} | {r['op']} | {r['dtype']} | "
              + " | ".join(f"{r['stages_ms'][s]:.1f}" for s in stages) + " |")

    counted = [r for r in ok if "gflops" in r]
    if counted:
        print("\nGFLOPs (fvcore, 1 multiply-add = 1 flop; deformable attention counted as 5 "
              "multiply-adds per sampling point and channel):")
        for r in counted:
            g = r["gflops"]
            parts = ", ".join(f"{s} {g[s]:.2f}" for s in STAGE_MODULES)
            print(f"  {r['size'][0]}x{r['size'][1]}: {g['total']:.2f} ({parts}); "
                  f"ops not counted: {', '.join(g['not counted']) or 'none'}")
    if ok:
        print(f"\ndevice: {ok[0]['device']}, torch threads: {ok[0]['threads']}, "
              f"torch {torch.__version__}, {ok[0]['people']} poses returned")


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    dtypes = args.dtypes or (["fp32"] if args.device == "cpu" else list(DTYPES))
    results = []
    for size in args.sizes:
        for dtype in dtypes:
            for index, op in enumerate(args.ops):
                flops = not args.no_flops and index == 0 and dtype == "fp32"
                results.append(run_configuration(args, size, op, dtype, flops))
                if args.json:  # after each configuration, so that an interrupted run keeps it
                    with open(args.json, "w") as f:
                        json.dump(results, f, indent=1)
    print_results(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
