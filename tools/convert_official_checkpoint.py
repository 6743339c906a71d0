#!/usr/bin/env python
"""Convert an official Group Pose checkpoint into a Detectron2 checkpoint for this project.

    python tools/convert_official_checkpoint.py grouppose_r50_coco.pth model_final.pth \\
        --config-file configs/COCO-Keypoints/grouppose_R50_60e.yaml

With a config (file and/or KEY VALUE opts) the checkpoint is refused unless its architecture
(K, hidden size, layers, feature levels) matches it; without one the architecture read from the
checkpoint is printed. The output loads with ``DetectionCheckpointer(model).load(OUT)``.
"""

import argparse
import sys
from typing import List, Optional

import torch

from grouppose.checkpoint import (
    add_trust_pickle_argument,
    convert_official_checkpoint,
    detectron2_checkpoint,
    load_official_state_dict,
)
from grouppose.config import get_grouppose_cfg
from grouppose.user_errors import exit_on_user_error


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="official checkpoint ({'model': state_dict})")
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
        state_dict = load_official_state_dict(args.input, trust_pickle=args.trust_pickle)
        converted, report = convert_official_checkpoint(state_dict, cfg)
    torch.save(detectron2_checkpoint(converted), args.output)
    print(f"{report.summary()} -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
