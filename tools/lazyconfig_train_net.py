#!/usr/bin/env python
"""Group Pose training and evaluation from a LazyConfig (configs/lazy/), as train_net.py does
from a yaml config:

    python tools/lazyconfig_train_net.py \
        --config-file configs/lazy/COCO-Keypoints/grouppose_R50_60e.py --num-gpus 8
    python tools/lazyconfig_train_net.py --config-file CONFIG --resume      # continue a run
    python tools/lazyconfig_train_net.py --config-file CONFIG --eval-only \
        train.init_checkpoint=model.pth
    python tools/lazyconfig_train_net.py --config-file configs/lazy/Synthetic/grouppose_tiny.py \
        train.max_iter=100 dataloader.train.total_batch_size=8 train.ims_per_device=2

Overrides are ``key=value``. Weights are read with ``grouppose.checkpoint.SafeCheckpointer``
(``--trust-pickle`` to read a trusted pickle as Detectron2 does); the data stream is resumable,
``train.ims_per_device`` accumulates gradients, and SIGTERM / SIGUSR1 / SIGINT checkpoint and
exit with status 75: the trainer is grouppose.engine.lazy.LazyTrainer, built from the pieces of
train_net.py's.
"""

import grouppose  # noqa: F401  (first: it quiets a warning of Detectron2's imports)

# isort: split
from detectron2.config import LazyConfig
from detectron2.engine import default_setup

from grouppose.checkpoint import SafeCheckpointer
from grouppose.config import available_device
from grouppose.data.command_line import register_command_line_datasets
from grouppose.engine.launcher import launch_command
from grouppose.engine.launcher import training_argument_parser as get_parser
from grouppose.engine.lazy import LazyTrainer, build_lazy_model, lazy_test


def setup(args):
    """The LazyConfig of --config-file with the ``key=value`` overrides."""
    cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
    cfg.train.device = available_device(cfg.train.device, "train.device")
    default_setup(cfg, args)
    return cfg


def main(args):
    # In every process (launch may start new ones), before the config names the datasets.
    register_command_line_datasets(args.dataset, args.dataset_meta)
    cfg = setup(args)
    if args.eval_only:
        model = build_lazy_model(cfg)
        SafeCheckpointer(
            model, save_dir=cfg.train.output_dir, trust_pickle=args.trust_pickle
        ).resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
        return lazy_test(cfg, model)
    trainer = LazyTrainer(cfg, trust_pickle=args.trust_pickle)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    launch_command(main, get_parser().parse_args())
