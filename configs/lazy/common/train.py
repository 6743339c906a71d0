"""Training settings (configs/Base-GroupPose.yaml, Detectron2's defaults) and the learning-rate
schedule helper of the Group Pose LazyConfigs; see grouppose.engine.lazy for each key."""

from typing import Sequence

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

train = {
    "output_dir": "output/grouppose",
    "init_checkpoint": "",  # MODEL.WEIGHTS
    "max_iter": 90000,
    "device": "cuda",
    "seed": -1,  # SEED: random (the same in every process) when < 0
    "amp": {"enabled": False},
    # SOLVER.IMS_PER_DEVICE: images per forward pass of one process (0: the batch / processes);
    # fewer accumulate gradients over several passes per optimizer step.
    "ims_per_device": 0,
    # DistributedDataParallel's; True is needed when model.aux_loss is False.
    "find_unused_parameters": False,
    "checkpointer": {"period": 5000, "max_to_keep": None},
    "eval_period": 0,  # 0: evaluate after the last iteration only
    "log_period": 20,
    "max_bad_images": -1,  # DATALOADER.MAX_BAD_IMAGES: -1 = 1 % of the training images
}


def step_schedule(steps: Sequence[int], max_iter: int, gamma: float = 0.1):
    """lr x ``gamma`` at each of ``steps`` (iterations) of ``max_iter``, no warmup: the
    WarmupMultiStepLR that SOLVER.STEPS / GAMMA / WARMUP_ITERS 0 give."""
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[gamma**k for k in range(len(steps) + 1)], milestones=list(steps),
            num_updates=max_iter,
        ),
        warmup_length=0.0,
        warmup_factor=0.001,
    )
