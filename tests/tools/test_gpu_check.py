"""tools/gpu_check.py's CPU-side parts: the records of docs/benchmarks/gpu_inference.json, the
choice of test files and where a run writes. (Its whole run is rehearsed with `gpu_check.py run
--dry-run`, which needs `prepare`'s downloads.)"""

import json
import sys

import pytest

from tools import gpu_check


def bench_result(dtype, **extra):
    return {"size": [480, 800], "op": "compiled", "dtype": dtype, "latency_ms": 12.5, **extra}


def test_inference_records_have_the_documented_format():
    results = [
        bench_result("fp32"),
        bench_result("fp16"),
        bench_result("bf16", mode="bf16 + CUDA graph", default=True),
        bench_result("fp32", op="reference"),
        {**bench_result("fp16"), "error": "CUDA out of memory"},
    ]
    records = gpu_check.inference_records(results, "NVIDIA H100 80GB HBM3")
    assert records == [
        {"device": "NVIDIA H100 80GB HBM3", "size": "480x800", "mode": "fp32", "default": True,
         "dtype": "fp32", "ms": 12.5, "fps": 80.0},
        {"device": "NVIDIA H100 80GB HBM3", "size": "480x800", "mode": "fp16 autocast",
         "default": False, "dtype": "fp16", "ms": 12.5, "fps": 80.0},
        {"device": "NVIDIA H100 80GB HBM3", "size": "480x800", "mode": "bf16 + CUDA graph",
         "default": True, "dtype": "bf16", "ms": 12.5, "fps": 80.0},
    ]


def test_inference_records_refuse_an_unknown_dtype():
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        gpu_check.inference_records([bench_result("fp8")], "GPU")


def test_cuda_test_files_are_those_with_cuda_tests():
    files = gpu_check.cuda_test_files()
    assert "tests/layers/test_ms_deform_attn_cuda_dtypes.py" in files
    assert "tests/layers/test_ms_deform_attn.py" in files
    assert "tests/tools/test_gpu_check.py" not in files


def test_run_writes_results_and_logs_to_the_out_folder(tmp_path, monkeypatch):
    """A dry run with no time budget skips every step but still records the environment and
    the skipped steps, in --out: a relative one is taken from the current folder."""
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    (prepared / "manifest.json").write_text(json.dumps(
        {"python": python, "detectron2_archive": "none.tar.gz", "wheels": []}
    ))
    monkeypatch.setattr(gpu_check, "PREPARED_DIR", prepared)
    monkeypatch.chdir(tmp_path)
    status = gpu_check.main(["run", "--dry-run", "--budget", "0", "--out", "results",
                             "--work", str(tmp_path / "work")])
    assert status == 1  # nothing ran
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert summary["dry_run"] and summary["environment"]["python"].startswith(python)
    assert {step["status"] for step in summary["steps"]} == {"skipped"}
    assert "===== environment" in (tmp_path / "results" / "setup.log").read_text()
