"""A tiny random Group Pose (ResNet-18, 1 encoder + 2 decoder layers, N = 10) for fast tests
of the inference tools (predictor, demo, export)."""

from pathlib import Path

import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model

from grouppose.config import get_grouppose_cfg
from helpers import REPO_ROOT

BASE_CONFIG = REPO_ROOT / "configs" / "Base-GroupPose.yaml"
NUM_INSTANCES = 10

TINY_OPTS = [
    "MODEL.DEVICE", "cpu",
    "MODEL.RESNETS.DEPTH", 18,
    "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
    "MODEL.GROUP_POSE.HIDDEN_DIM", 64,
    "MODEL.GROUP_POSE.NHEADS", 4,
    "MODEL.GROUP_POSE.DIM_FEEDFORWARD", 128,
    "MODEL.GROUP_POSE.ENC_LAYERS", 1,
    "MODEL.GROUP_POSE.DEC_LAYERS", 2,
    "MODEL.GROUP_POSE.NUM_INSTANCES", NUM_INSTANCES,
    "MODEL.GROUP_POSE.TEST_TOPK", NUM_INSTANCES,
    "INPUT.MIN_SIZE_TEST", 64,
    "INPUT.MAX_SIZE_TEST", 112,
    "DATASETS.TEST", ("keypoints_coco_2017_val",),
]


def tiny_config() -> CfgNode:
    cfg = get_grouppose_cfg(str(BASE_CONFIG))
    cfg.merge_from_list(list(TINY_OPTS))
    return cfg


def save_tiny_model(directory: Path, seed: int = 0) -> Path:
    """Save a seeded random tiny model and a config file pointing at it; returns the config
    file (its ``MODEL.WEIGHTS`` is the checkpoint)."""
    cfg = tiny_config()
    torch.manual_seed(seed)
    weights = directory / "tiny_model.pth"
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    cfg.MODEL.WEIGHTS = str(weights)
    config_file = directory / "tiny_config.yaml"
    config_file.write_text(cfg.dump())
    return config_file
