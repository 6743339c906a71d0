"""get_grouppose_cfg: the config every entry point starts from; one owner per config key;
check_grouppose_config and the parts built from the config: the checks of every MODEL.GROUP_POSE
key when the model is built."""

import math
import re
from dataclasses import fields
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Tuple

import pytest
import yaml
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model
from helpers import REPO_ROOT
from helpers.tiny_grouppose import tiny_config

import grouppose  # noqa: F401  (registers the GroupPose meta-architecture)
from grouppose.config import add_grouppose_config, check_grouppose_config, get_grouppose_cfg
from grouppose.modeling.variants import DecoderVariant

CONFIGS = REPO_ROOT / "configs"
SHIPPED_CONFIGS = sorted(str(path.relative_to(CONFIGS)) for path in CONFIGS.rglob("*.yaml"))


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


def _settings(node: Mapping, prefix: str = "") -> Dict[str, Any]:
    """FULL.KEY -> value of every leaf of a nested config (or a yaml file's dict)."""
    leaves = {}
    for key, value in node.items():
        if isinstance(value, Mapping):
            leaves.update(_settings(value, f"{prefix}{key}."))
        else:
            leaves[prefix + key] = value
    return leaves


def _nodes(node: CfgNode, prefix: str = "") -> Iterator[Tuple[str, CfgNode]]:
    """(prefix of its keys, node) for ``node`` and every node below it."""
    yield prefix, node
    for key, value in node.items():
        if isinstance(value, CfgNode):
            yield from _nodes(value, f"{prefix}{key}.")


class _AssignmentLog(CfgNode):
    """A config that logs each assignment ``cfg.KEY = value`` of a key it already has."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self:
            self.__dict__["log"].append(self.__dict__["prefix"] + name)
        super().__setattr__(name, value)


def test_add_grouppose_config_adds_only_new_keys():
    """Detectron2's keys are neither assigned nor changed by add_grouppose_config: the values
    Group Pose gives them live in configs/Base-GroupPose.yaml."""
    cfg = _AssignmentLog(get_cfg())  # every node of the tree becomes an _AssignmentLog
    log: List[str] = []
    for prefix, node in _nodes(cfg):
        node.__dict__.update(log=log, prefix=prefix)
    detectron2 = _settings(cfg)
    add_grouppose_config(cfg)
    changed = [key for key, value in _settings(cfg).items()
               if key in detectron2 and value != detectron2[key]]
    assert not log and not changed, \
        f"Detectron2 keys set by add_grouppose_config: {sorted(set(log + changed))}"
    assert "MODEL.GROUP_POSE.HIDDEN_DIM" in _settings(cfg)  # the log does see new keys added


def _chain(config_file: Path) -> List[Path]:
    """``config_file``'s _BASE_ ancestors, the root first, then ``config_file``."""
    base = yaml.safe_load(config_file.read_text()).get("_BASE_")
    ancestors = _chain((config_file.parent / base).resolve()) if base else []
    return ancestors + [config_file]


def _file_settings(config_file: Path) -> Dict[str, Any]:
    """FULL.KEY -> value of the keys ``config_file`` itself sets (not its _BASE_'s), each value
    as merging reads it (decoded, coerced to the key's type: "(384, 600)" is [384, 600])."""
    own = yaml.safe_load(config_file.read_text())
    own.pop("_BASE_", None)
    merged = get_grouppose_cfg()
    merged.merge_from_other_cfg(CfgNode(own))
    values = _settings(merged)
    return {key: values[key] for key in _settings(own)}


@pytest.mark.parametrize("config_file", SHIPPED_CONFIGS)
def test_no_key_is_set_twice_in_a_config_chain(config_file):
    """One owner per config key.

    The chain of a config file is, in merge order: add_grouppose_config's new keys with their
    defaults, the file's _BASE_ ancestors from the root (configs/Base-GroupPose.yaml), the file.
    A place of the chain that sets a key to the value an earlier place already gave it is a
    duplicate; setting another value is an override (e.g. CrowdPose's NUM_KEYPOINTS 14).
    Detectron2's own defaults are not a place of the chain: Base-GroupPose.yaml states the
    recipe's value of a Detectron2 key even where Detectron2's default agrees (e.g.
    INPUT.MIN_SIZE_TEST 800), so that the recipe does not change with Detectron2's defaults.
    """
    detectron2 = _settings(get_cfg())
    owner = {key: ("add_grouppose_config", value)
             for key, value in _settings(get_grouppose_cfg()).items() if key not in detectron2}
    duplicates = []
    for path in _chain(CONFIGS / config_file):
        place = str(path.relative_to(CONFIGS))
        for key, value in _file_settings(path).items():
            if key in owner and owner[key][1] == value:
                duplicates.append(f"{key}: {value!r} in {place}, already set by {owner[key][0]}")
            owner[key] = (place, value)
    assert not duplicates, "\n".join(duplicates)


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
    ("HIDDEN_DIM", 64.0), ("NHEADS", 0), ("DIM_FEEDFORWARD", 0), ("DROPOUT", 1.0),
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
    """A key added to add_grouppose_config without a rule would accept anything. The ablation
    switches are DecoderVariant's (it knows their valid combinations), the others the config
    check's; each key has one checker."""
    switches = {field.name.upper() for field in fields(DecoderVariant)}
    for key in get_grouppose_cfg().MODEL.GROUP_POSE:
        cfg = _with(key, object())
        with pytest.raises(ValueError, match=f"MODEL.GROUP_POSE.{key}\\b"):
            if key in switches:
                DecoderVariant.from_config(cfg.MODEL.GROUP_POSE)
            else:
                check_grouppose_config(cfg)
        if key in switches:
            check_grouppose_config(cfg)


@pytest.mark.parametrize("changes, message", [
    ({"HIDDEN_DIM": 100},
     "InputProjection: dim (100, MODEL.GROUP_POSE.HIDDEN_DIM) must be a multiple of 32"),
    ({"NUM_FEATURE_LEVELS": 2},
     "InputProjection: num_levels (2, MODEL.GROUP_POSE.NUM_FEATURE_LEVELS) must be >= the "
     "number of backbone levels (3, MODEL.GROUP_POSE.IN_FEATURES)"),
    ({"SELF_ATTN": "global"}, "MODEL.GROUP_POSE.SELF_ATTN='global' is not one of"),
    ({"QUERIES": "keypoint_only"}, "no instance query to score the pose"),
])
def test_keys_that_depend_on_each_other(changes, message):
    """Checked by the parts built from them, when the model is built."""
    cfg = tiny_config()
    cfg.MODEL.GROUP_POSE.update(changes)
    check_grouppose_config(cfg)  # each key is valid on its own
    with pytest.raises(ValueError, match=re.escape(message)):
        build_model(cfg)


def test_heads_must_divide_the_hidden_size_in_config_terms():
    # The config check's one rule between keys: every attention layer (two kinds) needs it.
    cfg = tiny_config()
    cfg.MODEL.GROUP_POSE.NHEADS = 3
    message = "MODEL.GROUP_POSE.NHEADS (3) must divide MODEL.GROUP_POSE.HIDDEN_DIM (64)"
    with pytest.raises(ValueError, match=re.escape(message)):
        check_grouppose_config(cfg)
    with pytest.raises(ValueError, match=re.escape(message)):
        build_model(cfg)


@pytest.mark.parametrize("config_file", SHIPPED_CONFIGS)
def test_shipped_configs_are_valid(config_file):
    check_grouppose_config(get_grouppose_cfg(str(CONFIGS / config_file)))


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
    cfg.MODEL.GROUP_POSE.NUM_INSTANCES, cfg.MODEL.GROUP_POSE.SELF_ATTN = 10, "global"
    with pytest.raises(ValueError, match=re.escape("SELF_ATTN='global' is not one of")):
        build_model(cfg)


def test_plain_detectron2_config_is_told_to_add_the_group_pose_keys():
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "GroupPose"
    cfg.MODEL.DEVICE = "cpu"
    with pytest.raises(ValueError, match=r"grouppose\.add_grouppose_config\(cfg\)"):
        build_model(cfg)


def test_an_unknown_key_is_a_value_error_naming_it(tmp_path):
    """yacs asserts on an unknown key or a KEY without VALUE; commands report ValueErrors as
    user errors (one line, grouppose.user_errors), assertions as bugs."""
    with pytest.raises(ValueError, match="config overrides .*Non-existent key: MODEL.NOPE"):
        get_grouppose_cfg("", ["MODEL.NOPE", "1"])
    with pytest.raises(ValueError, match="config overrides .*odd length"):
        get_grouppose_cfg("", ["MODEL.DEVICE"])
    config_file = tmp_path / "typo.yaml"
    config_file.write_text("MODEL:\n  NOPE: 1\n")
    with pytest.raises(ValueError, match=f"config file '{config_file}': .*MODEL.NOPE"):
        get_grouppose_cfg(str(config_file))
