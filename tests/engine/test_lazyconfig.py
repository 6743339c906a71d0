"""The LazyConfigs (configs/lazy/) against their yaml twins, and tools/lazyconfig_train_net.py
end to end: the same model (state_dict keys and shapes, outputs from the same weights), optimizer
groups, LR schedule, augmentations and data settings; a 20-iteration run trains, evaluates and
resumes."""

import json
import os
import signal
import weakref

import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, instantiate
from detectron2.data import transforms as T
from detectron2.engine import hooks
from detectron2.modeling import build_model
from detectron2.solver import LRMultiplier, build_lr_scheduler
from detectron2.utils.events import EventStorage
from helpers.training_utils import (
    FAST_LAZY_OPTS,
    LAZY_TINY_CONFIG,
    REPO_ROOT,
    register_tiny_datasets,
    run_lazy_train_net,
    tiny_training_config,
)

from grouppose.config import get_grouppose_cfg
from grouppose.data.mapper import GroupPoseDatasetMapper
from grouppose.engine import Trainer
from grouppose.engine.lazy import LazyTrainer
from grouppose.engine.optimizer import build_optimizer
from grouppose.engine.preemption import PREEMPTED_EXIT_CODE
from grouppose.modeling.decoder import GroupPoseDecoder
from grouppose.modeling.variants import DecoderVariant

# LazyConfig -> its yaml twin, both under configs/.
PAIRS = {
    "COCO-Keypoints/grouppose_R50_60e": "R50",
    "COCO-Keypoints/grouppose_SwinT_60e": "SwinT",
    "COCO-Keypoints/grouppose_SwinL_60e": "SwinL",
    "CrowdPose/grouppose_R50_80e": "R50",
    "CrowdPose/grouppose_SwinL_80e": "SwinL",
    "Synthetic/grouppose_tiny": "tiny",
}
# Swin-L (~200M parameters) twice per config is slow on a CPU: those pairs run with -m slow.
ALL = [pytest.param(name, marks=pytest.mark.slow) if kind == "SwinL" else name
       for name, kind in PAIRS.items()]
SMALL = [name for name, kind in PAIRS.items() if kind in ("R50", "tiny")]


def configs(name):
    """(yaml CfgNode on the CPU, LazyConfig on the CPU) of the pair ``name``."""
    cfg = get_grouppose_cfg(str(REPO_ROOT / "configs" / f"{name}.yaml"), ["MODEL.DEVICE", "cpu"])
    lazy = LazyConfig.load(str(REPO_ROOT / "configs" / "lazy" / f"{name}.py"))
    lazy.train.device = "cpu"
    return cfg, lazy


def models(name):
    """(yaml model, LazyConfig model with the yaml model's weights), both in eval mode."""
    cfg, lazy = configs(name)
    yaml_model, lazy_model = build_model(cfg).eval(), instantiate(lazy.model).eval()
    lazy_model.load_state_dict(yaml_model.state_dict())  # strict: raises on any key mismatch
    return yaml_model, lazy_model


@pytest.mark.parametrize("name", ALL)
def test_same_state_dict_keys_shapes_and_model_settings(name):
    cfg, lazy = configs(name)
    yaml_model, lazy_model = build_model(cfg), instantiate(lazy.model)
    shapes = {k: v.shape for k, v in yaml_model.state_dict().items()}
    assert {k: v.shape for k, v in lazy_model.state_dict().items()} == shapes
    trainable = {k for k, p in yaml_model.named_parameters() if p.requires_grad}
    assert {k for k, p in lazy_model.named_parameters() if p.requires_grad} == trainable
    for attr in ("in_features", "pos_temperature", "aux_loss", "test_topk", "test_score_thresh",
                 "inference_dtype", "detection_decoder"):
        assert getattr(lazy_model, attr) == getattr(yaml_model, attr), attr
    for a, b in ((lazy_model.criterion, yaml_model.criterion),
                 (lazy_model.criterion.matcher, yaml_model.criterion.matcher)):
        assert {k: v for k, v in vars(a).items() if not k.startswith("_") and k != "matcher"
                and k != "sigmas"} == {k: v for k, v in vars(b).items()
                                       if not k.startswith("_") and k != "matcher"
                                       and k != "sigmas"}
        torch.testing.assert_close(torch.as_tensor(a.sigmas), torch.as_tensor(b.sigmas),
                                   rtol=0, atol=0)
    assert lazy_model.decoder.variant == yaml_model.decoder.variant
    assert lazy_model.queries.variant == yaml_model.queries.variant


@pytest.mark.parametrize("name", SMALL)
def test_same_outputs_from_the_same_weights(name):
    yaml_model, lazy_model = models(name)
    torch.manual_seed(0)
    inputs = [{"image": torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)}]
    with torch.no_grad():
        expected, actual = yaml_model(inputs)[0]["instances"], lazy_model(inputs)[0]["instances"]
    # The same weights through the same operations in one process: bit-identical.
    for field in ("scores", "pred_keypoints"):
        torch.testing.assert_close(actual.get(field), expected.get(field), rtol=0, atol=0)


@pytest.mark.parametrize("name", SMALL)
def test_same_optimizer_groups(name):
    cfg, lazy = configs(name)
    yaml_model, lazy_model = models(name)
    yaml_optimizer = build_optimizer(cfg, yaml_model)
    lazy.optimizer.params.model = lazy_model
    lazy_optimizer = instantiate(lazy.optimizer)
    assert type(lazy_optimizer).__name__ == type(yaml_optimizer).__name__

    def groups(optimizer, model):
        names = {id(p): n for n, p in model.named_parameters()}
        return [(g["lr"], g["weight_decay"], [names[id(p)] for p in g["params"]])
                for g in optimizer.param_groups]

    assert groups(lazy_optimizer, lazy_model) == groups(yaml_optimizer, yaml_model)
    assert lazy_optimizer.defaults == yaml_optimizer.defaults


@pytest.mark.parametrize("name", list(PAIRS))
def test_same_lr_schedule_and_training_settings(name):
    cfg, lazy = configs(name)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    yaml_schedule = build_lr_scheduler(cfg, optimizer)
    lazy_schedule = LRMultiplier(optimizer, instantiate(lazy.lr_multiplier), lazy.train.max_iter)
    max_iter, (step,) = cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS
    for iteration in (0, 1, step - 1, step, step + 1, max_iter - 1):
        assert (lazy_schedule._multiplier(iteration / lazy.train.max_iter)
                == yaml_schedule._multiplier(iteration / max_iter)), iteration
    train, loader = lazy.train, lazy.dataloader
    assert (train.max_iter, train.checkpointer.period, train.eval_period, train.init_checkpoint,
            train.seed, train.output_dir, train.ims_per_device, train.max_bad_images) == (
        max_iter, cfg.SOLVER.CHECKPOINT_PERIOD, cfg.TEST.EVAL_PERIOD, cfg.MODEL.WEIGHTS,
        cfg.SEED, cfg.OUTPUT_DIR, cfg.SOLVER.IMS_PER_DEVICE, cfg.DATALOADER.MAX_BAD_IMAGES)
    assert list(loader.train.dataset.names) == list(cfg.DATASETS.TRAIN)
    assert [loader.test.dataset.names] == list(cfg.DATASETS.TEST)
    assert loader.train.total_batch_size == cfg.SOLVER.IMS_PER_BATCH
    assert loader.train.num_workers == loader.test.num_workers == cfg.DATALOADER.NUM_WORKERS
    assert train.find_unused_parameters == (not cfg.MODEL.GROUP_POSE.AUX_LOSS)


def describe(augmentation):
    """An augmentation (list) as nested tuples of its class names and public attributes."""
    if isinstance(augmentation, (list, tuple)):
        return tuple(describe(a) for a in augmentation)
    if isinstance(augmentation, (T.Augmentation, T.Transform)):
        return type(augmentation).__name__, tuple(
            (k, describe(v)) for k, v in sorted(vars(augmentation).items())
            if not k.startswith("_")
        )
    return augmentation


@pytest.mark.parametrize("name", list(PAIRS))
def test_same_train_and_test_augmentations(name):
    cfg, lazy = configs(name)
    for is_train, node in ((True, lazy.dataloader.train.mapper),
                           (False, lazy.dataloader.test.mapper)):
        expected, actual = GroupPoseDatasetMapper(cfg, is_train=is_train), instantiate(node)
        assert describe(actual.augmentations) == describe(expected.augmentations)
        assert (actual.is_train, actual.image_format, actual.num_keypoints) == (
            expected.is_train, expected.image_format, expected.num_keypoints)
        if is_train:
            assert actual.keypoint_hflip_indices.tolist() == (
                expected.keypoint_hflip_indices.tolist())


def tiny_lazy_config(output_dir, opts=()):
    """The tiny LazyConfig + FAST_LAZY_OPTS + ``opts``, writing to ``output_dir``."""
    return LazyConfig.apply_overrides(LazyConfig.load(str(LAZY_TINY_CONFIG)), [
        *FAST_LAZY_OPTS, f"train.output_dir={output_dir}", *opts,
    ])


@pytest.mark.usefixtures("restore_grouppose_logger", "one_cpu_thread")
def test_lazy_trainer_checkpoints_and_exits_on_sigterm_then_resumes(tmp_path):
    register_tiny_datasets(tmp_path / "data")
    lazy = tiny_lazy_config(tmp_path / "out", ["train.max_iter=6"])
    trainer = LazyTrainer(lazy)
    signal_at_2 = hooks.CallbackHook(
        after_step=lambda t: t.iter == 2 and os.kill(os.getpid(), signal.SIGTERM)
    )
    signal_at_2.trainer = weakref.proxy(trainer)
    trainer._hooks.insert(0, signal_at_2)
    trainer.resume_or_load(resume=False)
    with pytest.raises(SystemExit) as stop:
        trainer.train()
    assert stop.value.code == PREEMPTED_EXIT_CODE
    assert (tmp_path / "out" / "last_checkpoint").read_text() == "model_0000002.pth"

    resumed = LazyTrainer(tiny_lazy_config(tmp_path / "out", ["train.max_iter=6"]))
    resumed.data_loader.seed = -1  # restored from the checkpoint
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == resumed.data_loader.start_iter == 3
    assert resumed.data_loader.seed == trainer.data_loader.seed
    resumed.train()
    assert resumed.iter == 6 and (tmp_path / "out" / "model_final.pth").is_file()


def test_lazy_and_yaml_trainers_take_the_same_steps(tmp_path):
    """The same hooks, checkpointer and step; from the same weights, 3 accumulated steps (2
    passes of 2 images each) on the same data stream give the same weights."""
    cfg = tiny_training_config(tmp_path / "data", tmp_path / "yaml", ["SOLVER.IMS_PER_DEVICE", "2"])
    lazy = tiny_lazy_config(tmp_path / "lazy", ["train.ims_per_device=2"])
    yaml_trainer, lazy_trainer = Trainer(cfg), LazyTrainer(lazy)
    assert [type(h) for h in lazy_trainer._hooks] == [type(h) for h in yaml_trainer._hooks]
    assert type(lazy_trainer.checkpointer) is type(yaml_trainer.checkpointer)
    assert type(lazy_trainer._trainer) is type(yaml_trainer._trainer)
    assert lazy_trainer._trainer.micro_batches == yaml_trainer._trainer.micro_batches == 2
    assert lazy_trainer.data_loader.seed == yaml_trainer.data_loader.seed
    lazy_trainer.model.load_state_dict(yaml_trainer.model.state_dict())
    for trainer in (yaml_trainer, lazy_trainer):
        with EventStorage(0):
            for iteration in range(3):
                trainer.iter = iteration
                trainer.run_step()
    expected = dict(yaml_trainer.model.named_parameters())
    for name, param in lazy_trainer.model.named_parameters():
        # The same operations on the same data in one process: bit-identical.
        torch.testing.assert_close(param, expected[name], rtol=0, atol=0, msg=name)


def test_readme_decoder_snippet_builds_the_paper_decoder():
    snippet = L(GroupPoseDecoder)(
        num_layers=6, dim=256, num_heads=8, ffn_dim=2048, dropout=0.0, num_levels=4,
        num_points=4, num_keypoints=17, variant=L(DecoderVariant)(),
    )
    lazy = LazyConfig.load(str(REPO_ROOT / "configs" / "lazy" / "common" / "model.py"))
    expected = {k: v.shape for k, v in instantiate(lazy.model.decoder).state_dict().items()}
    assert {k: v.shape for k, v in instantiate(snippet).state_dict().items()} == expected


def read_metrics(output_dir):
    with open(output_dir / "metrics.json") as f:
        return [json.loads(line) for line in f]


def test_lazy_training_trains_evaluates_and_resumes(tmp_path):
    data_root, output_dir = tmp_path / "data", tmp_path / "train"
    # 2 images per pass: 2 accumulated passes per step of 4 images.
    opts = ["train.max_iter=20", "train.checkpointer.period=10", "train.eval_period=20",
            "train.log_period=10", "train.ims_per_device=2"]
    output = run_lazy_train_net(data_root, output_dir, opts=opts)
    records = read_metrics(output_dir)
    losses = [r for r in records if "total_loss" in r]
    assert [r["iteration"] for r in losses] == [9, 19]
    assert losses[1]["total_loss"] < losses[0]["total_loss"]
    assert losses[0]["lr"] == pytest.approx(3e-4)
    assert records[-1]["iteration"] == 20 and 0.0 <= records[-1]["keypoints/AP"] <= 100.0
    assert "Evaluation results for tiny_synthetic_val" in output
    assert (output_dir / "model_0000009.pth").is_file()
    assert (output_dir / "model_final.pth").is_file()

    # Resuming continues at iteration 20 with the optimizer and data stream of the checkpoint.
    output = run_lazy_train_net(
        data_root, output_dir, args=["--resume"], opts=[*opts[1:], "train.max_iter=25"]
    )
    assert "Starting training from iteration 20" in output
    assert read_metrics(output_dir)[-1]["iteration"] == 25

    output = run_lazy_train_net(
        data_root, tmp_path / "eval", args=["--eval-only"],
        opts=[f"train.init_checkpoint={output_dir / 'model_final.pth'}"],
    )
    assert "Evaluation results for tiny_synthetic_val" in output
