"""get_grouppose_cfg: the config every entry point starts from; check_grouppose_config: the
checks of every MODEL.GROUP_POSE key when the model is built."""

import math
import re

import pytest
from conftest import REPO_ROOT
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from tiny_grouppose import tiny_config

import grouppose  # noqa: F401  (registers the GroupPose meta-architecture)
from grouppose.config import check_grouppose_config, get_grouppose_cfg


def test_defaults_file_and_opts_are_merged_in_order():
    cfg = get_grouppose_cfg(
        str(REPO_ROOT / "configs" / "Synthetic" / "grouppose_tiny.yaml"),
        ["MODEL.GROUP_POSE.NUM_INSTANCES", 7],
    )
    assert cfg.MODEL.META_ARCHITECTURE == "GroupPose"  # from Base-GroupPose.yaml
    assert cfg.MODEL.RESNETS.DEPTH == 18  # from the file
    assert cfg.MODEL.GROUP_POSE.NUM_INSTANCES == 7  # the override wins
    assert cfg.MODEL.GROUP_POSE.NUM_KEYPOINTS == 17  # add_grouppose_config's default
    assert not cfg.is_frozen()


def test_defaults_without_a_file():
    assert get_grouppose_cfg().MODEL.GROUP_POSE.HIDDEN_DIM == 256


def test_missing_config_file_is_named(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ValueError, match="nope.yaml"):
        get_grouppose_cfg(str(missing))


def _with(key: str, value):
    cfg = get_grouppose_cfg()
    cfg.MODEL.GROUP_POSE[key] = value
    return cfg


@pytest.mark.parametrize("key, value", [
    ("NUM_INSTANCES", 0), ("NUM_INSTANCES", 2.5), ("NUM_KEYPOINTS", 0), ("HIDDEN_DIM", 0),
    ("HIDDEN_DIM", 100), ("NHEADS", 0), ("DIM_FEEDFORWARD", 0), ("DROPOUT", 1.0),
    ("DROPOUT", -0.1), ("ENC_LAYERS", -1), ("ENC_LAYERS", True), ("DEC_LAYERS", 0),
    ("ENC_N_POINTS", 0), ("DEC_N_POINTS", 0), ("NUM_FEATURE_LEVELS", 0), ("IN_FEATURES", []),
    ("IN_FEATURES", "res5"), ("POS_TEMPERATURE", 0.0), ("FOCAL_ALPHA", 1.5),
    ("FOCAL_ALPHA", -0.25), ("CLS_WEIGHT", -1.0), ("KPT_L1_WEIGHT", math.nan),
    ("OKS_WEIGHT", math.inf), ("COST_CLASS", -2.0), ("COST_KPT_L1", -1), ("COST_OKS", "4"),
    ("INTERM_LOSS_WEIGHT", -0.5), ("BOX_L1_WEIGHT", -5.0), ("GIOU_WEIGHT", math.nan),
    ("COST_BOX_L1", -1.0), ("COST_GIOU", -1.0), ("AUX_LOSS", "yes"), ("OKS_SIGMAS", [0.1, 0.0]),
    ("TEST_TOPK", 0), ("TEST_SCORE_THRESH", 1.5), ("TEST_SCORE_THRESH", -0.1),
    ("DETECTION_DECODER_LAYERS", -1),
])
def test_bad_value_names_the_key_and_the_value(key, value):
    with pytest.raises(ValueError, match=re.escape(f"MODEL.GROUP_POSE.{key} must be")) as error:
        check_grouppose_config(_with(key, value))
    assert repr(value) in str(error.value)


def test_every_group_pose_key_is_validated():
    """A key added to add_grouppose_config without a rule would accept anything."""
    for key in get_grouppose_cfg().MODEL.GROUP_POSE:
        with pytest.raises(ValueError, match=f"MODEL.GROUP_POSE.{key}\\b"):
            check_grouppose_config(_with(key, object()))


@pytest.mark.parametrize("changes, message", [
    ({"NHEADS": 3}, "MODEL.GROUP_POSE.NHEADS (3) must divide MODEL.GROUP_POSE.HIDDEN_DIM (256)"),
    ({"NUM_FEATURE_LEVELS": 2},
     "MODEL.GROUP_POSE.NUM_FEATURE_LEVELS (2) must be >= the number of "
     "MODEL.GROUP_POSE.IN_FEATURES (['res3', 'res4', 'res5'])"),
    ({"SELF_ATTN": "global"}, "MODEL.GROUP_POSE.SELF_ATTN='global' is not one of"),
    ({"QUERIES": "keypoint_only"}, "no instance query to score the pose"),
])
def test_keys_that_depend_on_each_other(changes, message):
    cfg = get_grouppose_cfg()
    cfg.MODEL.GROUP_POSE.update(changes)
    with pytest.raises(ValueError, match=re.escape(message)):
        check_grouppose_config(cfg)


@pytest.mark.parametrize("config_file", sorted(
    str(path.relative_to(REPO_ROOT / "configs"))
    for path in (REPO_ROOT / "configs").rglob("*.yaml")
))
def test_shipped_configs_are_valid(config_file):
    check_grouppose_config(get_grouppose_cfg(str(REPO_ROOT / "configs" / config_file)))


def test_edge_values_are_accepted():
    cfg = get_grouppose_cfg()
    cfg.MODEL.GROUP_POSE.update({
        "ENC_LAYERS": 0, "DEC_LAYERS": 1, "NUM_INSTANCES": 1, "TEST_TOPK": 300, "DROPOUT": 0,
        "FOCAL_ALPHA": 1.0, "TEST_SCORE_THRESH": 1.0, "CLS_WEIGHT": 0, "NHEADS": 1,
        "NUM_FEATURE_LEVELS": 3, "OKS_SIGMAS": [0.1] * 17,
    })
    check_grouppose_config(cfg)


def test_building_the_model_checks_the_config():
    cfg = tiny_config()
    cfg.MODEL.GROUP_POSE.NUM_INSTANCES = 0  # trained to a 0 loss and AP nan before
    with pytest.raises(ValueError, match=r"NUM_INSTANCES must be an integer >= 1, got 0"):
        build_model(cfg)
    cfg.MODEL.GROUP_POSE.NUM_INSTANCES, cfg.MODEL.GROUP_POSE.NHEADS = 10, 3
    with pytest.raises(ValueError, match=re.escape("NHEADS (3) must divide")):
        build_model(cfg)


def test_plain_detectron2_config_is_told_to_add_the_group_pose_keys():
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "GroupPose"
    cfg.MODEL.DEVICE = "cpu"
    with pytest.raises(ValueError, match=r"grouppose\.add_grouppose_config\(cfg\)"):
        build_model(cfg)
