#!/usr/bin/env python
"""Export a trained Group Pose model to ONNX: a file that alone turns images into poses.

    python tools/export_onnx.py --config-file configs/COCO-Keypoints/grouppose_R50_60e.yaml \\
        --weights model_final.pth --output grouppose.onnx --dynamic
    python tools/export_onnx.py --config-file ... --output grouppose_800x1216.onnx --size 800x1216

The graph takes (1, 3, H, W) float32 images, 0..255 in the config's INPUT.FORMAT, already
resized, and returns ``scores`` (1, N), best first, and ``keypoints`` (1, N, K, 3) in pixels of
its input. ``--dynamic``: one file for any H, W >= 65; ``--size``: one fixed size. Deformable
attention is exported as standard ONNX operators (GridSample; opsets 17-21), so ONNX Runtime,
OpenVINO and other runtimes run it without a custom-op library. The file's metadata holds what
``grouppose.deploy.OnnxPosePredictor`` needs to run it like ``GroupPosePredictor`` (channel
order, test-time resizing, keypoint names). The weights must be a trained Group Pose checkpoint
(MODEL.WEIGHTS by default).
"""

import argparse
import os
import sys
from typing import List, Optional, Tuple

import grouppose  # noqa: F401  (first: it quiets a warning of Detectron2's imports)

# isort: split
from detectron2.modeling import build_model

from grouppose.checkpoint import add_trust_pickle_argument
from grouppose.deploy.onnx_export import OPSETS, export_onnx
from grouppose.predictor import build_inference_config, load_trained_weights
from grouppose.user_errors import exit_on_user_error


def parse_size(text: str) -> Tuple[int, int]:
    """"HxW" -> (H, W), positive."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(f"--size must be HxW (e.g. 800x1216), got '{text}'")
    return int(parts[0]), int(parts[1])


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2],
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--weights", help="trained checkpoint (default: MODEL.WEIGHTS)")
    parser.add_argument("--output", required=True, metavar="FILE", help="the .onnx file to write")
    sizes = parser.add_mutually_exclusive_group(required=True)
    sizes.add_argument("--size", type=parse_size, metavar="HxW", help="fixed input size")
    sizes.add_argument("--dynamic", action="store_true", help="any input height and width")
    parser.add_argument("--opset", type=int, default=17, choices=list(OPSETS),
                        help="ONNX opset (default: 17)")
    add_trust_pickle_argument(parser)
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER,
                        help="config overrides: KEY VALUE pairs")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    height, width = args.size or (None, None)
    with exit_on_user_error():
        if not args.output.endswith(".onnx"):
            raise ValueError(f"--output '{args.output}' must end with .onnx")
        cfg = build_inference_config(args.config_file, args.weights, "cpu", args.opts)
        model = build_model(cfg)
        load_trained_weights(model, cfg.MODEL.WEIGHTS, args.trust_pickle)
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        path = export_onnx(model.eval(), args.output, height=height, width=width,
                           dynamic=args.dynamic, opset=args.opset, cfg=cfg)
    size = "any HxW" if args.dynamic else f"{height}x{width}"
    print(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB, opset {args.opset}, {size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
