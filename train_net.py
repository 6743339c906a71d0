#!/usr/bin/env python
"""Group Pose training and evaluation with Detectron2.

    python train_net.py --config-file configs/COCO-Keypoints/grouppose_R50_60e.yaml --num-gpus 8
    python train_net.py --config-file CONFIG --resume                       # continue a run
    python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS model_final.pth
    python train_net.py --config-file configs/Synthetic/grouppose_tiny.yaml MODEL.DEVICE cpu
    python train_net.py --config-file CONFIG --dataset my_train=train.json:images/ \
        --dataset my_val=val.json:images/ [--dataset-meta my_poses.yaml] \
        DATASETS.TRAIN "('my_train',)" DATASETS.TEST "('my_val',)"  # any COCO-format json

Without CUDA, ``--num-gpus N`` starts N CPU processes joined with gloo, and a CUDA
``MODEL.DEVICE`` falls back to the CPU with a warning. Weights files are read without running
code from them (``grouppose.checkpoint.SafeCheckpointer``) unless ``--trust-pickle`` is given.
``--dataset`` / ``--dataset-meta``: see ``grouppose.data.command_line``. ``--eval-only`` needs
only DATASETS.TEST: the model's (unused) losses take the OKS sigmas of the evaluated set.
"""

import grouppose  # noqa: F401  (first: it quiets a warning of Detectron2's imports)

# isort: split
from detectron2.config import CfgNode
from detectron2.engine import default_setup

from grouppose.checkpoint import SafeCheckpointer
from grouppose.config import fall_back_to_cpu, get_grouppose_cfg, inference_model_config
from grouppose.data.command_line import register_command_line_datasets
from grouppose.engine import Trainer
from grouppose.engine.launcher import launch_command
from grouppose.engine.launcher import training_argument_parser as get_parser


def setup(args) -> CfgNode:
    """The frozen config of --config-file and the trailing KEY VALUE overrides."""
    cfg = get_grouppose_cfg(args.config_file, args.opts)
    fall_back_to_cpu(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    # In every process (launch may start new ones), before the config names the datasets.
    register_command_line_datasets(args.dataset, args.dataset_meta)
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(inference_model_config(cfg))
        SafeCheckpointer(
            model, save_dir=cfg.OUTPUT_DIR, trust_pickle=args.trust_pickle
        ).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg, trust_pickle=args.trust_pickle)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    launch_command(main, get_parser().parse_args())
