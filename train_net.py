#!/usr/bin/env python
"""Group Pose training and evaluation with Detectron2.

    python train_net.py --config-file configs/COCO-Keypoints/grouppose_R50_60e.yaml --num-gpus 8
    python train_net.py --config-file CONFIG --resume                       # continue a run
    python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS model_final.pth
    python train_net.py --config-file configs/Synthetic/grouppose_tiny.yaml MODEL.DEVICE cpu

Without CUDA, ``--num-gpus N`` starts N CPU processes joined with gloo.
"""

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser, default_setup

from grouppose.config import get_grouppose_cfg
from grouppose.engine import Trainer, launch


def setup(args) -> CfgNode:
    """The frozen config of --config-file and the trailing KEY VALUE overrides."""
    cfg = get_grouppose_cfg(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
        dist_url=args.dist_url, args=(args,),
    )
