"""Group Pose inference with ONNX Runtime, from an exported file alone (no torch, no Detectron2).

    from grouppose.deploy import OnnxPosePredictor
    predictor = OnnxPosePredictor("model.onnx", num_threads=2)
    poses = predictor(cv2.imread("people.jpg"))  # or predictor("people.jpg")
    poses.keypoints  # (n, K, 3) x, y, score in pixels of the image, best first

Needs numpy, Pillow and onnxruntime (``pip install --no-build-isolation -e '.[deploy]'``, or
just ``pip install onnxruntime``). The predictor does what ``GroupPosePredictor`` does around
the network, from the file's metadata (``DeployMetadata``): BGR -> the model's channel order,
Detectron2's test-time ``ResizeShortestEdge`` with PIL's bilinear filter (as Detectron2
resizes), then the ``TEST_TOPK`` best poses scoring above ``TEST_SCORE_THRESH``, in pixels of
the original image. A file exported for one fixed size
(``--size``) gets every image resized to that size instead (aspect ratio not kept).
"""

import os
from typing import Optional, Tuple, Union

import numpy as np
from PIL import Image

from grouppose.deploy.metadata import (
    INPUT_NAME,
    METADATA_KEY,
    OUTPUT_NAMES,
    DeployMetadata,
    PosePrediction,
    check_score_threshold,
    resized_shape,
)
from grouppose.image_io import ImageLike, to_bgr_uint8

__all__ = ["OnnxPosePredictor"]

# provider argument -> ONNX Runtime execution providers, in order of preference.
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}
DEPLOY_INSTALL_HINT = (
    "install it with `pip install --no-build-isolation -e '.[deploy]'` (or `pip install "
    "onnxruntime`)"
)
# Detectron2's continuous pixel frame: the exported keypoints are network coordinates + 0.5.
_PIXEL_CENTER_OFFSET = 0.5


def _import_onnxruntime():
    try:
        import onnxruntime
    except ModuleNotFoundError as e:
        raise ImportError(f"OnnxPosePredictor needs onnxruntime: {DEPLOY_INSTALL_HINT}") from e
    return onnxruntime


class OnnxPosePredictor:
    """Finds the poses in one image per call with an exported Group Pose ONNX file.

    Args:
        path: file written by ``tools/export_onnx.py`` / ``grouppose.deploy.export_onnx``.
        num_threads: ONNX Runtime intra-op threads (None: its default, one per physical core).
        provider: "cpu", "cuda", or the name of any ONNX Runtime execution provider.
        score_threshold: overrides the file's ``TEST_SCORE_THRESH`` when given (in [0, 1]).

    Raises:
        ValueError naming the file when it is missing, not ONNX, or not a Group Pose export
        (no ``grouppose`` metadata), or for a ``score_threshold`` outside [0, 1]; ImportError
        with the install hint without onnxruntime.
    """

    def __init__(
        self,
        path: Union[str, os.PathLike],
        num_threads: Optional[int] = None,
        provider: str = "cpu",
        score_threshold: Optional[float] = None,
    ):
        if score_threshold is not None:
            score_threshold = check_score_threshold(score_threshold)
        ort = _import_onnxruntime()
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise ValueError(f"ONNX file not found: '{self.path}'")
        providers = PROVIDERS.get(provider, [provider])
        available = ort.get_available_providers()
        if providers[0] not in available:
            raise ValueError(
                f"provider '{provider}' ({providers[0]}) is not available in this onnxruntime "
                f"(available: {available})"
            )
        options = ort.SessionOptions()
        if num_threads is not None:
            if num_threads <= 0:
                raise ValueError(f"num_threads must be positive, got {num_threads}")
            options.intra_op_num_threads = num_threads
        # One operator at a time, each on the intra-op threads: the graph is a chain.
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # ONNX Runtime's threads otherwise busy-wait after each call, holding the cores the
        # rest of the application (decoding the next frame, drawing) needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(self.path, options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise ValueError(f"cannot load ONNX model '{self.path}': {e}") from e
        self.metadata = self._read_metadata()
        self.score_threshold = (
            self.metadata.test_score_thresh if score_threshold is None else score_threshold
        )

    def _read_metadata(self) -> DeployMetadata:
        props = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in props:
            raise ValueError(
                f"'{self.path}' is not a Group Pose export: its metadata has no "
                f"'{METADATA_KEY}' entry (export with tools/export_onnx.py)"
            )
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [INPUT_NAME] or tuple(outputs) != OUTPUT_NAMES:
            raise ValueError(
                f"'{self.path}': expected input {[INPUT_NAME]} and outputs {list(OUTPUT_NAMES)}, "
                f"got {inputs} and {outputs}"
            )
        return DeployMetadata.from_json(props[METADATA_KEY], self.path)

    def network_input_size(self, height: int, width: int) -> Tuple[int, int]:
        """(height, width) an image of that size is resized to before the network."""
        metadata = self.metadata
        if metadata.input_size is not None:
            return metadata.input_size
        if metadata.min_size_test is None or metadata.max_size_test is None:
            raise ValueError(
                f"'{self.path}' was exported without its config: its metadata has no test "
                "sizes (min_size_test / max_size_test), so only run_network can be used; "
                "export it with tools/export_onnx.py"
            )
        return resized_shape(height, width, metadata.min_size_test, metadata.max_size_test)

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 BGR -> the network input (1, 3, h, w) float32, 0..255, resized and
        in the model's channel order (as Detectron2's DefaultPredictor prepares it)."""
        if self.metadata.input_format is None:
            raise ValueError(
                f"'{self.path}' was exported without its config: its metadata has no "
                "input_format; export it with tools/export_onnx.py"
            )
        if self.metadata.input_format == "RGB":
            image = image[:, :, ::-1]
        height, width = self.network_input_size(*image.shape[:2])
        if (height, width) != image.shape[:2]:
            resized = Image.fromarray(np.ascontiguousarray(image)).resize(
                (width, height), Image.BILINEAR
            )
            image = np.asarray(resized)
        return image.astype(np.float32).transpose(2, 0, 1)[None]

    def run_network(self, images: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """The raw ONNX session: exactly what the exported graph computes, nothing around it.

        Args:
            images: (B, 3, H, W) float32, 0..255 in the model's channel order, already at the
                network's input size (see ``preprocess``). B is the batch size the file was
                exported with (1 by default).

        Returns:
            scores (B, N) float32 in [0, 1], best first, and keypoints (B, N, K, 3) float32:
            x, y in pixels of ``images`` (Detectron2's continuous frame) and the keypoint score
            (see ``DeployMetadata.keypoint_confidence``).
        """
        scores, keypoints = self.session.run(
            list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(images, dtype=np.float32)}
        )
        return scores, keypoints

    def __call__(self, image: ImageLike) -> PosePrediction:
        """
        Args:
            image: a file, or an array (H, W, 3) BGR as ``GroupPosePredictor`` takes (gray,
                BGRA and 16-bit arrays are converted, see ``image_io.as_bgr_uint8``).

        Returns:
            ``PosePrediction`` as ``GroupPosePredictor`` returns it: keypoints (n, K, 3) and
            scores (n,), float32, best first, in pixels of ``image``.
        """
        image = to_bgr_uint8(image)
        images = self.preprocess(image)
        scores, keypoints = self.run_network(images)
        topk = self.metadata.test_topk
        scores, keypoints = scores[0, :topk], keypoints[0, :topk]
        keep = scores > self.score_threshold
        scores, keypoints = scores[keep], keypoints[keep]
        # Network-input pixels -> pixels of the image, through the network's [0, 1] frame
        # (in float64: the PyTorch model scales its [0, 1] output to the image directly).
        (height, width), (input_height, input_width) = image.shape[:2], images.shape[2:]
        scale = np.array([width / input_width, height / input_height])
        xy = (keypoints[..., :2].astype(np.float64) - _PIXEL_CENTER_OFFSET) * scale
        keypoints = np.concatenate(
            [(xy + _PIXEL_CENTER_OFFSET).astype(np.float32), keypoints[..., 2:]], axis=-1
        )
        return PosePrediction(keypoints=keypoints, scores=scores.astype(np.float32))
