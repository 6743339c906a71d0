"""Group Pose demo: draw the poses found in images, a folder, a video or a webcam stream.

``demo.py`` at the repository root runs this module's ``main`` (as does
``python -m grouppose.demo``):

    python demo.py --config-file configs/COCO-Keypoints/grouppose_R50_60e.yaml \
        --input photos/ "more/*.jpg" --output vis/ --opts MODEL.WEIGHTS model.pth
    python demo.py --config-file ... --video-input clip.mp4 --output clip_poses.mp4 --opts ...
    python demo.py --onnx grouppose.onnx --input photos/ --output vis/   # ONNX Runtime
    python demo.py --config-file ... --dataset my_val=val.json:images/ --input photos/ \
        --output vis/ --opts MODEL.WEIGHTS model.pth DATASETS.TEST "('my_val',)" ...
    python demo.py ... --video-input clip.mp4 --output out.mp4 --track --output-json poses.json


Without --output the results are shown in a window (needs OpenCV with GUI support). MODEL.WEIGHTS
must be a trained Group Pose checkpoint (convert an official one with
tools/convert_official_checkpoint.py); it is read without running code from it unless
--trust-pickle is given. With --onnx a file written by tools/export_onnx.py runs in ONNX Runtime
instead (grouppose.deploy.OnnxPosePredictor; --opts and --trust-pickle do not apply). Poses are
drawn with the keypoint names and skeleton of DATASETS.TEST[0], which --dataset can register from
a COCO-format json (see grouppose.data.command_line).
"""

import argparse
import contextlib
import glob
import os
import sys
from typing import Iterable, List, Optional, Sequence, Union

import cv2
from detectron2.utils.logger import setup_logger
from tqdm import tqdm

from grouppose.checkpoint import add_trust_pickle_argument
from grouppose.data.command_line import add_dataset_arguments, register_command_line_datasets
from grouppose.deploy import OnnxPosePredictor
from grouppose.image_io import IMAGE_EXTENSIONS, read_image
from grouppose.no_overwrite import check_not_overwriting
from grouppose.predictor import GroupPosePredictor
from grouppose.user_errors import exit_on_user_error
from grouppose.visualization import VisualizationDemo

WINDOW_NAME = "Group Pose"
_ESC_KEY = 27
# Used when a video does not report its frame rate.
_DEFAULT_FPS = 30.0
_GLOB_CHARACTERS = "*?["
# The video writer encodes MPEG-4 part 2 ("mp4v"), which goes in an .mp4 file.
VIDEO_EXTENSIONS = (".mp4",)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Group Pose demo (Detectron2)")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--config-file", metavar="FILE", help="path to config")
    model.add_argument("--onnx", metavar="FILE",
                       help="run this ONNX export (tools/export_onnx.py) with ONNX Runtime")
    parser.add_argument("--webcam", action="store_true", help="take input from the webcam")
    parser.add_argument("--video-input", help="path to a video file")
    parser.add_argument(
        "--input", nargs="+", help="image files, globs (quote them) or folders of images"
    )
    parser.add_argument(
        "--output",
        help="where to save the drawings: a folder (an existing one, or a name ending with '/' "
        "or without an extension, created), or, for a single image, a file ending with an image "
        f"extension ({', '.join(IMAGE_EXTENSIONS)}) and, for a video, a file ending with "
        f"{', '.join(VIDEO_EXTENSIONS)}; checked before inference, and refused when it would "
        "overwrite an input. If not given, the drawings are shown in a window",
    )
    parser.add_argument(
        "--confidence-threshold", type=float, default=0.5, help="minimum score of a drawn pose"
    )
    add_tracking_arguments(parser)
    add_trust_pickle_argument(parser)
    add_dataset_arguments(parser)
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs"
    )
    return parser


def add_tracking_arguments(parser: argparse.ArgumentParser) -> None:
    """--track, --smooth and --output-json (videos and webcam; see docs/tracking.md)."""
    parser.add_argument("--track", action="store_true",
                        help="track people across frames: each id in its own colour with its "
                        "number (needs the 'track' extra: norfair)")
    parser.add_argument("--smooth", action="store_true",
                        help="with --track: smooth each track's keypoints (One-Euro filter)")
    parser.add_argument("--output-json", metavar="FILE",
                        help="with --track: write each frame's poses with their track id, score "
                        "and keypoints to this .json file (PoseTrack-like)")


def check_tracking_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse tracking options that do not apply."""
    if (args.smooth or args.output_json) and not args.track:
        parser.error("--smooth and --output-json need --track")
    if args.track and args.input:
        parser.error("--track applies to --video-input and --webcam, not to --input")
    if args.output_json and not args.output_json.lower().endswith(".json"):
        parser.error(f"--output-json '{args.output_json}' must end with .json")


def expand_inputs(patterns: Iterable[str]) -> List[str]:
    """Image files named by ``--input``: files as given, globs expanded, folders listed (their
    images, sorted). A glob or folder that matches no image is an error naming it."""
    paths: List[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            matches = sorted(
                os.path.join(pattern, name)
                for name in os.listdir(pattern)
                if name.lower().endswith(IMAGE_EXTENSIONS)
            )
        elif any(character in pattern for character in _GLOB_CHARACTERS):
            matches = sorted(p for p in glob.glob(os.path.expanduser(pattern)) if os.path.isfile(p))
        else:
            matches = [pattern]
        if not matches:
            raise ValueError(f"--input '{pattern}' matches no image file")
        paths.extend(matches)
    return paths


def output_is_folder(output: str) -> bool:
    """Whether ``--output`` names a folder: an existing one, or a name ending with a separator
    or without an extension (created when needed)."""
    return os.path.isdir(output) or output.endswith(os.sep) or not os.path.splitext(output)[1]


def check_output_file(output: str, extensions: Sequence[str], what: str) -> None:
    """Refuse, before any inference, an ``--output`` file OpenCV cannot write ``what`` (e.g.
    "an image") to."""
    if os.path.splitext(output)[1].lower() not in extensions:
        raise ValueError(
            f"--output '{output}': {what} file must end with {', '.join(extensions)} "
            "(or give a folder)"
        )


def image_output_path(output: str, input_path: str, num_inputs: int) -> str:
    """Where to save the drawing of ``input_path``: inside ``output`` when it is a folder (see
    ``output_is_folder``, or any name when there are several inputs), else ``output``."""
    if num_inputs > 1 or output_is_folder(output):
        return os.path.join(output, os.path.basename(input_path))
    return output


class DisplayUnavailableError(RuntimeError):
    """OpenCV cannot open a window (e.g. opencv-python-headless, or no display)."""


def show(image) -> bool:
    """Show a BGR image in the demo window; False once the user pressed Esc."""
    try:
        cv2.namedWindow(WINDOW_NAME, cv2.WINDOW_NORMAL)
        cv2.imshow(WINDOW_NAME, image)
    except cv2.error as e:
        raise DisplayUnavailableError(
            f"cannot open a window to show the results ({e.msg.strip()}); pass --output to "
            "save them instead"
        ) from e
    return cv2.waitKey(1) != _ESC_KEY


def close_window() -> None:
    """Close the demo window if one was opened."""
    # Raises when no window was opened (or OpenCV has no GUI): then there is nothing to close.
    with contextlib.suppress(cv2.error):
        cv2.destroyWindow(WINDOW_NAME)


def run_on_images(demo: VisualizationDemo, paths: List[str], output: Optional[str]) -> int:
    """Process images, printing people count and latency per image; returns the exit status
    (1 when some image could not be read: each is reported by name and skipped)."""
    unreadable = []
    for path in tqdm(paths, disable=len(paths) == 1, unit="image"):
        try:
            image = read_image(path)
        except ValueError as e:
            tqdm.write(f"error: {e}", file=sys.stderr)
            unreadable.append(path)
            continue
        result = demo.run_on_image(image)
        tqdm.write(
            f"{path}: {len(result.instances)} people in {result.latency * 1000:.0f} ms"
        )
        if output:
            write_image(image_output_path(output, path, len(paths)), result.visualization)
        elif not show(result.visualization):
            break
    if unreadable:
        print(f"error: {len(unreadable)} input(s) could not be read: {unreadable}",
              file=sys.stderr)
        return 1
    return 0


def make_parent_folder(path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def write_image(path: str, image) -> None:
    make_parent_folder(path)
    if not cv2.imwrite(path, image):
        raise ValueError(f"cannot write image '{path}' (is its folder writable?)")


def open_video(source) -> cv2.VideoCapture:
    """Open a video file (or a camera index); ValueError naming it when that fails."""
    if isinstance(source, str) and not os.path.isfile(source):
        raise ValueError(f"video file not found: '{source}'")
    video = cv2.VideoCapture(source)
    if not video.isOpened():
        raise ValueError(f"cannot open video '{source}' (corrupt, unsupported or no camera)")
    return video


def video_output_path(output: str, input_path: str) -> str:
    """``output`` itself, or ``<output>/<input name>.mp4`` when ``output`` is a folder (see
    ``output_is_folder``)."""
    if output_is_folder(output):
        name = os.path.splitext(os.path.basename(input_path))[0] + VIDEO_EXTENSIONS[0]
        return os.path.join(output, name)
    return output


def build_tracking(args: argparse.Namespace, demo: VisualizationDemo, fps: float, source):
    """The per-frame tracking of --track (None without it)."""
    if not args.track:
        return None
    from grouppose.tracking.video import VideoTracking  # needs the optional norfair

    name = "webcam" if source == 0 else os.path.splitext(os.path.basename(str(source)))[0]
    return VideoTracking(demo.metadata, fps, smooth=args.smooth, json_path=args.output_json,
                         video_name=name)


def run_on_video(demo: VisualizationDemo, source, output: Optional[str],
                 args: Optional[argparse.Namespace] = None) -> int:
    """Process a video file (or camera index) frame by frame; writes an mp4 or shows it.
    With ``args.track``, people are tracked (and ``args.output_json`` written)."""
    video = open_video(source)
    num_frames = int(video.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    fps = video.get(cv2.CAP_PROP_FPS) or _DEFAULT_FPS
    tracking = build_tracking(args, demo, fps, source) if args is not None else None
    writer = None
    people: List[int] = []
    latencies: List[float] = []
    try:
        progress = tqdm(demo.run_on_video(video, tracking), total=num_frames, unit="frame")
        for result in progress:
            people.append(len(result.instances))
            latencies.append(result.latency)
            progress.set_postfix(people=people[-1], latency=f"{latencies[-1] * 1000:.0f}ms")
            if output:
                if writer is None:
                    path = video_output_path(output, str(source))
                    make_parent_folder(path)
                    writer = open_video_writer(path, fps, result.visualization.shape)
                writer.write(result.visualization)
            elif not show(result.visualization):
                break
    finally:
        video.release()
        if writer is not None:
            writer.release()
        if tracking is not None:
            tracking.close()
    if not latencies:
        raise ValueError(f"video '{source}' has no readable frame")
    print(f"{source}: {len(latencies)} frames, {sum(people) / len(people):.1f} people per "
          f"frame, {sum(latencies) / len(latencies) * 1000:.0f} ms per frame")
    return 0


def open_video_writer(path: str, fps: float, frame_shape) -> cv2.VideoWriter:
    """An mp4 (MPEG-4 part 2) writer for (H, W, 3) BGR frames."""
    height, width = frame_shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise ValueError(
            f"cannot write video '{path}': OpenCV could not open an MPEG-4 (mp4v) writer there "
            "(is its folder writable? does this OpenCV build have video encoders?)"
        )
    return writer


def check_output(
    output: Optional[str], patterns: Sequence[str], paths: List[str], video: Optional[str]
) -> None:
    """Refuse, before the model is built, an ``--output`` file that cannot hold the results,
    and an ``--output`` that is an input or would be written over one (``patterns``: the
    ``--input`` arguments, ``paths``: the image files they name)."""
    if not output:
        return
    if not output_is_folder(output):
        if video:
            check_output_file(output, VIDEO_EXTENSIONS, "a video")
        elif len(paths) == 1:
            check_output_file(output, IMAGE_EXTENSIONS, "an image")
    if video:
        inputs, destinations = [video], [video_output_path(output, video)]
    else:
        inputs = [*patterns, *paths]
        destinations = [image_output_path(output, path, len(paths)) for path in paths]
    check_not_overwriting(output, inputs, destinations)


def build_predictor(args: argparse.Namespace) -> Union[GroupPosePredictor, OnnxPosePredictor]:
    """The PyTorch predictor of --config-file, or the ONNX Runtime predictor of --onnx."""
    if args.onnx:
        return OnnxPosePredictor(args.onnx, score_threshold=args.confidence_threshold)
    return GroupPosePredictor(
        args.config_file, score_threshold=args.confidence_threshold, opts=args.opts,
        trust_pickle=args.trust_pickle,
    )


def main(argv: Optional[List[str]] = None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    sources = [bool(args.input), bool(args.video_input), args.webcam]
    if sum(sources) != 1:
        parser.error("give exactly one of --input, --video-input and --webcam")
    if args.webcam and args.output:
        parser.error("--output is not supported with --webcam")
    if args.onnx and (args.opts or args.trust_pickle):
        parser.error("--opts and --trust-pickle apply to --config-file, not to --onnx")
    check_tracking_arguments(parser, args)
    logger = setup_logger(name="grouppose.demo")
    logger.info(f"Arguments: {args}")

    try:  # with no --output, the window closes in any case
        with exit_on_user_error(DisplayUnavailableError):
            paths = expand_inputs(args.input) if args.input else []
            check_output(args.output, args.input or [], paths, args.video_input)
            register_command_line_datasets(args.dataset, args.dataset_meta)
            demo = VisualizationDemo(build_predictor(args))
            if args.input:
                return run_on_images(demo, paths, args.output)
            return run_on_video(demo, 0 if args.webcam else args.video_input, args.output,
                                args)
    finally:
        if not args.output:
            close_window()


if __name__ == "__main__":
    sys.exit(main())
