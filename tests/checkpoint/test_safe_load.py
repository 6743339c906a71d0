"""No code runs from a weights file: every entry point that reads weights refuses a crafted
``.pkl`` and a crafted ``.pth`` whose unpickling would create a file, naming the input; real
Detectron2 / Caffe2 ``.pkl`` weights still load; ``trust_pickle`` is the one opt-in."""

import collections
import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.tiny_grouppose import REPO_ROOT, save_tiny_model
from helpers.training_utils import FAST_OPTS, TINY_CONFIG, register_tiny_datasets
from torch import nn

import grouppose
import train_net
from grouppose.checkpoint import (
    CorruptCheckpointError,
    SafeCheckpointer,
    UnsafeCheckpointError,
    read_weights_file,
)
from grouppose.predictor import GroupPosePredictor


class _CreatesFileWhenUnpickled:
    """What a crafted weights file holds: unpickling it runs a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_crafted_weights(path: Path, marker: Path) -> Path:
    """A weights file (pickle for .pkl, torch.save otherwise) whose loading creates ``marker``."""
    checkpoint = {"model": {"weight": _CreatesFileWhenUnpickled(marker)}, "__author__": "x"}
    if path.suffix == ".pkl":
        with open(path, "wb") as f:
            pickle.dump(checkpoint, f)
    else:
        torch.save(checkpoint, path)
    return path


@pytest.fixture(params=[".pkl", ".pth"])
def crafted(request, tmp_path):
    """(crafted weights file, the file its unpickling would create)."""
    marker = tmp_path / "code_ran"
    return write_crafted_weights(tmp_path / f"evil{request.param}", marker), marker


def assert_refused(error_text: str, crafted_file: Path, marker: Path) -> None:
    assert not marker.exists(), "unpickling ran code from the weights file"
    assert str(crafted_file) in error_text
    assert "system" in error_text and "--trust-pickle" in error_text


def load_script(path: Path):
    """The module of a script of this repository: demo.py's is grouppose.demo, the tools' are
    the tools package's."""
    if path == REPO_ROOT / "demo.py":
        return importlib.import_module("grouppose.demo")
    return importlib.import_module(".".join(path.relative_to(REPO_ROOT).with_suffix("").parts))


def exit_status(main, argv) -> int:
    """A command's ``main(argv)`` status: its return value, or a user error's SystemExit code."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


# ------------------------------------------------------------------------------------------
# The reader


def test_read_weights_file_refuses_in_one_line(crafted):
    path, marker = crafted
    with pytest.raises(UnsafeCheckpointError) as error:
        read_weights_file(str(path))
    assert_refused(str(error.value), path, marker)
    assert "\n" not in str(error.value)


def test_trust_pickle_is_the_opt_in(crafted):
    path, marker = crafted
    read_weights_file(str(path), trust_pickle=True)
    assert marker.exists()


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pkl"):
        read_weights_file(str(tmp_path / "missing.pkl"))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        SafeCheckpointer(nn.Linear(2, 2)).load(str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_detectron2_and_caffe2_pkl_weights_load(tmp_path, protocol):
    """What Detectron2 model-zoo (``model`` + ``__author__``) and Caffe2 (``blobs``) .pkl files
    hold: numpy arrays and scalars in (ordered) dicts, also at protocol 2 (bytes pickled with
    ``_codecs.encode``)."""
    model = nn.Linear(3, 2)
    weight = np.arange(6, dtype=np.float32).reshape(2, 3)
    bias = np.array([0.5, -1.0], dtype=np.float32)
    model_zoo = {"model": collections.OrderedDict(weight=weight, bias=bias),
                 "__author__": "Detectron2 Model Zoo", "step": np.int64(7)}
    caffe2 = {"blobs": {"weight": weight, "bias": bias, "weight_momentum": weight}}
    for name, data in (("model_zoo.pkl", model_zoo), ("caffe2.pkl", caffe2)):
        with open(tmp_path / name, "wb") as f:
            pickle.dump(data, f, protocol=protocol)
        loaded = nn.Linear(3, 2)
        with torch.no_grad():
            loaded.weight.zero_()
        checkpointer = SafeCheckpointer(loaded)
        checkpointer.load(str(tmp_path / name))
        assert torch.equal(loaded.weight, torch.from_numpy(weight)), name
        assert torch.equal(loaded.bias, torch.from_numpy(bias)), name
        assert not checkpointer.incompatible_keys.missing_keys
    assert model.weight.shape == loaded.weight.shape


# ------------------------------------------------------------------------------------------
# Every entry point


@pytest.fixture(scope="module")
def tiny_config_file(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("image") / "people.png"
    import cv2

    cv2.imwrite(str(path), np.full((48, 64, 3), 127, dtype=np.uint8))
    return path


def test_predictor_and_predict(crafted, tiny_config_file, image_file):
    path, marker = crafted
    for run in (lambda: GroupPosePredictor(tiny_config_file, str(path)),
                lambda: grouppose.predict(image_file, tiny_config_file, str(path))):
        with pytest.raises(UnsafeCheckpointError) as error:
            run()
        assert_refused(str(error.value), path, marker)


def test_demo(crafted, tiny_config_file, image_file, tmp_path, capsys):
    path, marker = crafted
    demo = load_script(REPO_ROOT / "demo.py")
    assert exit_status(demo.main, ["--config-file", str(tiny_config_file), "--input",
                                   str(image_file), "--output", str(tmp_path / "out"),
                                   "--opts", "MODEL.WEIGHTS", str(path)]) == 2
    assert_refused(capsys.readouterr().err, path, marker)


@pytest.mark.parametrize("tool", ["convert_official_checkpoint.py", "convert_imagenet_swin.py"])
def test_converters(crafted, tool, tmp_path, capsys):
    path, marker = crafted
    converter = load_script(REPO_ROOT / "tools" / tool)
    assert exit_status(converter.main, [str(path), str(tmp_path / "out.pth")]) == 2
    assert_refused(capsys.readouterr().err, path, marker)
    assert not (tmp_path / "out.pth").exists()


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    register_tiny_datasets(root)
    return root


def _run_train_net(args):
    return train_net.main(train_net.get_parser().parse_args(args))


@pytest.mark.parametrize("mode", ["train", "eval-only", "resume"])
def test_train_net(crafted, mode, tiny_data, tmp_path):
    path, marker = crafted
    output_dir = tmp_path / "train"
    opts = [*FAST_OPTS, "OUTPUT_DIR", str(output_dir), "SOLVER.MAX_ITER", "1"]
    args = ["--config-file", str(TINY_CONFIG)]
    if mode == "resume":
        # The last checkpoint of OUTPUT_DIR, which --resume reads, is the crafted file.
        output_dir.mkdir()
        (output_dir / "last_checkpoint").write_text(str(path))
        args.append("--resume")
    else:
        opts += ["MODEL.WEIGHTS", str(path)]
        if mode == "eval-only":
            args.append("--eval-only")
    with pytest.raises(UnsafeCheckpointError) as error:
        _run_train_net([*args, *opts])
    assert_refused(str(error.value), path, marker)


def test_learning_benchmark(crafted, tiny_data, tmp_path, monkeypatch):
    path, marker = crafted
    learn_synthetic = load_script(REPO_ROOT / "tools" / "benchmarks" / "learn_synthetic.py")
    argv = ["--config-file", str(TINY_CONFIG), "--output-dir", str(tmp_path / "benchmark"),
            "--threads", str(torch.get_num_threads()), "--max-iter", "6", *FAST_OPTS,
            "MODEL.WEIGHTS", str(path)]
    with pytest.raises(UnsafeCheckpointError) as error:
        learn_synthetic.main(argv)
    assert_refused(str(error.value), path, marker)


def test_inference_benchmark(crafted, tiny_config_file):
    path, marker = crafted
    bench = load_script(REPO_ROOT / "tools" / "benchmarks" / "bench_inference.py")
    spec = {"config_file": str(tiny_config_file), "weights": str(path), "device": "cpu",
            "opts": [], "size": [64, 64], "modes": ["fp32"], "warmup": 0,
            "runs": 1, "flops": False, "threads": 0, "trust_pickle": False}
    with pytest.raises(UnsafeCheckpointError) as error:
        bench.run_worker(spec)
    assert_refused(str(error.value), path, marker)


def test_trained_checkpoint_is_required(tiny_config_file, tmp_path):
    """A config's ImageNet backbone weights (or none) are not a trained Group Pose model: the
    predictor says so and how to get one."""
    backbone_only = tmp_path / "backbone.pth"
    state = torch.load(tiny_config_file.parent / "tiny_model.pth")["model"]
    torch.save({k: v for k, v in state.items() if k.startswith("backbone.")}, backbone_only)
    for weights in (str(backbone_only), "", "detectron2://ImageNetPretrained/none/R-50.pkl"):
        with pytest.raises(ValueError, match="trained Group Pose checkpoint.*convert_official"):
            GroupPosePredictor(tiny_config_file, weights)


@pytest.mark.parametrize("tool", ["convert_official_checkpoint.py", "convert_imagenet_swin.py"])
def test_converters_name_a_missing_input(tool, tmp_path, capsys):
    converter = load_script(REPO_ROOT / "tools" / tool)
    missing = tmp_path / "missing.pth"
    assert exit_status(converter.main, [str(missing), str(tmp_path / "out.pth")]) == 2
    assert capsys.readouterr().err.strip() == f"error: weights file not found: '{missing}'"


# ------------------------------------------------------------------------------------------
# A truncated or damaged file: one line naming it, at every entry point

CORRUPT = "cannot read this weights file: it is truncated or corrupt"


@pytest.fixture(params=["half.pth", "short.pth", "empty.pth", "garbage.pth", "half.pkl"])
def truncated(request, tiny_config_file, tmp_path):
    """A weights file cut short (as an interrupted download leaves it), empty or garbage."""
    full = (tiny_config_file.parent / "tiny_model.pth").read_bytes()
    if request.param.endswith(".pkl"):
        full = pickle.dumps({"model": {"w": np.zeros(1000)}, "__author__": "x"})
    content = {"half": full[: len(full) // 2], "short": full[:100], "empty": b"",
               "garbage": b"not a checkpoint " * 20}[request.param.split(".")[0]]
    path = tmp_path / request.param
    path.write_bytes(content)
    return path


def assert_named_corrupt(error_text: str, path: Path) -> None:
    assert f"{path}: {CORRUPT}" in error_text
    assert "PytorchStreamReader" not in error_text and "Traceback" not in error_text


@pytest.mark.parametrize("trust_pickle", [False, True])
def test_read_weights_file_names_a_truncated_file(truncated, trust_pickle):
    with pytest.raises(CorruptCheckpointError) as error:
        read_weights_file(str(truncated), trust_pickle)
    assert_named_corrupt(str(error.value), truncated)
    assert "\n" not in str(error.value)
    # No chained traceback of the reader's own error.
    assert error.value.__context__ is None or error.value.__suppress_context__


def test_predictor_names_a_truncated_file(truncated, tiny_config_file):
    with pytest.raises(CorruptCheckpointError) as error:
        GroupPosePredictor(tiny_config_file, str(truncated))
    assert_named_corrupt(str(error.value), truncated)


def test_demo_names_a_truncated_file(truncated, tiny_config_file, image_file, tmp_path, capsys):
    demo = load_script(REPO_ROOT / "demo.py")
    assert exit_status(demo.main, ["--config-file", str(tiny_config_file), "--input",
                                   str(image_file), "--output", str(tmp_path / "out"),
                                   "--opts", "MODEL.WEIGHTS", str(truncated)]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert_named_corrupt(line, truncated)


def test_eval_only_names_a_truncated_file(truncated, tiny_data, tmp_path):
    opts = [*FAST_OPTS, "OUTPUT_DIR", str(tmp_path / "eval"), "MODEL.WEIGHTS", str(truncated)]
    with pytest.raises(CorruptCheckpointError) as error:
        _run_train_net(["--config-file", str(TINY_CONFIG), "--eval-only", *opts])
    assert_named_corrupt(str(error.value), truncated)


@pytest.mark.parametrize("tool", ["convert_official_checkpoint.py", "convert_imagenet_swin.py"])
def test_converters_name_a_truncated_file(truncated, tool, tmp_path, capsys):
    converter = load_script(REPO_ROOT / "tools" / tool)
    assert exit_status(converter.main, [str(truncated), str(tmp_path / "out.pth")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert_named_corrupt(line, truncated)
    assert not (tmp_path / "out.pth").exists()
