"""StepAgreement: the decisions of all training hooks (stop signal, unreadable images) agreed on
by all processes with one all-reduce per step."""

import torch
import torch.distributed as dist
from detectron2.utils import comm
from helpers.training_utils import tiny_training_config

from grouppose.engine import Trainer
from grouppose.engine.agreement import StepAgreement
from grouppose.engine.preemption import PreemptionHook
from grouppose.engine.unreadable_image_hook import UnreadableImageHook


def test_one_all_reduce_per_step_answers_every_question(monkeypatch):
    """Two processes, simulated: the other one has only the second question's flag raised."""
    reduced = []

    def all_reduce(values, op, group):
        reduced.append(values.tolist())
        values.copy_(torch.maximum(values, torch.tensor([0, 1], dtype=values.dtype)))

    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(comm, "_get_global_gloo_group", lambda: None)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    flags = {"signal": True, "images": False}
    agreement = StepAgreement()
    for name in flags:
        agreement.add(name, lambda name=name: flags[name])

    assert agreement.any_process("signal", 0) and agreement.any_process("images", 0)
    flags["signal"] = False  # asked again only at the next step
    assert agreement.any_process("signal", 0)
    assert reduced == [[1, 0]]
    assert not agreement.any_process("signal", 1) and agreement.any_process("images", 1)
    assert reduced == [[1, 0], [0, 0]]


def test_trainer_hooks_share_one_agreement(tmp_path, restore_grouppose_logger):
    trainer = Trainer(tiny_training_config(tmp_path / "data", tmp_path / "out"))
    hooks = {type(hook): hook for hook in trainer._hooks}
    assert hooks[UnreadableImageHook].agreement is hooks[PreemptionHook].agreement
