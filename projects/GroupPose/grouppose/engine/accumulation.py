"""Gradient accumulation: the same optimizer steps on any number of devices.

SOLVER.IMS_PER_BATCH is the batch of one optimizer step (the paper's 16), whatever the hardware.
SOLVER.IMS_PER_DEVICE is how many images one process puts through one forward pass (0: all of
its IMS_PER_BATCH / processes, Detectron2's behaviour). A process then runs
``IMS_PER_BATCH / (processes * IMS_PER_DEVICE)`` forward / backward passes (micro-batches) per
optimizer step and steps once, so that the step equals the one-pass step:

- the step's images are this process's share of the data stream's batch of the iteration, cut
  into consecutive micro-batches (grouppose.engine.data_stream), the same set however it is cut;
- every micro-batch's losses are normalised by the people of the whole step, over all
  micro-batches and processes (``grouppose.modeling.criterion.step_normaliser``), so that the
  summed gradients are those of the one-pass loss;
- DistributedDataParallel averages the gradients once, on the last micro-batch (``no_sync``);
- gradient clipping, the optimizer, the iteration counter and with it the LR schedule, the
  checkpoint and eval periods and the logged metrics (each term summed over the micro-batches)
  see one step.

BatchNorm statistics are those of each micro-batch (FrozenBN, the paper's, has none).
"""

import contextlib
import time
from typing import ContextManager, Dict, List, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.utils import comm
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from grouppose.modeling.criterion import step_normaliser

__all__ = [
    "AMPGradientAccumulation",
    "GradientAccumulation",
    "micro_batches",
    "micro_batches_per_step",
    "people_in",
    "split_micro_batches",
]


def micro_batches_per_step(cfg: CfgNode, world_size: int) -> int:
    """``micro_batches`` of SOLVER.IMS_PER_BATCH and SOLVER.IMS_PER_DEVICE."""
    return micro_batches(cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.IMS_PER_DEVICE, world_size)


def micro_batches(
    batch: int, per_device: int, world_size: int,
    keys: Tuple[str, str] = ("SOLVER.IMS_PER_BATCH", "SOLVER.IMS_PER_DEVICE"),
) -> int:
    """Forward / backward passes per optimizer step of each process, for ``batch`` images per
    step and ``per_device`` per pass (0: ``batch`` / processes); ``keys`` name the two settings
    in errors.

    Raises:
        ValueError naming both settings and the number of processes when they do not divide.
    """
    batch_key, device_key = keys
    if per_device < 0:
        raise ValueError(f"{device_key} must be >= 0 (0: {batch_key} / processes), "
                         f"got {per_device}")
    if per_device == 0:
        if batch <= 0 or batch % world_size:
            raise ValueError(f"{batch_key} ({batch}) must be a positive multiple of "
                             f"the number of processes ({world_size})")
        return 1
    if batch <= 0 or batch % (world_size * per_device):
        raise ValueError(
            f"{batch_key} ({batch}) must be a positive multiple of the number of "
            f"processes ({world_size}) x {device_key} ({per_device}): each process "
            f"accumulates {batch_key} / (processes x {device_key}) micro-batches per step"
        )
    per_process = batch // world_size
    return per_process // per_device


def split_micro_batches(batch: List[Dict], micro_batches: int) -> List[List[Dict]]:
    """``batch`` (this process's images of a step) cut into ``micro_batches`` consecutive
    equal parts."""
    size = len(batch) // micro_batches
    return [batch[index * size:(index + 1) * size] for index in range(micro_batches)]


def people_in(batch: List[Dict]) -> int:
    """People (training targets) of the mapped images of ``batch``, as the criterion counts them:
    an image without people has Instances without fields."""
    return sum(
        len(x["instances"]) if x["instances"].has("gt_keypoints") else 0 for x in batch
    )


def _no_sync(model: nn.Module, skip: bool) -> ContextManager:
    """DDP's ``no_sync`` when ``skip`` (gradients stay local), else nothing."""
    if skip and isinstance(model, DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


class GradientAccumulation:
    """Mixin for Detectron2's SimpleTrainer: ``run_step`` accumulates ``micro_batches``
    forward / backward passes per optimizer step. With one micro-batch it is SimpleTrainer's
    ``run_step`` unchanged."""

    micro_batches: int = 1
    model: nn.Module
    optimizer: torch.optim.Optimizer

    def run_step(self) -> None:
        if self.micro_batches == 1:
            return super().run_step()
        assert self.model.training, "the model was changed to eval mode"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        parts = split_micro_batches(data, self.micro_batches)
        # Like one pass over the step: people over all micro-batches, averaged over processes.
        people = sum(comm.all_gather(people_in(data))) / comm.get_world_size()
        self.optimizer.zero_grad()
        step_losses: Dict[str, torch.Tensor] = {}
        with step_normaliser(people):
            for index, part in enumerate(parts):
                with _no_sync(self.model, skip=index < len(parts) - 1):
                    with self._forward_context():
                        loss_dict = self.model(part)
                        losses = sum(loss_dict.values())
                    self._backward(losses)
                for name, value in loss_dict.items():
                    step_losses[name] = step_losses.get(name, 0) + value.detach()
        self._write_metrics(step_losses, data_time)
        self._optimizer_step()

    def _forward_context(self) -> ContextManager:
        return contextlib.nullcontext()

    def _backward(self, losses: torch.Tensor) -> None:
        losses.backward()

    def _optimizer_step(self) -> None:
        self.optimizer.step()


class AMPGradientAccumulation(GradientAccumulation):
    """The same for Detectron2's AMPTrainer: autocast forward, scaled backward, scaler step."""

    def _forward_context(self) -> ContextManager:
        return torch.autocast("cuda")

    def _backward(self, losses: torch.Tensor) -> None:
        self.grad_scaler.scale(losses).backward()

    def _optimizer_step(self) -> None:
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
