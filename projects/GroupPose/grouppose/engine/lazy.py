"""Training and evaluation from a Detectron2 LazyConfig (configs/lazy/,
tools/lazyconfig_train_net.py).

The trainer is built from the pieces ``grouppose.engine.Trainer`` uses (the guarded,
accumulating step, the resumable data stream, ``SafeCheckpointer``, the unreadable-image and
preemption hooks, the checkpointed training state); only where their settings come from differs.
A config has Detectron2's LazyConfig layout:

- ``model``: the ``GroupPose`` module (configs/lazy/common/model.py);
- ``dataloader.train``: ``grouppose.engine.trainer.training_batches`` (its ``total_batch_size``
  is SOLVER.IMS_PER_BATCH, its ``seed`` SEED); ``dataloader.test``: Detectron2's
  ``build_detection_test_loader``; ``dataloader.evaluator``: ``keypoint_evaluator``;
- ``optimizer``: its ``params.model`` is set to the model here;
- ``lr_multiplier``: a ParamScheduler of the training fraction (SOLVER.STEPS / GAMMA / WARMUP_*);
- ``train``: ``output_dir``, ``init_checkpoint`` (MODEL.WEIGHTS), ``max_iter``, ``device``,
  ``seed``, ``amp.enabled``, ``ims_per_device`` (SOLVER.IMS_PER_DEVICE),
  ``find_unused_parameters``, ``checkpointer.period`` / ``max_to_keep``, ``eval_period``,
  ``log_period``, ``max_bad_images`` (DATALOADER.MAX_BAD_IMAGES).
"""

import logging
import weakref
from typing import Dict, List

from detectron2.config import instantiate
from detectron2.engine import TrainerBase, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.solver import LRMultiplier
from detectron2.utils import comm
from torch import nn

from grouppose.checkpoint import SafeCheckpointer
from grouppose.engine.accumulation import micro_batches
from grouppose.engine.trainer import (
    TrainingState,
    setup_grouppose_logger,
    training_step,
    with_grouppose_hooks,
)

__all__ = ["LazyTrainer", "build_lazy_model", "lazy_test"]

logger = logging.getLogger(__name__)


def build_lazy_model(cfg) -> nn.Module:
    """``cfg.model`` instantiated, on ``cfg.train.device``."""
    setup_grouppose_logger(cfg.train.output_dir)
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    logger.info(f"Model:\n{model}")
    return model


def lazy_test(cfg, model: nn.Module) -> Dict:
    """Evaluate ``model`` on ``cfg.dataloader.test`` with ``cfg.dataloader.evaluator`` (the
    results printed as Detectron2's ``test`` prints them); {} without an evaluator."""
    if "evaluator" not in cfg.dataloader:
        return {}
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    if comm.is_main_process():
        logger.info(f"Evaluation results for {cfg.dataloader.test.dataset.names} in csv format:")
        print_csv_format(results)
    return results


class LazyTrainer(TrainingState, TrainerBase):
    """``grouppose.engine.Trainer`` for a LazyConfig: the same step, data stream, checkpoints,
    hooks (in Detectron2's order: timer, LR, unreadable images, preemption, checkpointer,
    evaluation, writers) and safeguards; see the module docstring for the keys."""

    def __init__(self, cfg, *, trust_pickle: bool = False):
        TrainerBase.__init__(self)
        train = cfg.train
        setup_grouppose_logger(train.output_dir)
        if train.amp.enabled and not train.device.startswith("cuda"):
            raise ValueError(
                f"train.amp.enabled needs a CUDA device, but train.device is '{train.device}'"
            )
        micro = micro_batches(
            cfg.dataloader.train.total_batch_size, train.ims_per_device, comm.get_world_size(),
            keys=("dataloader.train.total_batch_size", "train.ims_per_device"),
        )
        model = build_lazy_model(cfg)
        cfg.optimizer.params.model = model
        optimizer = instantiate(cfg.optimizer)
        data_loader = instantiate(cfg.dataloader.train)
        self._trainer = training_step(
            model, data_loader, optimizer, amp=train.amp.enabled, micro_batches=micro,
            find_unused_parameters=train.find_unused_parameters,
        )
        self.scheduler = LRMultiplier(
            optimizer, multiplier=instantiate(cfg.lr_multiplier), max_iter=train.max_iter
        )
        self.checkpointer = SafeCheckpointer(
            self._trainer.model, train.output_dir, trust_pickle=trust_pickle,
            trainer=weakref.proxy(self),
        )
        self.start_iter = 0
        self.max_iter = train.max_iter
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @property
    def model(self) -> nn.Module:
        return self._trainer.model

    @property
    def data_loader(self):
        return self._trainer.data_loader

    @property
    def optimizer(self):
        return self._trainer.optimizer

    def build_hooks(self) -> List[hooks.HookBase]:
        train = self.cfg.train
        main = comm.is_main_process()

        def test_and_save_results() -> Dict:
            self._last_eval_results = lazy_test(self.cfg, self.model)
            return self._last_eval_results

        return with_grouppose_hooks([
            hooks.IterationTimer(),
            hooks.LRScheduler(),
            hooks.PeriodicCheckpointer(
                self.checkpointer, train.checkpointer.period,
                max_to_keep=train.checkpointer.max_to_keep,
            ) if main else None,
            hooks.EvalHook(train.eval_period, test_and_save_results),
            hooks.PeriodicWriter(
                default_writers(train.output_dir, train.max_iter), period=train.log_period
            ) if main else None,
        ], self.data_loader, train.max_bad_images)

    def run_step(self) -> None:
        self._trainer.iter = self.iter
        self._trainer.run_step()

    def resume_or_load(self, resume: bool = True) -> None:
        """``load_or_resume`` of ``train.init_checkpoint``."""
        self.load_or_resume(self.cfg.train.init_checkpoint, resume)

    def train(self) -> Dict:
        """Train from ``start_iter`` to ``train.max_iter``; the last evaluation's results."""
        super().train(self.start_iter, self.max_iter)
        return getattr(self, "_last_eval_results", {})
