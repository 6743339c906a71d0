#!/usr/bin/env python
"""GPU checks in one command, for a GPU machine without network access: build grouppose._C
with its CUDA kernels, run the CUDA tests and benchmark inference, with results and logs in the
folder given by ``--out``.

The GPU machine needs Python, PyTorch with CUDA, nvcc and a copy of this repository; not
Detectron2 and no network. The run takes what the machine lacks from build/gpu_check/, which
`prepare` fills on a machine with PyPI and which is copied to the GPU machine with the
repository:

1. On a machine with PyPI, from the repository root (fetches a few wheels; needs
   ../shared/vendor), for the GPU machine's Python (default 3.12):
       .venv/bin/python tools/gpu_check.py prepare [--python-version 3.12]
2. Rehearse there on the CPU, in about a minute: the same steps with the CUDA parts switched
   off (CPU build into a temporary folder, CUDA tests collected and skipped, a tiny CPU
   benchmark). It catches a broken step or an option the benchmark no longer takes. The
   wheels must suit that machine's Python for it, so prepare for it, then again for the GPU
   machine (the run refuses wheels prepared for another Python):
       .venv/bin/python tools/gpu_check.py prepare --python-version 3.11
       .venv/bin/python tools/gpu_check.py run --dry-run
       .venv/bin/python tools/gpu_check.py prepare
3. On the GPU machine, from the repository root with build/gpu_check/ copied along (the run
   keeps itself within --budget, 480 s, and prints a table of steps and FPS last):
       python3 tools/gpu_check.py run --out gpu_check_results
   Then copy gpu_check_results/gpu_inference.json to docs/benchmarks/gpu_inference.json.

Steps of `run`, each in its own process with a time limit cut to what is left of the budget:
  setup   wheels into <work>/site, Detectron2 main's source (Python only: GroupPose-D2 calls none
          of its C++ ops) into <work>/detectron2, both put on PYTHONPATH with
          projects/GroupPose; then the environment (GPU, driver, torch, nvcc) is recorded.
  build   `setup.py build_ext --inplace` with FORCE_CUDA=1 for the GPU's architecture, then
          the library is loaded and its CUDA kernels looked up.
  tests   pytest -m cuda on every test file holding CUDA tests.
  bench   tools/benchmarks/bench_inference.py --device cuda (R50, batch 1, 480x800 and
          800x1333, every CUDA mode: fp32, tf32, fp16, bf16), then the op benchmark.
Files in the --out folder: summary.json (steps, environment, records), gpu_inference.json
(records {"device", "size", "mode", "default", "dtype", "ms", "fps"}), bench_inference.json (the
benchmark's own results), setup.log, build.log, tests.log, bench.log.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
PREPARED_DIR = REPO_ROOT / "build" / "gpu_check"
DEFAULT_ARCHIVE = REPO_ROOT.parent / "shared" / "vendor" / "detectron2-main-02b5c4e.tar.gz"
# The GPU machine's Python unless `prepare --python-version` says otherwise; wheels with C code
# are fetched for it.
GPU_MACHINE_PYTHON = "3.12"
# Results and logs of `run` unless --out names another folder (output/ is git-ignored).
DEFAULT_OUT = REPO_ROOT / "output" / "gpu_check"
# What Detectron2 and its imports need that the GPU machine lacks, at the versions .venv runs.
# Binary wheels are downloaded for the target Python; the sdist-only ones are pure Python and
# built here into py3-none-any wheels.
BINARY_REQUIREMENTS = ("pycocotools==2.0.11", "yacs==0.1.8", "iopath==0.1.9",
                       "termcolor==3.3.0", "omegaconf==2.3.1")
SDIST_REQUIREMENTS = ("fvcore==0.1.5.post20221221", "antlr4-python3-runtime==4.9.3")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")

BENCH_CONFIG = "configs/Base-GroupPose.yaml"
# Mode names of the benchmark's dtypes, for records whose benchmark result names none.
MODE_NAMES = {"fp32": "fp32", "tf32": "tf32", "fp16": "fp16 autocast", "bf16": "bf16 autocast"}
RECORD_DTYPES = tuple(MODE_NAMES)
# Seconds each step may take at most (the budget's remainder cuts them further); a step that
# would get less than MIN_STEP_SECONDS is skipped rather than started.
STEP_CAPS = {"setup": 90, "build": 300, "tests": 200, "bench_inference": 300, "bench_op": 90}
MIN_STEP_SECONDS = 20

# Loads the built library in a fresh process and lists the devices its ops have kernels for.
CHECK_LIBRARY = """
import json, sys, torch
torch.ops.load_library(sys.argv[1])
ops = ("grouppose::ms_deform_attn", "grouppose::ms_deform_attn_backward")
print(json.dumps({key: all(torch._C._dispatch_has_kernel_for_dispatch_key(op, key)
                           for op in ops) for key in ("CPU", "CUDA")}))
"""

ENVIRONMENT = """
import json, platform, torch
info = {"python": platform.python_version(), "torch": torch.__version__,
        "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    properties = torch.cuda.get_device_properties(0)
    info.update(device_name=torch.cuda.get_device_name(0),
                capability=list(torch.cuda.get_device_capability(0)),
                multiprocessors=properties.multi_processor_count,
                memory_gib=round(properties.total_memory / 2**30, 1))
print(json.dumps(info))
"""


# ------------------------------------------------------------------------------------------
# prepare (a machine with PyPI)


def prepare(args) -> int:
    archive = Path(args.detectron2_archive)
    if not archive.is_file():
        raise SystemExit(f"error: {archive} is missing (it comes with ../shared beside the "
                         "repository; or pass --detectron2-archive)")
    if PREPARED_DIR.exists():
        shutil.rmtree(PREPARED_DIR)  # one version of each wheel, none left from an older run
    wheels = PREPARED_DIR / "wheels"
    wheels.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    platforms = [option for platform in PLATFORMS for option in ("--platform", platform)]
    subprocess.run([*pip, "download", "--no-deps", "--only-binary=:all:", "--python-version",
                    args.python_version, "--implementation", "cp", *platforms, "-d", str(wheels),
                    *BINARY_REQUIREMENTS], check=True)
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(wheels), *SDIST_REQUIREMENTS],
                   check=True)
    not_pure = [w.name for w in wheels.glob("*.whl")
                if any(r.split("==")[0].replace("-", "_") in w.name for r in SDIST_REQUIREMENTS)
                and not w.name.endswith("-none-any.whl")]
    if not_pure:
        raise SystemExit(f"error: these wheels were built for this machine only: {not_pure}")
    shutil.copy2(archive, PREPARED_DIR / archive.name)
    manifest = {"python": args.python_version, "detectron2_archive": archive.name,
                "wheels": sorted(w.name for w in wheels.glob("*.whl"))}
    (PREPARED_DIR / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    size = sum(f.stat().st_size for f in PREPARED_DIR.rglob("*") if f.is_file())
    print(f"prepared {PREPARED_DIR.relative_to(REPO_ROOT)} ({size / 2**20:.1f} MiB) for "
          f"Python {args.python_version}: {', '.join(manifest['wheels'])}, {archive.name}")
    return 0


# ------------------------------------------------------------------------------------------
# run (the GPU machine, or --dry-run here)


class Runner:
    """Runs the steps as child processes within one time budget, writing summary.json after
    each, so that a run stopped from outside still leaves what it measured."""

    def __init__(self, out: Path, budget: float, env: Dict[str, str]):
        self.out = out
        self.deadline = time.monotonic() + budget
        self.env = env
        self.steps: List[Dict] = []
        self.summary: Dict = {"steps": self.steps}

    def run(self, name: str, command: List[str], log: str, cap: Optional[float] = None,
            env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
        """Run `command`, appending its output to `log` in the results folder; a
        CompletedProcess whose returncode is None when it was skipped or stopped at its time
        limit."""
        limit = min(cap or STEP_CAPS.get(name, 60), self.deadline - time.monotonic())
        record = {"step": name, "command": " ".join(command), "log": log}
        if limit < MIN_STEP_SECONDS:
            record.update(status="skipped", reason="time budget spent")
            return self._finish(record, None)
        start = time.monotonic()
        with open(self.out / log, "a") as f:
            f.write(f"\n===== {name}: {' '.join(command)} (limit {limit:.0f} s)\n")
            f.flush()
            # A session of its own, so that a time-out ends the benchmark's workers too.
            process = subprocess.Popen(command, cwd=REPO_ROOT, env=env or self.env, stdout=f,
                                       stderr=subprocess.STDOUT, start_new_session=True)
            try:
                returncode = process.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                returncode = None
        record["seconds"] = round(time.monotonic() - start, 1)
        if returncode is None:
            record.update(status="timeout")
        else:
            record.update(status="ok" if returncode == 0 else "failed", returncode=returncode)
        return self._finish(record, returncode)

    def skip(self, name: str, reason: str) -> None:
        self._finish({"step": name, "status": "skipped", "reason": reason}, None)

    def _finish(self, record: Dict, returncode: Optional[int]) -> subprocess.CompletedProcess:
        self.steps.append(record)
        self.write_summary()
        detail = record.get("reason") or f"{record.get('seconds', 0):.0f} s, log {record['log']}"
        print(f"[gpu_check] {record['step']}: {record['status']} ({detail})", flush=True)
        return subprocess.CompletedProcess(record.get("command", ""), returncode)

    def write_summary(self) -> None:
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=1) + "\n")


def cuda_home() -> Optional[str]:
    """The toolkit folder: CUDA_HOME, else /usr/local/cuda, else the one holding `nvcc` (named
    explicitly: torch would otherwise derive it from PATH, where nvcc may be a wrapper)."""
    for candidate in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if candidate and (Path(candidate) / "bin" / "nvcc").is_file():
            return candidate
    nvcc = shutil.which("nvcc")
    return str(Path(nvcc).resolve().parents[1]) if nvcc else None


def cuda_test_files() -> List[str]:
    """The test files (in any folder of tests/) that have CUDA tests."""
    tests = sorted((REPO_ROOT / "tests").rglob("test_*.py"))
    return [str(path.relative_to(REPO_ROOT)) for path in tests if "mark.cuda" in path.read_text()]


def inference_records(results: List[Dict], device_name: str) -> List[Dict]:
    """gpu_inference.json's records from bench_inference.py's results: its compiled-op runs
    that succeeded. A result may name its mode and whether it is the default; otherwise the
    mode is named after the dtype and plain fp32 is the default, as in the predictor."""
    records = []
    for result in results:
        if "error" in result or result.get("op", "compiled") != "compiled":
            continue
        dtype = result["dtype"]
        if dtype not in RECORD_DTYPES:
            raise ValueError(f"bench_inference result of unknown dtype {dtype!r}: {result}")
        milliseconds = result["latency_ms"]
        records.append({
            "device": device_name,
            "size": f"{result['size'][0]}x{result['size'][1]}",
            "mode": result.get("mode", MODE_NAMES[dtype]),
            "default": result.get("default", dtype == "fp32"),
            "dtype": dtype,
            "ms": round(milliseconds, 3),
            "fps": round(1000 / milliseconds, 2),
        })
    return records


def run(args) -> int:
    manifest_path = PREPARED_DIR / "manifest.json"
    if not manifest_path.is_file():
        raise SystemExit(f"error: {manifest_path.relative_to(REPO_ROOT)} is missing: run "
                         "`.venv/bin/python tools/gpu_check.py prepare` on a machine with PyPI "
                         "first, and copy build/gpu_check here")
    manifest = json.loads(manifest_path.read_text())
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if manifest["python"] != python_version:
        # Its binary wheels would not install: nothing past the build could run.
        raise SystemExit(f"error: build/gpu_check was prepared for Python {manifest['python']}, "
                         f"this is {python_version}: run `.venv/bin/python tools/gpu_check.py "
                         f"prepare --python-version {python_version}` first")
    out = Path(args.out).resolve()  # absolute: the steps run in the repository root
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    (work / "detectron2").mkdir(parents=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(filter(None, [
        str(REPO_ROOT / "projects" / "GroupPose"), str(work / "detectron2"), str(work / "site"),
        os.environ.get("PYTHONPATH")])))
    # The tests' CI mode would fail tests that need files the GPU machine does not have.
    env.pop("CI", None)
    runner = Runner(out, args.budget, env)
    runner.summary.update(dry_run=args.dry_run, prepared=manifest)
    print(f"[gpu_check] results and logs in {out}; budget {args.budget:.0f} s", flush=True)
    run_steps(runner, args.dry_run, manifest, work)
    print_summary(runner)
    return 0 if all(s["status"] == "ok" for s in runner.steps) else 1


def run_steps(runner: Runner, dry_run: bool, manifest: Dict, work: Path) -> None:
    python, out = sys.executable, runner.out

    # setup: what the image lacks, then the environment.
    wheels = sorted(str(w) for w in (PREPARED_DIR / "wheels").glob("*.whl"))
    runner.run("setup", [python, "-m", "pip", "--disable-pip-version-check", "install",
                         "--quiet", "--no-index", "--no-deps", "--no-compile", "--target",
                         str(work / "site"), *wheels], "setup.log")
    runner.run("setup", ["tar", "-xzf", str(PREPARED_DIR / manifest["detectron2_archive"]),
                         "-C", str(work / "detectron2"), "--strip-components=1"], "setup.log")
    with open(out / "setup.log", "a") as f:
        f.write("\n===== environment\n")
        for command in (["nvidia-smi"], [f"{cuda_home() or '/usr/local/cuda'}/bin/nvcc",
                                         "--version"]):
            try:
                f.write(subprocess.run(command, capture_output=True, text=True,
                                       timeout=30).stdout)
            except (OSError, subprocess.TimeoutExpired) as e:
                f.write(f"{command[0]}: {e}\n")
    environment = json.loads(subprocess.run([python, "-c", ENVIRONMENT], capture_output=True,
                                            text=True, check=True, env=runner.env).stdout)
    runner.summary["environment"] = environment
    runner.write_summary()
    print(f"[gpu_check] {json.dumps(environment)}", flush=True)
    if not dry_run and not environment["cuda_available"]:
        runner.skip("build", "torch sees no CUDA device")
        return
    runner.run("setup", [python, "-c", "import detectron2.modeling, grouppose; "
                         "print('detectron2', detectron2.__file__)"], "setup.log", cap=60)
    importable = runner.steps[-1]["status"] == "ok"

    # build
    build_env = dict(runner.env)
    if dry_run:
        # CPU kernels only, into the work folder: the in-place library stays as it is.
        build_env["FORCE_CUDA"] = "0"
        destination = ["--build-lib", str(work / "lib")]
        library_dir = work / "lib" / "grouppose"
    else:
        major, minor = environment["capability"]
        build_env.update(FORCE_CUDA="1", TORCH_CUDA_ARCH_LIST=f"{major}.{minor}",
                         CUDA_HOME=cuda_home() or "")
        destination = ["--inplace"]
        library_dir = REPO_ROOT / "projects" / "GroupPose" / "grouppose"
    runner.run("build", [python, "setup.py", "build_ext", *destination, "--build-temp",
                         str(work / "temp")], "build.log", env=build_env)
    if runner.steps[-1]["status"] != "ok":
        runner.skip("tests", "the build failed (build.log)")
        return
    suffix = subprocess.run([python, "-c", "import sysconfig; "
                             "print(sysconfig.get_config_var('EXT_SUFFIX'))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    runner.run("build", [python, "-c", CHECK_LIBRARY, str(library_dir / f"_C{suffix}")],
               "build.log", cap=60)
    if runner.steps[-1]["status"] != "ok":
        runner.skip("tests", "the built library does not load (build.log)")
        return
    kernels = json.loads((out / "build.log").read_text().strip().splitlines()[-1])
    runner.summary["kernels"] = kernels
    if not kernels["CUDA"] and not dry_run:
        runner.steps[-1].update(status="failed", reason="the library has no CUDA kernels")
        runner.write_summary()
        return
    if not importable:
        runner.skip("tests", "detectron2 or grouppose does not import (setup.log)")
        return

    # tests
    runner.run("tests", [python, "-m", "pytest", "-m", "cuda", "-p", "no:cacheprovider",
                         *cuda_test_files()], "tests.log")

    # bench: every CUDA mode, no FLOP count (device-independent, measured on the CPU).
    bench_json = out / "bench_inference.json"
    device = "cpu" if dry_run else "cuda"
    if dry_run:
        sizes_and_runs = ["--sizes", "64x96", "--warmup", "0", "--runs", "1"]
    else:
        sizes_and_runs = ["--sizes", "480x800", "800x1333", "--warmup", "10", "--runs", "50"]
    runner.run("bench_inference", [python, "tools/benchmarks/bench_inference.py",
                                   "--config-file", BENCH_CONFIG, "--device", device,
                                   *sizes_and_runs, "--no-flops",
                                   "--json", str(bench_json)], "bench.log")
    if bench_json.is_file():
        records = inference_records(json.loads(bench_json.read_text()),
                                    environment.get("device_name", "cpu"))
        (out / "gpu_inference.json").write_text(json.dumps(records, indent=1) + "\n")
        runner.summary["gpu_inference"] = records
        runner.write_summary()
    runner.run("bench_op", [python, "tools/benchmarks/bench_ms_deform_attn.py", "--device",
                            device, "--repeats", "1" if dry_run else "20"], "bench.log")


def print_summary(runner: Runner) -> None:
    print("\n| step | status | s |\n| --- | --- | --- |")
    for s in runner.steps:
        print(f"| {s['step']} | {s['status']} {s.get('reason', '')} | {s.get('seconds', '')} |")
    records = runner.summary.get("gpu_inference", [])
    if records:
        print(f"\n{records[0]['device']}:\n| size | mode | default | dtype | ms | FPS |\n"
              "| --- | --- | --- | --- | --- | --- |")
        for r in records:
            print(f"| {r['size']} | {r['mode']} | {r['default']} | {r['dtype']} | {r['ms']:.2f} "
                  f"| {r['fps']:.1f} |")
    tests_log = runner.out / "tests.log"
    if tests_log.is_file():
        lines = tests_log.read_text().strip().splitlines()
        print("\ntests: " + (lines[-1] if lines else "(no output)"))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prepare_parser = commands.add_parser("prepare", help="fill build/gpu_check (needs PyPI)")
    prepare_parser.add_argument("--python-version", default=GPU_MACHINE_PYTHON,
                                help="Python of the machine that runs `run` (default: %(default)s)")
    prepare_parser.add_argument("--detectron2-archive", default=str(DEFAULT_ARCHIVE))
    run_parser = commands.add_parser("run", help="build, test and benchmark on the GPU")
    run_parser.add_argument("--out", default=str(DEFAULT_OUT),
                            help="folder for results and logs (default: output/gpu_check in "
                                 "the repository)")
    run_parser.add_argument("--work", default="/tmp/gpu_check",
                            help="scratch folder, emptied first (default: %(default)s)")
    run_parser.add_argument("--budget", type=float, default=480,
                            help="seconds for all steps together (default: %(default)s)")
    run_parser.add_argument("--dry-run", action="store_true",
                            help="rehearse on the CPU: CPU build elsewhere, CUDA tests "
                                 "skipped, tiny CPU benchmark")
    args = parser.parse_args(argv)
    return prepare(args) if args.command == "prepare" else run(args)


if __name__ == "__main__":
    sys.exit(main())
