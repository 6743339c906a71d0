"""The paper's optimizer (param groups, AdamW, full-model clipping), the LR schedule, the
non-finite-loss guard and the trainer's config checks."""

import math

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler
from helpers.tiny_grouppose import BASE_CONFIG
from helpers.training_utils import REPO_ROOT, TINY_CONFIG
from torch import nn

from grouppose.config import get_grouppose_cfg
from grouppose.engine import (
    NonFiniteLossError,
    build_optimizer,
    check_losses_finite,
    with_full_model_clipping,
)
from grouppose.engine.trainer import check_training_config


def paper_solver_config():
    """The tiny model with the paper's solver (Base-GroupPose.yaml's, not the tiny config's)."""
    cfg = get_grouppose_cfg(str(TINY_CONFIG))
    cfg.SOLVER = get_grouppose_cfg(str(BASE_CONFIG)).SOLVER
    cfg.MODEL.GROUP_POSE.ENC_LAYERS = 1
    cfg.MODEL.GROUP_POSE.DEC_LAYERS = 2
    return cfg


@pytest.fixture(scope="module")
def cfg_and_model():
    cfg = paper_solver_config()
    torch.manual_seed(0)
    return cfg, build_model(cfg)


def test_paper_recipe_defaults():
    solver = paper_solver_config().SOLVER
    assert (solver.BASE_LR, solver.WEIGHT_DECAY, solver.WEIGHT_DECAY_NORM) == (1e-4, 1e-4, 1e-4)
    assert (solver.BACKBONE_MULTIPLIER, solver.LINEAR_PROJ_MULTIPLIER) == (0.1, 0.1)
    assert solver.WARMUP_ITERS == 0
    clip = solver.CLIP_GRADIENTS
    assert (clip.ENABLED, clip.CLIP_TYPE, clip.CLIP_VALUE) == (True, "full_model", 0.1)


def test_param_groups(cfg_and_model):
    cfg, model = cfg_and_model
    cfg = cfg.clone()
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0  # tell norm parameters apart
    optimizer = build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(group_of) == sum(len(g["params"]) for g in optimizer.param_groups) == len(trainable)
    norm_params = {
        id(p) for m in model.modules()
        if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm))
        for p in m.parameters(recurse=False)
    }
    counts = {"backbone": 0, "sampling_offsets": 0}
    for name, param in trainable:
        group = group_of[id(param)]
        if name.startswith("backbone."):
            expected_lr, counts["backbone"] = 1e-5, counts["backbone"] + 1
        elif ".sampling_offsets." in name:
            expected_lr, counts["sampling_offsets"] = 1e-5, counts["sampling_offsets"] + 1
        else:
            expected_lr = 1e-4
        assert group["lr"] == pytest.approx(expected_lr), name
        assert group["weight_decay"] == (0.0 if id(param) in norm_params else 1e-4), name
    # encoder and decoder layers each have sampling offsets (weight + bias)
    assert counts["backbone"] > 0 and counts["sampling_offsets"] == 2 * (1 + 2)


def test_lr_schedule_no_warmup_and_step(cfg_and_model):
    cfg, model = cfg_and_model
    cfg = cfg.clone()
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS = 10, (6,)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    seen = []
    for _ in range(10):
        seen.append(sorted({round(g["lr"], 12) for g in optimizer.param_groups}))
        optimizer.step()  # no gradients: a no-op, in the order the scheduler expects
        scheduler.step()
    assert seen[0] == seen[5] == [1e-5, 1e-4]
    assert seen[6] == seen[9] == [1e-6, 1e-5]


def test_full_model_clipping_scales_all_gradients_together():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1))
    optimizer = with_full_model_clipping(torch.optim.SGD, max_norm=0.1)([a, b], lr=1.0)
    a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([12.0])  # total norm 13
    optimizer.step()
    # one factor 0.1 / 13 for all: directions kept (per-parameter clipping would not)
    torch.testing.assert_close(a.detach(), -torch.tensor([3.0, 4.0]) * 0.1 / 13)
    torch.testing.assert_close(b.detach(), -torch.tensor([12.0]) * 0.1 / 13)
    with pytest.raises(ValueError, match="CLIP_VALUE"):
        with_full_model_clipping(torch.optim.SGD, max_norm=0.0)


def test_build_optimizer_clip_types(cfg_and_model):
    cfg, model = cfg_and_model
    cfg = cfg.clone()
    assert "FullModelClipping" in type(build_optimizer(cfg, model)).__name__
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"  # Detectron2's per-parameter clipping
    assert "WithGradientClip" in type(build_optimizer(cfg, model)).__name__
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = False
    assert type(build_optimizer(cfg, model)) is torch.optim.AdamW


def test_non_finite_loss_names_term_and_iteration():
    finite = {"loss_cls": torch.tensor(1.0), "loss_oks_1": torch.tensor(0.5)}
    check_losses_finite(finite, iteration=3)
    for bad in (math.nan, math.inf):
        losses = dict(finite, loss_oks_1=torch.tensor(bad))
        with pytest.raises(NonFiniteLossError, match=r"iteration 7: loss_oks_1 = (nan|inf)"):
            check_losses_finite(losses, iteration=7)


def test_training_config_checks():
    cfg = paper_solver_config()
    check_training_config(cfg)
    for key, value, message in [
        ("DATALOADER.ASPECT_RATIO_GROUPING", True, "ASPECT_RATIO_GROUPING"),
        ("DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler", "SAMPLER_TRAIN"),
        ("SOLVER.AMP.ENABLED", True, "AMP"),
    ]:
        bad = cfg.clone()
        bad.merge_from_list([key, value])
        with pytest.raises(ValueError, match=message):
            check_training_config(bad)


@pytest.mark.parametrize("config_file", [
    "COCO-Keypoints/grouppose_R50_60e.yaml", "CrowdPose/grouppose_R50_80e.yaml",
    "Synthetic/grouppose_tiny.yaml",
])
def test_training_configs(config_file):
    cfg = get_grouppose_cfg(str(REPO_ROOT / "configs" / config_file))
    check_training_config(cfg)
    assert all(0 < step < cfg.SOLVER.MAX_ITER for step in cfg.SOLVER.STEPS)
    assert cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "full_model"
    if not config_file.startswith("Synthetic"):  # the paper's recipe at batch 16
        assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR) == (16, 1e-4)
        assert cfg.SOLVER.BACKBONE_MULTIPLIER == 0.1
        assert cfg.SOLVER.STEPS[0] / cfg.SOLVER.MAX_ITER == pytest.approx(
            {"COCO-Keypoints": 50 / 60, "CrowdPose": 70 / 80}[config_file.split("/")[0]],
            abs=1e-4)
