"""python -m grouppose.app: serve the browser demo (see grouppose.app).

    python -m grouppose.app --config-file configs/COCO-Keypoints/grouppose_R50_60e.yaml \
        --weights model.pth [--host 127.0.0.1] [--port 7860]
    python -m grouppose.app --onnx grouppose.onnx
"""

import argparse
import sys
from typing import List, Optional, Union

from grouppose.app.poses import MAX_PIXELS, PoseApp
from grouppose.checkpoint import add_trust_pickle_argument
from grouppose.data.command_line import add_dataset_arguments, register_command_line_datasets
from grouppose.deploy import OnnxPosePredictor
from grouppose.predictor import GroupPosePredictor

DEFAULT_HOST = "127.0.0.1"  # this machine only: --host 0.0.0.0 serves the network
DEFAULT_PORT = 7860


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m grouppose.app", description="Group Pose browser demo (Gradio)"
    )
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--config-file", metavar="FILE", help="path to config")
    model.add_argument("--onnx", metavar="FILE",
                       help="run this ONNX export (tools/export_onnx.py) with ONNX Runtime")
    parser.add_argument("--weights", metavar="FILE",
                        help="trained checkpoint (default: the config's MODEL.WEIGHTS)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on")
    parser.add_argument("--confidence-threshold", type=float, default=0.5,
                        help="the score threshold slider's initial value")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                        help="largest image accepted, width x height (larger ones get a message)")
    add_trust_pickle_argument(parser)
    add_dataset_arguments(parser)
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs"
    )
    return parser


def build_predictor(args: argparse.Namespace) -> Union[GroupPosePredictor, OnnxPosePredictor]:
    """The predictor of --config-file / --onnx, keeping every pose: the slider filters."""
    if args.onnx:
        return OnnxPosePredictor(args.onnx, score_threshold=0.0)
    return GroupPosePredictor(args.config_file, args.weights, score_threshold=0.0,
                              opts=args.opts, trust_pickle=args.trust_pickle)


def main(argv: Optional[List[str]] = None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.onnx and (args.opts or args.trust_pickle or args.weights):
        parser.error("--weights, --opts and --trust-pickle apply to --config-file, not to --onnx")
    if args.max_pixels <= 0:
        parser.error(f"--max-pixels must be positive, got {args.max_pixels}")
    if not 0.0 <= args.confidence_threshold <= 1.0:
        parser.error(f"--confidence-threshold must be in [0, 1], got {args.confidence_threshold}")
    try:  # before the model is built: a missing extra is told at once
        from grouppose.app.page import build_page, launch
    except ModuleNotFoundError as e:
        print(f"error: the browser demo needs Gradio ({e}): pip install --no-build-isolation "
              "-e \".[app]\"", file=sys.stderr)
        return 1
    try:
        register_command_line_datasets(args.dataset, args.dataset_meta)
        app = PoseApp(build_predictor(args), max_pixels=args.max_pixels)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    launch(build_page(app, args.confidence_threshold), args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
