"""Official-checkpoint converter: strict Detectron2 loading, CLI, and refusals."""

import argparse
from pathlib import Path

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from helpers.checkpointer_warnings import load_with_warnings
from helpers.reference import reference_cfg
from helpers.tiny_grouppose import BASE_CONFIG

from grouppose.checkpoint import (
    convert_official_checkpoint,
    detectron2_checkpoint,
    infer_architecture,
    load_official_state_dict,
)
from tools import convert_official_checkpoint as converter_tool

REFERENCE_ARCHITECTURE = {"NUM_KEYPOINTS": 17, "HIDDEN_DIM": 256, "ENC_LAYERS": 2,
                          "DEC_LAYERS": 2, "NUM_FEATURE_LEVELS": 4}


@pytest.fixture(scope="module")
def official_path(reference_dir) -> Path:
    return reference_dir / "weights_official.pt"


@pytest.fixture(scope="module")
def official(official_path):
    return load_official_state_dict(str(official_path))


def test_architecture_is_read_from_the_checkpoint(official):
    architecture = infer_architecture(official)
    assert {k.upper(): v for k, v in vars(architecture).items()} == REFERENCE_ARCHITECTURE


def test_detectron2_checkpointer_loads_strictly(official, tmp_path):
    cfg = reference_cfg()
    converted, report = convert_official_checkpoint(official, cfg)
    assert all(t.dtype == torch.float32 for t in converted.values() if t.is_floating_point())
    path = tmp_path / "converted.pth"
    torch.save(detectron2_checkpoint(converted), path)

    model = build_model(cfg)
    extra, warnings = load_with_warnings(DetectionCheckpointer(model), str(path))
    # No missing, unexpected or wrongly shaped key was reported...
    assert warnings == []
    assert extra["matching_heuristics"] is False
    # ...and the model holds exactly the converted tensors.
    state_dict = model.state_dict()
    assert set(state_dict) == set(converted)
    for key, value in converted.items():
        assert torch.equal(state_dict[key], value), key

    # Every official key is accounted for, and the renames are the expected ones.
    assert set(report.key_map) == set(official)
    assert report.key_map["backbone.0.body.conv1.weight"] == "backbone.stem.conv1.weight"
    assert report.key_map["backbone.0.body.bn1.running_var"] == (
        "backbone.stem.conv1.norm.running_var"
    )
    assert report.key_map["backbone.0.body.layer1.0.downsample.1.weight"] == (
        "backbone.res2.0.shortcut.norm.weight"
    )
    assert report.key_map["backbone.0.body.layer4.2.bn3.bias"] == "backbone.res5.2.conv3.norm.bias"
    assert report.key_map["input_proj.3.1.weight"] == "input_proj.extra_levels.0.norm.weight"
    assert report.key_map["transformer.decoder.layers.1.within_attn.in_proj_weight"] == (
        "decoder.layers.1.within_instance_attn.in_proj_weight"
    )
    # Class heads keep the person row (row 1) only.
    assert torch.equal(converted["decoder.class_heads.1.weight"],
                       official["class_embed.1.weight"][1:].float())
    assert torch.equal(converted["query_selection.class_head.bias"],
                       official["transformer.enc_out_class_embed.bias"][1:].float())
    assert len(report.person_rows) == 2 * 2 + 2  # 2 decoder layers + encoder, weight + bias


def test_cli_converts_and_prints_one_line_summary(official_path, tmp_path, capsys):
    output = tmp_path / "model.pth"
    status = converter_tool.main([
        str(official_path), str(output), "--config-file", str(BASE_CONFIG),
        "MODEL.GROUP_POSE.ENC_LAYERS", "2", "MODEL.GROUP_POSE.DEC_LAYERS", "2",
    ])
    assert status == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    assert "406 keys mapped" in lines[0] and "dropped 16 keys" in lines[0]
    assert "transformer.decoder.{class,pose}_embed" in lines[0] and "row 0" in lines[0]
    checkpoint = torch.load(output)
    assert set(checkpoint) == {"model", "__author__", "matching_heuristics"}


def test_cli_without_config_prints_the_architecture(official_path, tmp_path, capsys):
    assert converter_tool.main([str(official_path), str(tmp_path / "model.pth")]) == 0
    out = capsys.readouterr().out
    assert "NUM_KEYPOINTS=17" in out and "DEC_LAYERS=2" in out and "HIDDEN_DIM=256" in out
    assert "ResNet-50" in out


@pytest.mark.parametrize(
    "key, value",
    [("NUM_KEYPOINTS", 14), ("ENC_LAYERS", 6), ("DEC_LAYERS", 3), ("HIDDEN_DIM", 128),
     ("NUM_FEATURE_LEVELS", 3)],
)
def test_refuses_a_config_that_disagrees(official, key, value):
    with pytest.raises(ValueError, match=f"MODEL.GROUP_POSE.{key}={value} but the checkpoint"):
        convert_official_checkpoint(official, reference_cfg(**{key: value}))


def test_refuses_a_backbone_depth_that_disagrees(official):
    cfg = reference_cfg()
    cfg.MODEL.RESNETS.DEPTH = 101
    with pytest.raises(ValueError, match="MODEL.RESNETS.DEPTH=101 but the checkpoint's ResNet "
                                         "has depth 50"):
        convert_official_checkpoint(official, cfg)


def test_cli_refuses_a_config_that_disagrees(official_path, tmp_path, capsys):
    output = tmp_path / "model.pth"
    with pytest.raises(SystemExit) as stop:  # a user error: one line, status 2
        converter_tool.main([str(official_path), str(output), "--config-file", str(BASE_CONFIG)])
    assert stop.value.code == 2 and not output.exists()
    assert "ENC_LAYERS=6 but the checkpoint has 2" in capsys.readouterr().err


def test_refuses_unknown_keys_and_backbones(official):
    with pytest.raises(ValueError, match="unrecognised key 'transformer.mystery'"):
        convert_official_checkpoint({**official, "transformer.mystery": torch.zeros(1)})
    renamed = {k.replace("backbone.0.body.layer", "backbone.0.body.stage"): v
               for k, v in official.items()}
    with pytest.raises(ValueError, match="backbone not recognised"):
        convert_official_checkpoint(renamed)
    with pytest.raises(ValueError, match="missing 'transformer.level_embed'"):
        convert_official_checkpoint({"model.weight": torch.zeros(1)})
    diverged = dict(official)
    diverged["transformer.decoder.class_embed.0.bias"] = torch.zeros(2)
    with pytest.raises(ValueError, match="should duplicate 'class_embed.0.bias'"):
        convert_official_checkpoint(diverged)


def test_official_file_format_with_training_args(official, tmp_path):
    # Official checkpoints also pickle their argparse arguments; BN counters are dropped.
    path = tmp_path / "official.pth"
    counter = "backbone.0.body.layer1.0.bn1.num_batches_tracked"
    model = {**official, counter: torch.tensor(7)}
    torch.save({"model": model, "args": argparse.Namespace(lr=1e-4, scales=[480, 512])}, path)
    loaded = load_official_state_dict(str(path))
    assert set(loaded) == set(model)
    converted, report = convert_official_checkpoint(loaded)
    assert report.dropped["BatchNorm num_batches_tracked counters"] == [counter]
    assert not any("num_batches_tracked" in key for key in converted)


def test_bad_checkpoint_files(tmp_path):
    path = tmp_path / "not_a_checkpoint.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="expected a dict checkpoint"):
        load_official_state_dict(str(path))
    torch.save({"model": {"a": 1}}, path)
    with pytest.raises(ValueError, match="tensor values"):
        load_official_state_dict(str(path))
