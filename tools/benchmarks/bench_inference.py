#!/usr/bin/env python
"""Inference benchmark of a Group Pose model: every inference mode side by side, interleaved.

    python tools/benchmarks/bench_inference.py --config-file configs/Base-GroupPose.yaml \
        --weights "" --threads 2 [--sizes 480x800 800x1333] [--modes fp32 bf16 reference] \
        [--warmup 1] [--runs 5] [--json results.json]

For each input size (H x W, batch 1, the image already in memory, as the paper's Table 6) one
process builds the model once and runs the modes in turns: after the warm-up, each round runs
every mode once (in a rotated order) and measures this device's GEMM throughput, so that a noisy,
shared machine slows all of them alike. It prints per mode the median latency and its spread,
FPS, the time per stage, the inference memory, the speed-up over the reference mode and the
ratio to the fp32 GEMM roofline: the time the model's multiply-adds (fvcore) would take at the
measured throughput of a large float32 matmul.

Modes (``--modes``; default: fp32, bf16 and reference on the CPU, fp32, tf32, fp16 and bf16 on
CUDA):
    fp32       the default path: compiled op and, on the CPU, the fused inference paths
               (``grouppose.layers.plain_inference``); on CUDA PyTorch's TF32 defaults
    bf16/fp16  MODEL.GROUP_POSE.INFERENCE_PRECISION bf16 / fp16 (autocast)
    tf32       CUDA, TF32 matmuls and convolutions
    reference  the pure-PyTorch deformable attention and no fused paths, float32: how the
               official implementation computes
    onnxruntime  CPU, the model exported for this size by grouppose.deploy.export_onnx and run
               by ONNX Runtime (OnnxPosePredictor.run_network, same threads); no stage split
The CPU default adds onnxruntime when ONNX Runtime is installed (``pip install -e .[deploy]``).
Memory is measured for one more forward per mode, apart from the timed ones: on the CPU the
growth of the resident set size (Linux), on CUDA the peak of PyTorch's allocator; not for
onnxruntime, whose arena keeps its memory between calls.
"""

import argparse
import ctypes
import functools
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence
from unittest import mock

import grouppose  # noqa: F401  (first: it quiets a warning of Detectron2's imports)

# isort: split
import torch
from detectron2.modeling import build_model
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape

import grouppose.modeling.meta_arch as meta_arch
from grouppose.checkpoint import SafeCheckpointer, add_trust_pickle_argument
from grouppose.collect_env import cpu_info, format_cpu_info
from grouppose.deploy import GroupPoseExportModule, OnnxPosePredictor, export_onnx
from grouppose.evaluation.inference_modes import (
    DEFAULT_MODES,
    MODES,
    OUT_OF_THE_BOX_MODE,
    REFERENCE_MODE,
    check_mode,
    inference_mode,
)
from grouppose.layers import reuse_freed_memory
from grouppose.modeling.inference_precision import matmul_gflops, measured_matmul_rates
from grouppose.predictor import build_inference_config

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
STAGES = [*STAGE_MODULES, POSTPROCESS_STAGE, OTHER_STAGE]
_OP_NAME = "grouppose::ms_deform_attn"
_MIB = 2**20
# Deformable attention, per sampling point and channel: bilinear interpolation (4 multiply-adds)
# and the attention weighting (1 multiply-add).
_DEFORM_ATTN_MACS_PER_SAMPLE_CHANNEL = 5
# The GEMM whose throughput defines the roofline: (n x n) @ (n x n), large enough to run at
# the BLAS's full speed, small enough to take milliseconds.
GEMM_SIZE = 2048
GEMM_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# The deployed model: an ONNX export run by ONNX Runtime, a column next to the PyTorch modes.
ONNX_MODE = "onnxruntime"


def onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def default_modes(device: torch.device) -> List[str]:
    """DEFAULT_MODES of the device, less bf16 on a CPU whose bf16 matmuls the precision probe
    measures slower than fp32 (without bf16 instructions they run 50-100x slower: the mode
    would take most of the benchmark's time to say what the probe already says); plus
    onnxruntime on the CPU where it is installed. ``--modes bf16`` still measures it."""
    modes = list(DEFAULT_MODES[device.type])
    if device.type == "cpu":
        rates = measured_matmul_rates(device)
        if rates.bf16 < rates.fp32:
            print(f"bf16 left out of the default modes: slower than fp32 on this CPU ({rates})",
                  file=sys.stderr)
            modes.remove("bf16")
        if onnxruntime_installed():
            modes.append(ONNX_MODE)
    return modes


def parse_size(text: str) -> List[int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"size must be HxW, e.g. 800x1333, got '{text}'"
        ) from None
    return [height, width]


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[2],
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--weights", help="checkpoint (default: MODEL.WEIGHTS, else random)")
    parser.add_argument("--sizes", nargs="+", type=parse_size,
                        default=[[480, 800], [800, 1333]], help="input sizes HxW")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--modes", nargs="+", choices=[*MODES, ONNX_MODE],
                        help="default: " + "; ".join(
                            f"{device}: {' '.join(modes)}" for device, modes in
                            DEFAULT_MODES.items()) + f" (and {ONNX_MODE} if installed)")
    parser.add_argument("--threads", type=int,
                        help="CPU threads (torch.set_num_threads); default: PyTorch's choice")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each mode first")
    parser.add_argument("--runs", type=int, default=5,
                        help="timed rounds (each runs every mode once; medians reported)")
    parser.add_argument("--gemm-size", type=int, default=GEMM_SIZE,
                        help="n of the n x n matmul whose fp32 rate is the roofline "
                             "(default: %(default)s)")
    parser.add_argument("--no-flops", action="store_true",
                        help="skip the GFLOPs count (and so the roofline ratios)")
    parser.add_argument("--json", metavar="FILE", help="also write all results to FILE")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER,
                        help="config overrides: KEY VALUE pairs")
    add_trust_pickle_argument(parser)
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one size, as JSON
    return parser


# ------------------------------------------------------------------------------------------
# Measurements


def device_time(device: torch.device) -> float:
    """perf_counter() once ``device`` has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def gemm_gflops(device: torch.device, dtype: torch.dtype, size: int = GEMM_SIZE) -> float:
    """Throughput of a large (size x size) matmul on ``device`` (GFLOP/s, 2 flops per
    multiply-add)."""
    return matmul_gflops(device, dtype, (size,) * 3, repeats=3)


class MemoryMeter:
    """Memory one forward adds: the growth of the CPU resident set size (its peak minus its size
    before), or the peak of PyTorch's CUDA allocator above what it held before."""

    def __init__(self, device: torch.device):
        self.device = device
        # glibc keeps freed memory for reuse: a warm process would show no growth. malloc_trim
        # returns it to the system first (where glibc is the C library; else growth is a floor).
        self._malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)

    def forward_mib(self, forward: Callable[[], object]) -> float:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            forward()
            return (torch.cuda.max_memory_allocated(self.device) - before) / _MIB
        if self._malloc_trim is not None:
            self._malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:  # peak RSS := current RSS
            f.write("5")
        before = self._rss("VmRSS")
        forward()
        return (self._rss("VmHWM") - before) / _MIB

    @staticmethod
    def _rss(field: str) -> float:
        """VmRSS (now) or VmHWM (peak) of this process, bytes."""
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"{field} not in /proc/self/status")


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

    def take(self, latency: float) -> Dict[str, float]:
        """Per-stage seconds since the last call; the rest of ``latency`` is "other"."""
        totals, self.totals = self.totals, {}
        totals[OTHER_STAGE] = latency - sum(totals.values())
        return totals


def deform_attn_flop_handle(inputs, outputs) -> int:
    """fvcore handle for the op: value (B, S, M, D), ..., attention_weights (B, Lq, M, L, P)."""
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


def multi_head_attention_flop_handle(inputs, outputs) -> int:
    """fvcore handle for _native_multi_head_attention (nn.MultiheadAttention's inference path):
    query (B, Lq, E), key (B, Lk, E), ...: the input projections of the queries and of the keys
    and values, Q K^T and the weighted sum over all heads, the output projection."""
    batch, queries, channels = get_shape(inputs[0])
    keys = get_shape(inputs[1])[1]
    projections = (2 * queries + 2 * keys) * channels * channels
    return batch * (projections + 2 * queries * keys * channels)


def count_gflops(model, image: torch.Tensor) -> Dict:
    """GFLOPs of the network (post-processing has none), total and per stage; fvcore counts
    one multiply-add as one flop, as Detectron2 reports them."""
    module = GroupPoseExportModule(model)
    with torch.no_grad():
        normalized = module.normalize(image[None])
    flops = FlopCountAnalysis(module, (normalized,))
    flops.set_op_handle(_OP_NAME, deform_attn_flop_handle)
    flops.set_op_handle("aten::scaled_dot_product_attention", attention_flop_handle)
    flops.set_op_handle("aten::_native_multi_head_attention", multi_head_attention_flop_handle)
    flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    flops.tracer_warnings("none")
    by_module = flops.by_module()
    result = {"total": flops.total() / 1e9}
    for stage, names in STAGE_MODULES.items():
        result[stage] = sum(by_module[f"model.{name}"] for name in names) / 1e9
    result["not counted"] = sorted(flops.unsupported_ops())
    return result


# ------------------------------------------------------------------------------------------
# Worker: every mode of one size in one process.


def check_modes(modes: Sequence[str], device: torch.device) -> None:
    for name in modes:
        if name == ONNX_MODE:
            if device.type != "cpu":
                raise SystemExit(f"--modes: {ONNX_MODE} is measured on the cpu only")
            if not onnxruntime_installed():
                raise SystemExit(f"--modes: {ONNX_MODE} needs ONNX Runtime: "
                                 "pip install -e .[deploy]")
            continue
        try:
            check_mode(name, device)
        except ValueError as error:
            raise SystemExit(f"--modes: {error}") from None
    dispatch_key = "CUDA" if device.type == "cuda" else "CPU"
    if "compiled" in {MODES[name].op for name in modes if name in MODES} and (
        not torch._C._dispatch_has_kernel_for_dispatch_key(_OP_NAME, dispatch_key)
    ):
        raise SystemExit(f"the compiled op has no {device.type} kernel: build grouppose._C")


def run_worker(spec: Dict) -> List[Dict]:
    """Benchmark every mode of ``spec["modes"]`` at one size (see ``run_size`` for ``spec``)."""
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    cfg = build_inference_config(spec["config_file"], spec["weights"], spec["device"],
                                 spec["opts"])
    device = torch.device(cfg.MODEL.DEVICE)
    check_modes(spec["modes"], device)
    model = build_model(cfg).eval()
    SafeCheckpointer(model, trust_pickle=spec["trust_pickle"]).load(cfg.MODEL.WEIGHTS)
    if device.type == "cpu":
        reuse_freed_memory()  # as GroupPosePredictor does: every mode, the reference included
    height, width = spec["size"]
    image = torch.rand((3, height, width), generator=torch.Generator().manual_seed(0)) * 255
    image = image.to(device)
    timer = StageTimer(model, device)
    meter = MemoryMeter(device)
    modes = spec["modes"]
    torch_modes = [name for name in modes if name != ONNX_MODE]
    latencies: Dict[str, List[float]] = {name: [] for name in modes}
    splits: Dict[str, List[Dict[str, float]]] = {name: [] for name in modes}
    people: Dict[str, int] = {}
    # The bf16 GEMM only where a bf16 mode runs: without bf16 instructions it takes minutes.
    gemm: Dict[str, List[float]] = {
        name: [] for name in GEMM_DTYPES
        if name == "fp32" or any(MODES[m].dtype == name for m in torch_modes)
    }

    onnx_forward = build_onnx_forward(model, image, spec["threads"]) if ONNX_MODE in modes \
        else None

    def forward(name: str) -> float:
        if name == ONNX_MODE:
            start = time.perf_counter()
            scores = onnx_forward()
            latency = time.perf_counter() - start
            people[name] = scores.shape[1]
            return latency
        with inference_mode(model, name):
            start = device_time(device)
            outputs = model([{"image": image}])
            latency = device_time(device) - start
        people[name] = len(outputs[0]["instances"])
        return latency

    postprocess = timer.timed(POSTPROCESS_STAGE, meta_arch.poses_to_instances)
    with torch.no_grad(), mock.patch.object(meta_arch, "poses_to_instances", postprocess):
        # On CUDA the stage split's synchronisations would slow the timed forwards down: they
        # are timed without it, and the split comes from extra forwards. On the CPU it is free.
        timer.enabled = device.type != "cuda"
        for name in modes:
            for _ in range(spec["warmup"]):
                forward(name)
            timer.take(0.0)
        for round_index in range(spec["runs"]):
            for dtype in gemm:
                gemm[dtype].append(gemm_gflops(device, GEMM_DTYPES[dtype], spec["gemm_size"]))
            # Rotated so that no mode always runs right after the GEMM or another mode.
            shift = round_index % len(modes)
            for name in modes[shift:] + modes[:shift]:
                latency = forward(name)
                latencies[name].append(latency)
                if timer.enabled and name != ONNX_MODE:
                    splits[name].append(timer.take(latency))
        if not timer.enabled:
            timer.enabled = True
            for name in torch_modes:
                for _ in range(spec["runs"]):
                    splits[name].append(timer.take(forward(name)))
        # Apart from the timed forwards: giving memory back to the system costs page faults.
        # ONNX Runtime keeps its arena between calls: a call's growth would read as zero.
        memory = {name: meter.forward_mib(functools.partial(forward, name))
                  for name in torch_modes}
        gflops = count_gflops(model, image) if spec["flops"] else None

    gemm_median = {dtype: statistics.median(values) for dtype, values in gemm.items()}
    results = []
    for name in modes:
        result = {
            "size": spec["size"], "mode": name, "default": name == OUT_OF_THE_BOX_MODE,
            **mode_description(name), "device": str(device),
            "threads": torch.get_num_threads(),
            "latency_ms": statistics.median(latencies[name]) * 1000,
            "latencies_ms": [t * 1000 for t in latencies[name]],
            "stages_ms": {
                stage: statistics.median(split.get(stage, 0.0) for split in splits[name]) * 1000
                for stage in STAGES
            } if splits[name] else None,
            "inference_memory_mib": memory.get(name),
            "people": people[name],
            "gemm_gflops": gemm_median,
            "gemm_size": spec["gemm_size"],
            "cpu": cpu_info(),
            "matmul_probe_gflops": measured_matmul_rates(device)._asdict(),
        }
        if device.type == "cuda":
            tf32 = result["dtype"] == "tf32"
            result["tf32"] = {"matmul": tf32 or torch.backends.cuda.matmul.allow_tf32,
                              "cudnn": tf32 or torch.backends.cudnn.allow_tf32}
        if gflops is not None:
            # fvcore's flops are multiply-adds: the roofline does 2 flops per multiply-add.
            roofline_ms = 2 * gflops["total"] / gemm_median["fp32"] * 1000
            result.update(gflops=gflops, fp32_roofline_ms=roofline_ms,
                          roofline_ratio=result["latency_ms"] / roofline_ms)
        results.append(result)
    return results


def mode_description(name: str) -> Dict:
    """What a mode runs: the deformable-attention op, the dtype, whether the paths are plain."""
    if name == ONNX_MODE:
        return {"op": "onnx", "dtype": "fp32", "plain": False}
    mode = MODES[name]
    return {"op": mode.op, "dtype": mode.dtype, "plain": mode.plain}


def build_onnx_forward(model, image: torch.Tensor, threads: Optional[int]) -> Callable:
    """Export ``model`` for ``image``'s size and return a function that runs the export once
    on ``image`` in ONNX Runtime and returns its scores."""
    height, width = image.shape[1:]
    with tempfile.TemporaryDirectory() as folder:
        path = export_onnx(model, os.path.join(folder, "model.onnx"), height=height, width=width)
        predictor = OnnxPosePredictor(path, num_threads=threads)
    images = image[None].cpu().numpy()
    return lambda: predictor.run_network(images)[0]


# ------------------------------------------------------------------------------------------
# Driver: one worker process per size, then the tables.


def run_size(args, size: List[int], modes: List[str]) -> List[Dict]:
    spec = {
        "config_file": args.config_file, "weights": args.weights, "device": args.device,
        "opts": args.opts, "size": size, "modes": modes, "warmup": args.warmup,
        "runs": args.runs, "flops": not args.no_flops, "threads": args.threads,
        "trust_pickle": args.trust_pickle, "gemm_size": args.gemm_size,
    }
    label = f"{size[0]}x{size[1]} ({', '.join(modes)})"
    print(f"running {label} ...", file=sys.stderr, flush=True)
    completed = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--config-file", args.config_file,
         "--worker", json.dumps(spec)],
        capture_output=True, text=True,
    )
    if completed.returncode != 0:
        error = completed.stderr.strip().splitlines()[-1:] or ["(no output)"]
        print(f"  {label} failed: {error[0]}", file=sys.stderr)
        return [{"size": size, "mode": name, "default": name == OUT_OF_THE_BOX_MODE,
                 **mode_description(name), "error": error[0]} for name in modes]
    results = json.loads(completed.stdout.strip().splitlines()[-1])
    for r in results:
        print(f"  {r['mode']}: {r['latency_ms']:.1f} ms", file=sys.stderr, flush=True)
    return results


def size_label(result: Dict) -> str:
    return f"{result['size'][0]}x{result['size'][1]}"


def print_results(results: List[Dict]) -> None:
    ok = [r for r in results if "error" not in r]
    if ok:
        gemm = ", ".join(f"{dtype} {value:.0f}" for dtype, value in ok[0]["gemm_gflops"].items())
        probe = ", ".join(f"{dtype} {value:.0f}"
                          for dtype, value in ok[0]["matmul_probe_gflops"].items())
        print(f"\nCPU: {format_cpu_info(ok[0]['cpu'])}\nGEMM {ok[0]['gemm_size']}^3 GFLOP/s "
              f"({ok[0]['size'][0]}x{ok[0]['size'][1]} rounds' median): {gemm}; precision "
              f"probe GFLOP/s: {probe}")
    print("\n| size | mode | dtype | latency ms (median) | spread ms (min-max) | FPS "
          "| x fp32 GEMM roofline | speed-up over reference | inference memory MiB |")
    print("| --- " * 9 + "|")
    for r in results:
        if "error" in r:
            print(f"| {size_label(r)} | {r['mode']} | {r['dtype']} | failed: {r['error']} "
                  "| | | | | |")
            continue
        reference = [c for c in ok if c["mode"] == REFERENCE_MODE and c["size"] == r["size"]]
        speedup = f"{reference[0]['latency_ms'] / r['latency_ms']:.2f}x" if reference else "-"
        ratio = f"{r['roofline_ratio']:.2f}" if "roofline_ratio" in r else "-"
        memory = r["inference_memory_mib"]
        print(f"| {size_label(r)} | {r['mode']}{' (default)' if r['default'] else ''} "
              f"| {r['dtype']} | {r['latency_ms']:.1f} "
              f"| {min(r['latencies_ms']):.1f}-{max(r['latencies_ms']):.1f} "
              f"| {1000 / r['latency_ms']:.2f} | {ratio} | {speedup} "
              f"| {'-' if memory is None else f'{memory:.0f}'} |")

    print("\ntime per stage, ms (median over the timed runs):")
    print("| size | mode | " + " | ".join(STAGES) + " |")
    print("| --- " * (2 + len(STAGES)) + "|")
    for r in ok:
        stages = r["stages_ms"] or dict.fromkeys(STAGES)
        print(f"| {size_label(r)} | {r['mode']} | " + " | ".join(
            "-" if stages[s] is None else f"{stages[s]:.1f}" for s in STAGES) + " |")

    first_per_size = {size_label(r): r for r in reversed(ok)}
    for label, r in first_per_size.items():
        gemm = ", ".join(f"{dtype} {value:.0f}" for dtype, value in r["gemm_gflops"].items())
        line = f"\n{label}: GEMM {r['gemm_size']}^3 GFLOP/s (median of the rounds): {gemm}"
        if "gflops" in r:
            g = r["gflops"]
            parts = ", ".join(f"{s} {g[s]:.2f}" for s in STAGE_MODULES)
            line += (f"; {g['total']:.1f} GMAC (fvcore: {parts}; deformable attention as 5 "
                     f"multiply-adds per sampling point and channel; not counted: "
                     f"{', '.join(g['not counted']) or 'none'}); fp32 GEMM roofline "
                     f"{r['fp32_roofline_ms']:.0f} ms")
        print(line)
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
    modes = args.modes or default_modes(torch.device(args.device))
    check_modes(modes, torch.device(args.device))
    results = []
    for size in args.sizes:
        results.extend(run_size(args, size, modes))
        if args.json:  # after each size, so that an interrupted run keeps what it measured
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
    print_results(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
