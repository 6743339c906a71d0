"""get_grouppose_cfg: the config every entry point starts from."""

import pytest
from conftest import REPO_ROOT

from grouppose.config import get_grouppose_cfg


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
