#!/usr/bin/env python
"""Convert ImageNet Swin Transformer weights into a Detectron2 checkpoint of our Swin backbone.

    python tools/convert_imagenet_swin.py swin_tiny_patch4_window7_224.pth \\
        pretrained/swin_tiny_patch4_window7_224_d2.pth \\
        --config-file configs/COCO-Keypoints/grouppose_SwinT_60e.yaml

The input is a classification checkpoint of the Swin Transformer repository
(``{"model": state_dict}``, reference parameter names). The output holds ``backbone.*`` only;
use it as MODEL.WEIGHTS of a Swin config (the transformer starts from its initialisation, the
classification head and final norm are dropped). With a config, weights whose MODEL.SWIN
architecture disagrees with it are refused.
"""

import argparse
import sys
from typing import List, Optional

import torch

from grouppose.checkpoint import (
    add_trust_pickle_argument,
    convert_imagenet_swin,
    detectron2_checkpoint,
    read_weights_file,
)
from grouppose.config import get_grouppose_cfg
from grouppose.user_errors import exit_on_user_error

_AUTHOR = "ImageNet Swin Transformer weights, converted"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="ImageNet Swin checkpoint ({'model': state_dict})")
    parser.add_argument("output", help="Detectron2 checkpoint to write")
    parser.add_argument("--config-file", default="", help="target config; refuse on mismatch")
    add_trust_pickle_argument(parser)
    parser.add_argument("opts", nargs="*", help="config overrides: KEY VALUE ...")
    return parser.parse_intermixed_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    with exit_on_user_error():
        cfg = get_grouppose_cfg(args.config_file, args.opts) if args.config_file or args.opts \
            else None
        checkpoint = read_weights_file(args.input, args.trust_pickle)
        state_dict = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
        if not isinstance(state_dict, dict):
            raise ValueError(f"{args.input}: expected a dict checkpoint")
        converted, dropped = convert_imagenet_swin(state_dict, cfg)
    output = detectron2_checkpoint(converted)
    output["__author__"] = _AUTHOR
    torch.save(output, args.output)
    summary = ", ".join(f"{len(keys)} {reason}" for reason, keys in dropped.items())
    print(f"converted ImageNet Swin weights: {len(converted)} keys mapped, dropped "
          f"{sum(map(len, dropped.values()))} ({summary or 'none'}) -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
