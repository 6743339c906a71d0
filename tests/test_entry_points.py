"""What every command of ours shares: no import-time noise from third-party code, and a CUDA
MODEL.DEVICE that falls back to the CPU (with one warning) where there is no CUDA, in training
as in inference."""

import logging
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from helpers.tiny_grouppose import REPO_ROOT
from helpers.training_utils import subprocess_env

import train_net
from grouppose.config import fall_back_to_cpu, get_grouppose_cfg
from grouppose.predictor import build_inference_config

ENTRY_POINTS = [
    "train_net.py", "demo.py", "tools/convert_official_checkpoint.py",
    "tools/convert_imagenet_swin.py", "tools/benchmarks/bench_inference.py",
    "tools/benchmarks/learn_synthetic.py",
]


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_no_torch_jit_script_warning_at_start(script):
    result = subprocess.run([sys.executable, str(REPO_ROOT / script), "--help"],
                            capture_output=True, text=True, env=subprocess_env(), cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert "torch.jit.script" not in result.stderr


def test_only_that_warning_is_silenced():
    code = ("import warnings, grouppose\n"
            "warnings.warn('`torch.jit.script` is deprecated', FutureWarning)\n"
            "warnings.warn('something else', FutureWarning)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=subprocess_env())
    assert "something else" in result.stderr
    assert "torch.jit.script" not in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_falls_back_to_cpu_with_one_warning(caplog, tmp_path):
    args = train_net.get_parser().parse_args(
        ["--config-file", str(REPO_ROOT / "configs" / "Synthetic" / "grouppose_tiny.yaml"),
         "OUTPUT_DIR", str(tmp_path), "MODEL.DEVICE", "cuda"])
    with caplog.at_level(logging.WARNING, logger="grouppose.config"):
        cfg = train_net.setup(args)
    assert cfg.MODEL.DEVICE == "cpu"
    warnings = [r for r in caplog.records if r.name == "grouppose.config"]
    assert len(warnings) == 1 and "no CUDA device" in warnings[0].getMessage()
    # The predictor's config takes the same path.
    assert build_inference_config(get_grouppose_cfg("", ["MODEL.DEVICE", "cuda:0"])
                                  ).MODEL.DEVICE == "cpu"


def test_cpu_device_is_kept():
    cfg = get_grouppose_cfg("", ["MODEL.DEVICE", "cpu"])
    fall_back_to_cpu(cfg)
    assert cfg.MODEL.DEVICE == "cpu"


@pytest.fixture(scope="module")
def truncated_weights(tmp_path_factory):
    """A weights file cut short, as an interrupted download leaves it."""
    path = tmp_path_factory.mktemp("weights") / "model_final.pth"
    torch.save({"model": {"w": torch.zeros(4096)}}, path)
    path.write_bytes(path.read_bytes()[:8192])
    return path


TINY_CONFIG = str(REPO_ROOT / "configs" / "Synthetic" / "grouppose_tiny.yaml")
# Each command given the truncated weights file ({weights}) and a folder for its outputs ({out}).
TRUNCATED_WEIGHTS_COMMANDS = {
    "train_net --eval-only": ["train_net.py", "--config-file", TINY_CONFIG, "--eval-only",
                              "MODEL.WEIGHTS", "{weights}", "OUTPUT_DIR", "{out}"],
    # The error is met in both training processes; the launcher reports it once.
    "train_net --num-gpus 2": ["train_net.py", "--config-file", TINY_CONFIG, "--eval-only",
                               "--num-gpus", "2", "MODEL.WEIGHTS", "{weights}",
                               "OUTPUT_DIR", "{out}"],
    "demo": ["demo.py", "--config-file", TINY_CONFIG, "--input", "{out}/person.png", "--output",
             "{out}/drawn.png", "--opts", "MODEL.WEIGHTS", "{weights}"],
    "convert_official_checkpoint": ["tools/convert_official_checkpoint.py", "{weights}",
                                    "{out}/converted.pth"],
    "convert_imagenet_swin": ["tools/convert_imagenet_swin.py", "{weights}",
                              "{out}/converted.pth"],
    "export_onnx": ["tools/export_onnx.py", "--config-file", TINY_CONFIG,
                    "--weights", "{weights}", "--output", "{out}/model.onnx", "--dynamic"],
}


@pytest.mark.parametrize("command", TRUNCATED_WEIGHTS_COMMANDS)
def test_a_user_error_is_one_line_and_status_2(command, truncated_weights, tmp_path):
    """A truncated weights file at every entry point: one ``error:`` line naming the file,
    exit status 2, no traceback (those are for bugs)."""
    cv2.imwrite(str(tmp_path / "person.png"), np.full((48, 64, 3), 127, dtype=np.uint8))
    argv = [arg.format(weights=truncated_weights, out=tmp_path)
            for arg in TRUNCATED_WEIGHTS_COMMANDS[command]]
    env = {**subprocess_env(), "DETECTRON2_DATASETS": str(tmp_path / "datasets")}
    result = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env,
                            cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"error: {truncated_weights}: ")
    assert "truncated or corrupt" in errors[0]


def test_user_errors_keep_their_traceback_on_request(monkeypatch, capsys):
    """GROUPPOSE_TRACEBACK=1: the error propagates (with its stack) instead of one line."""
    from grouppose.user_errors import TRACEBACK_VARIABLE, exit_on_user_error

    with pytest.raises(SystemExit) as stopped, exit_on_user_error():
        raise ValueError("bad value")
    assert stopped.value.code == 2 and capsys.readouterr().err == "error: bad value\n"
    monkeypatch.setenv(TRACEBACK_VARIABLE, "1")
    with pytest.raises(ValueError, match="bad value"), exit_on_user_error():
        raise ValueError("bad value")
