"""Helpers for the training tests: tiny generated datasets, a tiny training config, and running
train_net.py in a subprocess with those datasets registered."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from grouppose.config import get_grouppose_cfg
from grouppose.data import register_synthetic_dataset
from helpers import REPO_ROOT, TESTS_DIR

TRAIN_NET = REPO_ROOT / "train_net.py"
TINY_CONFIG = REPO_ROOT / "configs" / "Synthetic" / "grouppose_tiny.yaml"
PACKAGE_ROOT = REPO_ROOT / "projects" / "GroupPose"

TRAIN_SET, VAL_SET = "tiny_synthetic_train", "tiny_synthetic_val"
IMAGE_SIZE = 128  # every generated image is IMAGE_SIZE x IMAGE_SIZE: batches need no padding
# name -> (folder, images, seed)
DATASETS = {TRAIN_SET: ("train", 16, 0), VAL_SET: ("val", 6, 1)}

# The tiny config made smaller still: a few seconds for tens of iterations.
FAST_OPTS = [
    "MODEL.GROUP_POSE.HIDDEN_DIM", "64",
    "MODEL.GROUP_POSE.DIM_FEEDFORWARD", "128",
    "MODEL.GROUP_POSE.ENC_LAYERS", "1",
    "MODEL.GROUP_POSE.DEC_LAYERS", "2",
    "MODEL.GROUP_POSE.NUM_INSTANCES", "10",
    "MODEL.GROUP_POSE.TEST_TOPK", "10",
    "INPUT.MIN_SIZE_TRAIN", f"({IMAGE_SIZE},)",
    "INPUT.MAX_SIZE_TRAIN", str(IMAGE_SIZE),
    "INPUT.MIN_SIZE_TEST", str(IMAGE_SIZE),
    "INPUT.MAX_SIZE_TEST", str(IMAGE_SIZE),
    "SOLVER.IMS_PER_BATCH", "4",
    "DATASETS.TRAIN", f"('{TRAIN_SET}',)",
    "DATASETS.TEST", f"('{VAL_SET}',)",
    "DATALOADER.NUM_WORKERS", "0",
]


def register_tiny_datasets(root: Path) -> None:
    """Register TRAIN_SET / VAL_SET under ``root`` (generated on first load), replacing an
    earlier registration of this process."""
    for name, (folder, num_images, seed) in DATASETS.items():
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_synthetic_dataset(
            name, str(root / folder), num_images, seed, (IMAGE_SIZE, IMAGE_SIZE)
        )


def tiny_training_config(data_root: Path, output_dir: Path, opts: Sequence[str] = ()) -> CfgNode:
    """The tiny config + FAST_OPTS + ``opts``, with the tiny datasets registered."""
    register_tiny_datasets(data_root)
    cfg = get_grouppose_cfg(str(TINY_CONFIG))
    cfg.merge_from_list([*FAST_OPTS, "OUTPUT_DIR", str(output_dir), *opts])
    return cfg


def subprocess_env(threads: int = 1) -> Dict[str, str]:
    """Environment for training subprocesses: grouppose importable, ``threads`` CPU threads
    (one thread also makes CPU results bit-reproducible across runs)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT),
                                                      env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def train_net_command(data_root: Path, output_dir: Path, args: Sequence[str] = (),
                      opts: Sequence[str] = (), prelude: str = "") -> List[str]:
    """A command that registers the tiny datasets, runs the Python code ``prelude`` (e.g. a
    test's instrumentation), then runs train_net.py as ``__main__`` with ``--config-file`` the
    tiny config, ``args`` and the FAST_OPTS + ``opts`` overrides."""
    argv = [str(TRAIN_NET), "--config-file", str(TINY_CONFIG), *args,
            *FAST_OPTS, "OUTPUT_DIR", str(output_dir), *opts]
    return script_command(data_root, argv, prelude)


def script_command(data_root: Path, argv: Sequence[str], prelude: str = "") -> List[str]:
    """A command that registers the tiny datasets, runs the Python code ``prelude``, then runs
    the script ``argv[0]`` as ``__main__`` with ``argv``."""
    code = (
        "import runpy, sys\n"
        "from pathlib import Path\n"
        f"sys.path.insert(0, {str(TESTS_DIR)!r})\n"
        "from helpers.training_utils import register_tiny_datasets\n"
        f"register_tiny_datasets(Path({str(data_root)!r}))\n"
        f"{prelude}\n"
        f"sys.argv = {list(argv)!r}\n"
        f"runpy.run_path({str(argv[0])!r}, run_name='__main__')\n"
    )
    return [sys.executable, "-c", code]


def run_train_net(data_root: Path, output_dir: Path, args: Sequence[str] = (),
                  opts: Sequence[str] = (), timeout: float = 300) -> str:
    """Run ``train_net_command`` to completion; returns its output, fails with it on error."""
    result = subprocess.run(
        train_net_command(data_root, output_dir, args, opts), env=subprocess_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
        cwd=REPO_ROOT,
    )
    if result.returncode != 0:
        raise AssertionError(f"train_net.py failed ({result.returncode}):\n{result.stdout[-6000:]}")
    return result.stdout


LAZY_TRAIN_NET = REPO_ROOT / "tools" / "lazyconfig_train_net.py"
LAZY_TINY_CONFIG = REPO_ROOT / "configs" / "lazy" / "Synthetic" / "grouppose_tiny.py"

# FAST_OPTS for the tiny LazyConfig.
FAST_LAZY_OPTS = [
    "model.input_proj.dim=64",
    "model.encoder.ffn_dim=128",
    "model.encoder.num_layers=1",
    "model.decoder.num_layers=2",
    "model.query_selection.num_instances=10",
    "model.test_topk=10",
    f"dataloader.train.mapper.augmentations.min_sizes=[{IMAGE_SIZE}]",
    f"dataloader.train.mapper.augmentations.max_size={IMAGE_SIZE}",
    f"dataloader.test.mapper.augmentations.min_size={IMAGE_SIZE}",
    f"dataloader.test.mapper.augmentations.max_size={IMAGE_SIZE}",
    "dataloader.train.total_batch_size=4",
    f"dataloader.train.dataset.names=[{TRAIN_SET}]",
    f"dataloader.test.dataset.names={VAL_SET}",
]


def run_lazy_train_net(data_root: Path, output_dir: Path, args: Sequence[str] = (),
                       opts: Sequence[str] = (), timeout: float = 300) -> str:
    """tools/lazyconfig_train_net.py with the tiny LazyConfig, ``args``, FAST_LAZY_OPTS and
    ``opts``, the tiny datasets registered; returns its output, fails with it on error."""
    argv = [str(LAZY_TRAIN_NET), "--config-file", str(LAZY_TINY_CONFIG), *args,
            *FAST_LAZY_OPTS, f"train.output_dir={output_dir}", *opts]
    result = subprocess.run(
        script_command(data_root, argv), env=subprocess_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=timeout, cwd=REPO_ROOT,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"lazyconfig_train_net.py failed ({result.returncode}):\n{result.stdout[-6000:]}"
        )
    return result.stdout
