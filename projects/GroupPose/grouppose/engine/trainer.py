"""Group Pose training: Detectron2's DefaultTrainer with our data, optimizer and safeguards."""

import logging
import os
import weakref
from typing import Callable, Dict, List, Optional, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.build import (
    filter_images_with_few_keypoints,
    filter_images_with_only_crowd_annotations,
)
from detectron2.engine import (
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    create_ddp_model,
    hooks,
)
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch import nn

from grouppose.checkpoint import SafeCheckpointer
from grouppose.data import GroupPoseDatasetMapper
from grouppose.data.unreadable_images import max_bad_images
from grouppose.engine.accumulation import micro_batches_per_step
from grouppose.engine.agreement import StepAgreement
from grouppose.engine.data_stream import TrainingBatches
from grouppose.engine.optimizer import build_optimizer
from grouppose.engine.preemption import PreemptionHook
from grouppose.engine.train_loop import training_step_class
from grouppose.engine.unreadable_image_hook import UnreadableImageHook
from grouppose.evaluation import build_keypoint_evaluator

__all__ = [
    "Trainer",
    "TrainingState",
    "distributed_model",
    "setup_grouppose_logger",
    "training_batches",
    "training_dataset_dicts",
    "training_images",
    "training_step",
    "with_grouppose_hooks",
]


def setup_grouppose_logger(output_dir: str) -> logging.Logger:
    """Send the grouppose package's log records (e.g. the dataset load summaries) to the console
    and ``output_dir``/log.txt, as ``default_setup`` does for Detectron2's: our loggers are not
    under "detectron2", so without this their info lines are dropped and their warnings reach
    stderr unformatted. Calling it again with the same directory adds nothing (Detectron2's
    ``setup_logger`` is cached)."""
    return setup_logger(output_dir, distributed_rank=comm.get_rank(), name="grouppose")


def _has_training_target(record: Dict) -> bool:
    """Whether the image has a person the mapper makes a target: non-crowd, a keypoint v > 0."""
    return any(
        not a.get("iscrowd", 0) and any(v > 0 for v in (a.get("keypoints") or [])[2::3])
        for a in record.get("annotations", [])
    )


def training_dataset_dicts(cfg: CfgNode) -> List[Dict]:
    """``training_images`` of DATASETS.TRAIN, DATALOADER.FILTER_EMPTY_ANNOTATIONS,
    MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE and SOLVER.IMS_PER_BATCH."""
    return training_images(
        cfg.DATASETS.TRAIN, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE, cfg.SOLVER.IMS_PER_BATCH,
    )


def training_images(
    names: Sequence[str], filter_empty: bool = True, min_keypoints: int = 1,
    total_batch_size: int = 0,
) -> List[Dict]:
    """The dicts of the datasets ``names`` (DATASETS.TRAIN), less the images with only crowd
    people (``filter_empty``) and those with fewer than ``min_keypoints`` labeled keypoints
    (MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE). One warning when they are fewer than
    ``total_batch_size`` (each batch then holds some images twice).

    Raises:
        ValueError naming the datasets and their json files when no image has a labeled
        person (e.g. ``"annotations": []``), or when the filters leave no image.
    """
    # Unfiltered first: Detectron2's filters would turn "no labeled person" into a bare assert.
    dataset_dicts = get_detection_dataset_dicts(names, filter_empty=False)
    described = ", ".join(f"'{name}' ({MetadataCatalog.get(name).get('json_file')})"
                          for name in names)
    if not any(_has_training_target(record) for record in dataset_dicts):
        raise ValueError(
            f"DATASETS.TRAIN has no labeled person to train on: no image of {described} has a "
            "non-crowd annotation with a labeled keypoint (v > 0). A people-free dataset can be "
            "evaluated, not trained on"
        )
    if filter_empty:
        dataset_dicts = filter_images_with_only_crowd_annotations(dataset_dicts)
    if min_keypoints > 0:
        dataset_dicts = filter_images_with_few_keypoints(dataset_dicts, min_keypoints)
    if not dataset_dicts:
        raise ValueError(
            f"no image of {described} has MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE = "
            f"{min_keypoints} labeled keypoints"
        )
    if len(dataset_dicts) < total_batch_size:
        logging.getLogger(__name__).warning(
            f"SOLVER.IMS_PER_BATCH {total_batch_size} is larger than the training set "
            f"({len(dataset_dicts)} images of {described}): every batch repeats images"
        )
    return dataset_dicts


def training_batches(
    dataset: List[Dict], mapper: Callable[[Dict], Optional[Dict]], total_batch_size: int,
    num_workers: int = 0, seed: int = -1,
) -> TrainingBatches:
    """The resumable stream of ``dataset`` batches (see grouppose.engine.data_stream), seeded by
    ``seed`` (SEED; random, the same in every process, when < 0)."""
    seed = seed if seed >= 0 else comm.shared_random_seed()
    return TrainingBatches(dataset, mapper, total_batch_size, num_workers, seed)


def check_training_config(cfg: CfgNode) -> None:
    """Reject settings this trainer cannot honour, naming the key."""
    if cfg.DATALOADER.ASPECT_RATIO_GROUPING:
        raise ValueError(
            "DATALOADER.ASPECT_RATIO_GROUPING must be False: Group Pose batches images in the "
            "order of a seeded stream so that --resume and multi-process training see the same "
            "data (see grouppose.engine.data_stream)"
        )
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        raise ValueError(
            f"DATALOADER.SAMPLER_TRAIN '{cfg.DATALOADER.SAMPLER_TRAIN}' is not supported; "
            "Group Pose training samples uniformly ('TrainingSampler')"
        )
    if cfg.SOLVER.REFERENCE_WORLD_SIZE:
        # Detectron2's auto-scaling changes the batch and the learning rate: another recipe.
        raise ValueError(
            f"SOLVER.REFERENCE_WORLD_SIZE ({cfg.SOLVER.REFERENCE_WORLD_SIZE}) is not supported: "
            "it would change the batch and learning rate of the recipe. Keep "
            "SOLVER.IMS_PER_BATCH and set SOLVER.IMS_PER_DEVICE to the images that fit on one "
            "device; the trainer accumulates gradients up to IMS_PER_BATCH"
        )
    if cfg.SOLVER.AMP.ENABLED and not cfg.MODEL.DEVICE.startswith("cuda"):
        raise ValueError(
            f"SOLVER.AMP.ENABLED needs a CUDA device, but MODEL.DEVICE is '{cfg.MODEL.DEVICE}'"
        )


def distributed_model(model: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
    """DistributedDataParallel when there are several processes (CPU processes included)."""
    kwargs = {"device_ids": None} if next(model.parameters()).device.type == "cpu" else {}
    return create_ddp_model(
        model, broadcast_buffers=False, find_unused_parameters=find_unused_parameters, **kwargs,
    )


def training_step(
    model: nn.Module, data_loader: TrainingBatches, optimizer: torch.optim.Optimizer, *,
    amp: bool, micro_batches: int, find_unused_parameters: bool,
) -> SimpleTrainer:
    """The guarded, accumulating step (``training_step_class``) of ``model``, wrapped for
    distributed training, running ``micro_batches`` passes per optimizer step."""
    model = distributed_model(model, find_unused_parameters)
    step = training_step_class(amp)(model, data_loader, optimizer)
    step.micro_batches = micro_batches
    return step


def with_grouppose_hooks(
    hook_list: List[Optional[hooks.HookBase]], data_loader: TrainingBatches, max_bad: int,
) -> List[hooks.HookBase]:
    """``hook_list`` with, right after the LR scheduler's (so that they see the state a periodic
    checkpoint of the step holds), the unreadable-image hook (``max_bad``:
    DATALOADER.MAX_BAD_IMAGES) and the preemption hook, which the processes decide on together
    with one all-reduce per step."""
    hook_list = list(hook_list)
    after_scheduler = 1 + next(
        i for i, hook in enumerate(hook_list) if isinstance(hook, hooks.LRScheduler)
    )
    limit = max_bad_images(max_bad, len(data_loader.dataset))
    agreement = StepAgreement()
    hook_list[after_scheduler:after_scheduler] = [
        UnreadableImageHook(data_loader, limit, agreement), PreemptionHook(agreement),
    ]
    return hook_list


class TrainingState:
    """Mixin for a TrainerBase with ``_trainer`` (the step), ``checkpointer``, ``data_loader``
    (TrainingBatches) and ``start_iter``: checkpoints hold the step's state (optimizer, AMP
    grad scaler) and the data stream's seed, and loading one starts the stream at the next
    iteration."""

    def load_or_resume(self, weights: str, resume: bool) -> None:
        """Load the last checkpoint of the output folder (``resume``) or ``weights``, then start
        the data stream at the first iteration to run."""
        self.checkpointer.resume_or_load(weights, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            # The checkpoint holds the iteration that finished: continue with the next one.
            self.start_iter = self.iter + 1
        self.data_loader.start_iter = self.start_iter

    def state_dict(self) -> Dict:
        state = TrainerBase.state_dict(self)
        state["_trainer"] = self._trainer.state_dict()  # optimizer (+ AMP grad scaler)
        state["data_seed"] = self.data_loader.seed
        return state

    def load_state_dict(self, state_dict: Dict) -> None:
        TrainerBase.load_state_dict(self, state_dict)
        self._trainer.load_state_dict(state_dict["_trainer"])
        self.data_loader.seed = state_dict["data_seed"]


class Trainer(TrainingState, DefaultTrainer):
    """DefaultTrainer with Group Pose's mapper, keypoint evaluators, the paper's optimizer, a
    resumable data stream, gradient accumulation (SOLVER.IMS_PER_DEVICE, see
    grouppose.engine.accumulation), a non-finite-loss guard, checkpoints that include the
    optimizer (and AMP grad scaler) state, CPU multi-process training, weights read without
    running code from them unless ``trust_pickle`` (see ``SafeCheckpointer``), a checkpoint and
    exit on SIGTERM / SIGUSR1 / SIGINT (``grouppose.engine.preemption``) and unreadable training
    images replaced (``grouppose.data.unreadable_images``).

    ``__init__``, ``build_model`` and ``test`` set up the grouppose logger for cfg.OUTPUT_DIR
    (``setup_grouppose_logger``): training constructs a Trainer, --eval-only only calls the
    latter two."""

    def __init__(self, cfg: CfgNode, *, trust_pickle: bool = False):
        # DefaultTrainer.__init__, with the guarded, accumulating step and CPU-capable DDP, and
        # without auto_scale_workers (check_training_config refuses REFERENCE_WORLD_SIZE).
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        setup_grouppose_logger(cfg.OUTPUT_DIR)
        check_training_config(cfg)
        micro_batches = micro_batches_per_step(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        self._trainer = training_step(
            model, data_loader, optimizer, amp=cfg.SOLVER.AMP.ENABLED, micro_batches=micro_batches,
            # Without auxiliary losses the earlier decoder layers' class heads get no gradient.
            find_unused_parameters=not cfg.MODEL.GROUP_POSE.AUX_LOSS,
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = SafeCheckpointer(
            self._trainer.model, cfg.OUTPUT_DIR, trust_pickle=trust_pickle,
            trainer=weakref.proxy(self),
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self) -> List[hooks.HookBase]:
        """Detectron2's hooks ``with_grouppose_hooks``."""
        return with_grouppose_hooks(
            super().build_hooks(), self.data_loader, self.cfg.DATALOADER.MAX_BAD_IMAGES
        )

    def resume_or_load(self, resume: bool = True) -> None:
        """``load_or_resume`` of MODEL.WEIGHTS."""
        self.load_or_resume(self.cfg.MODEL.WEIGHTS, resume)

    @classmethod
    def build_model(cls, cfg: CfgNode) -> nn.Module:
        setup_grouppose_logger(cfg.OUTPUT_DIR)
        return super().build_model(cfg)

    @classmethod
    def test(cls, cfg: CfgNode, model: nn.Module, evaluators: Optional[List] = None) -> Dict:
        setup_grouppose_logger(cfg.OUTPUT_DIR)
        return super().test(cfg, model, evaluators)

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode) -> TrainingBatches:
        """Batches of DATASETS.TRAIN (``training_dataset_dicts``), mapped by
        GroupPoseDatasetMapper, in the order of a stream seeded by SEED (random when < 0)."""
        return training_batches(
            training_dataset_dicts(cfg), GroupPoseDatasetMapper(cfg, is_train=True),
            cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_WORKERS, cfg.SEED,
        )

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        return build_detection_test_loader(
            cfg, dataset_name, mapper=GroupPoseDatasetMapper(cfg, is_train=False)
        )

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str):
        output_dir = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_keypoint_evaluator(cfg, dataset_name, output_dir)
