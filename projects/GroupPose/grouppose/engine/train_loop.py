"""Detectron2's training steps with a guard that stops on a non-finite loss term.

Detectron2 checks only the *sum* of the losses, on the main process, and its message lists every
term. Here every worker checks every term after the backward pass and before the optimizer step
(so the weights stay finite), the workers agree, and all stop with the names of the offending
terms and the iteration. Predictions that diverge so far that the Hungarian matching cannot run
stop earlier, in the criterion (``grouppose.modeling.criterion.NonFinitePredictionError``).
"""

import math
from typing import Dict, Mapping, Type

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils import comm

from grouppose.engine.accumulation import AMPGradientAccumulation, GradientAccumulation
from grouppose.modeling.criterion import DIVERGENCE_ADVICE

__all__ = ["NonFiniteLossError", "check_losses_finite", "training_step_class"]


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite."""


def non_finite_terms(loss_dict: Mapping[str, torch.Tensor]) -> Dict[str, float]:
    """The scalar loss terms that are NaN or +-inf, name -> value."""
    if not loss_dict:
        return {}
    # One device -> host copy for all terms, not one per term.
    values = torch.stack([loss.detach().float().reshape(()) for loss in loss_dict.values()])
    return {
        name: value for name, value in zip(loss_dict, values.cpu().tolist())
        if not math.isfinite(value)
    }


def check_losses_finite(loss_dict: Mapping[str, torch.Tensor], iteration: int) -> None:
    """Raise NonFiniteLossError on every worker if any worker has a non-finite loss term.

    Args:
        loss_dict: this worker's scalar losses.
        iteration: the training iteration, for the message.
    """
    reports = comm.all_gather(non_finite_terms(loss_dict))
    bad = [
        f"{name} = {value}" + (f" (worker {rank})" if len(reports) > 1 else "")
        for rank, report in enumerate(reports) for name, value in report.items()
    ]
    if bad:
        raise NonFiniteLossError(
            f"Non-finite loss at iteration {iteration}: {', '.join(bad)}. {DIVERGENCE_ADVICE}"
        )


class _NonFiniteLossGuard:
    """Mixin for Detectron2's SimpleTrainer / AMPTrainer: both call ``_write_metrics`` after the
    backward pass and before the optimizer step, every iteration."""

    iter: int

    def _write_metrics(self, loss_dict: Mapping[str, torch.Tensor], *args, **kwargs):
        check_losses_finite(loss_dict, self.iter)
        super()._write_metrics(loss_dict, *args, **kwargs)


class GuardedSimpleTrainer(_NonFiniteLossGuard, GradientAccumulation, SimpleTrainer):
    """SimpleTrainer that stops on a non-finite loss term and can accumulate gradients."""


class GuardedAMPTrainer(_NonFiniteLossGuard, AMPGradientAccumulation, AMPTrainer):
    """AMPTrainer that stops on a non-finite loss term and can accumulate gradients."""


def training_step_class(amp: bool) -> Type[SimpleTrainer]:
    """The guarded step for SOLVER.AMP.ENABLED = ``amp``."""
    return GuardedAMPTrainer if amp else GuardedSimpleTrainer
