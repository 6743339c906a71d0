"""Inference for users: Detectron2's DefaultPredictor with Group Pose (official weights through
the converter) and the Python API (grouppose.predict / GroupPosePredictor), incl. image reading."""

import math
from unittest import mock

import cv2
import numpy as np
import pytest
import torch
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from helpers.tiny_grouppose import BASE_CONFIG, NUM_INSTANCES, save_tiny_model

import grouppose
from grouppose.config import get_grouppose_cfg
from grouppose.image_io import as_bgr_uint8, read_image
from grouppose.predictor import GroupPosePredictor, PosePrediction, build_inference_config
from tools import convert_official_checkpoint

# The reference weights: ResNet-50, 2 encoder / 2 decoder layers, N = 20 (see its README).
OFFICIAL_NUM_INSTANCES = 20
NUM_KEYPOINTS = 17
KEYPOINT_SCORE = 1 / (1 + math.exp(-1))


@pytest.fixture(scope="module")
def official_predictor(reference_dir, tmp_path_factory):
    """DefaultPredictor on the official reference weights converted by
    tools/convert_official_checkpoint.py (small test sizes keep the ResNet-50 fast on a CPU);
    also returns the converted state dict."""
    architecture = [
        "MODEL.GROUP_POSE.ENC_LAYERS", "2",
        "MODEL.GROUP_POSE.DEC_LAYERS", "2",
        "MODEL.GROUP_POSE.NUM_INSTANCES", str(OFFICIAL_NUM_INSTANCES),
    ]
    weights = tmp_path_factory.mktemp("official") / "grouppose_official_converted.pth"
    converter = convert_official_checkpoint
    assert converter.main([
        str(reference_dir / "weights_official.pt"), str(weights),
        "--config-file", str(BASE_CONFIG), *architecture,
    ]) == 0

    cfg = get_grouppose_cfg(str(BASE_CONFIG))
    cfg.merge_from_list([
        *architecture,
        "MODEL.DEVICE", "cpu",
        "MODEL.WEIGHTS", str(weights),
        "INPUT.MIN_SIZE_TEST", "224",
        "INPUT.MAX_SIZE_TEST", "320",
    ])
    return DefaultPredictor(cfg), torch.load(weights)["model"]


@pytest.fixture(scope="module")
def reference_image_bgr(reference_dir) -> np.ndarray:
    """The official fixtures' first image (160 x 224), as the BGR uint8 array users pass."""
    rgb = torch.load(reference_dir / "inputs.pt")["raw_rgb_0_255"][0]
    return np.ascontiguousarray(rgb.permute(1, 2, 0).numpy()[:, :, ::-1].astype(np.uint8))


def random_bgr(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_default_predictor_loads_every_converted_official_weight(official_predictor):
    predictor, converted = official_predictor
    state = predictor.model.state_dict()
    assert set(state) == set(converted)
    for name, tensor in converted.items():
        assert torch.equal(state[name], tensor), name


@pytest.mark.parametrize("size", [None, (97, 61), (250, 130)])
def test_default_predictor_output_format(official_predictor, reference_image_bgr, size):
    """Detectron2's output for any BGR image: Instances at the image's own size, the N poses
    best first, keypoints (x, y, score) inside the image."""
    predictor, _ = official_predictor
    image = reference_image_bgr if size is None else random_bgr(*size)
    height, width = image.shape[:2]

    output = predictor(image)

    assert set(output) == {"instances"}
    instances = output["instances"]
    assert instances.image_size == (height, width)
    assert len(instances) == OFFICIAL_NUM_INSTANCES
    keypoints, scores = instances.pred_keypoints, instances.scores
    assert keypoints.shape == (OFFICIAL_NUM_INSTANCES, NUM_KEYPOINTS, 3)
    assert keypoints.dtype == scores.dtype == torch.float32
    assert ((scores >= 0) & (scores <= 1)).all()
    assert (scores[:-1] >= scores[1:]).all()
    assert ((keypoints[..., 0] >= 0) & (keypoints[..., 0] <= width)).all()
    assert ((keypoints[..., 1] >= 0) & (keypoints[..., 1] <= height)).all()
    keypoint_scores = keypoints[..., 2]
    torch.testing.assert_close(keypoint_scores, torch.full_like(keypoint_scores, KEYPOINT_SCORE))
    assert instances.pred_boxes.tensor.shape == (OFFICIAL_NUM_INSTANCES, 4)


def test_default_predictor_converts_bgr_to_the_models_rgb(official_predictor,
                                                          reference_image_bgr):
    """DefaultPredictor's BGR input, resized and reordered to the model's INPUT.FORMAT (RGB),
    gives exactly what the model gives on the RGB image, rescaled to the original size."""
    predictor, _ = official_predictor
    height, width = reference_image_bgr.shape[:2]
    rgb = reference_image_bgr[:, :, ::-1]
    resized = predictor.aug.get_transform(rgb).apply_image(rgb)
    assert resized.shape[:2] != (height, width)  # the resize is exercised
    image = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
    with torch.no_grad():
        expected = predictor.model([{"image": image, "height": height, "width": width}])[0]

    instances = predictor(reference_image_bgr)["instances"]
    swapped = predictor(np.ascontiguousarray(rgb))["instances"]

    torch.testing.assert_close(instances.scores, expected["instances"].scores)
    torch.testing.assert_close(instances.pred_keypoints, expected["instances"].pred_keypoints)
    assert not torch.allclose(instances.scores, swapped.scores)


@pytest.fixture(scope="module")
def tiny_config_file(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tiny_predictor(tiny_config_file):
    return GroupPosePredictor(tiny_config_file)


def test_predict_from_file_in_two_lines(tiny_config_file, tiny_predictor, tmp_path):
    image = random_bgr(70, 90)
    image_file = tmp_path / "people.png"
    cv2.imwrite(str(image_file), image)

    poses = grouppose.predict(image_file, tiny_config_file)

    assert isinstance(poses, PosePrediction)
    assert len(poses) == NUM_INSTANCES
    assert poses.keypoints.shape == (NUM_INSTANCES, NUM_KEYPOINTS, 3)
    assert poses.scores.shape == (NUM_INSTANCES,)
    assert isinstance(poses.keypoints, np.ndarray) and poses.keypoints.dtype == np.float32
    assert isinstance(poses.scores, np.ndarray) and poses.scores.dtype == np.float32
    instances = tiny_predictor.instances(image)
    np.testing.assert_allclose(poses.keypoints, instances.pred_keypoints.numpy(), atol=1e-5)
    np.testing.assert_allclose(poses.scores, instances.scores.numpy(), atol=1e-6)


def test_predictor_converts_gray_rgba_and_16_bit_arrays(tiny_predictor):
    bgr = random_bgr(64, 80)
    gray = bgr[:, :, 1]
    alpha = np.random.default_rng(1).integers(0, 256, (64, 80, 1), dtype=np.uint8)
    variants = {
        "gray": (gray, np.repeat(gray[:, :, None], 3, axis=2)),
        "gray (H, W, 1)": (gray[:, :, None], np.repeat(gray[:, :, None], 3, axis=2)),
        "BGRA": (np.concatenate([bgr, alpha], axis=2), bgr),
        "16-bit": (bgr.astype(np.uint16) * 257, bgr),
    }
    for name, (image, equivalent) in variants.items():
        poses, expected = tiny_predictor(image), tiny_predictor(equivalent)
        np.testing.assert_allclose(poses.keypoints, expected.keypoints, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(poses.scores, expected.scores, atol=1e-6, err_msg=name)


def test_score_threshold_keeps_only_poses_above_it(tiny_config_file, tiny_predictor):
    image = random_bgr(64, 64)
    scores = tiny_predictor(image).scores
    threshold = float(np.median(scores))

    poses = GroupPosePredictor(tiny_config_file, score_threshold=threshold)(image)

    assert 0 < len(poses) < len(scores)
    assert (poses.scores > threshold).all()
    np.testing.assert_allclose(poses.scores, scores[scores > threshold], atol=1e-6)


def test_as_bgr_uint8_conversions():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(as_bgr_uint8(gray), np.stack([gray] * 3, axis=2))
    bgra = np.zeros((3, 4, 4), np.uint8)
    bgra[..., 3] = 255
    np.testing.assert_array_equal(as_bgr_uint8(bgra), np.zeros((3, 4, 3), np.uint8))
    deep = np.array([[[0, 257, 65535]]], np.uint16)
    np.testing.assert_array_equal(as_bgr_uint8(deep), [[[0, 1, 255]]])
    floats = np.array([[[-3.0, 127.6, 300.0]]], np.float32)
    np.testing.assert_array_equal(as_bgr_uint8(floats), [[[0, 128, 255]]])
    image = np.zeros((2, 2, 3), np.uint8)
    assert as_bgr_uint8(image) is image


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (np.zeros((0, 4, 3), np.uint8), "shape"),
        (np.zeros((4, 4, 3), np.int32), "dtype int32"),
        ([[0, 1]], "numpy array"),
    ],
)
def test_as_bgr_uint8_rejects_bad_arrays_by_name(bad, message):
    with pytest.raises(ValueError, match=message) as error:
        as_bgr_uint8(bad, name="frame.png")
    assert "frame.png" in str(error.value)


def test_read_image_converts_gray_rgba_and_16_bit_files(tmp_path):
    bgr = random_bgr(6, 5)
    files = {
        "gray.png": (bgr[:, :, 0], np.repeat(bgr[:, :, :1], 3, axis=2)),
        "rgba.png": (np.concatenate([bgr, np.zeros_like(bgr[:, :, :1])], axis=2), bgr),
        "deep.png": (bgr.astype(np.uint16) * 257, bgr),
        "deep_gray.tif": (bgr[:, :, 0].astype(np.uint16) * 257, np.repeat(bgr[:, :, :1], 3, 2)),
    }
    for name, (stored, expected) in files.items():
        cv2.imwrite(str(tmp_path / name), stored)
        image = read_image(tmp_path / name)
        assert image.dtype == np.uint8, name
        np.testing.assert_array_equal(image, expected, err_msg=name)


def test_read_image_errors_name_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="corrupt.jpg"):
        read_image(corrupt)
    with pytest.raises(ValueError, match="not found: .*missing.png"):
        read_image(tmp_path / "missing.png")


def test_build_inference_config(tiny_config_file, tmp_path):
    cfg = build_inference_config(
        tiny_config_file, weights="other.pth", opts=["MODEL.DEVICE", "cpu"]
    )
    assert cfg.MODEL.WEIGHTS == "other.pth"
    assert cfg.MODEL.DEVICE == "cpu"
    assert cfg.is_frozen()
    copy = build_inference_config(cfg, device="meta")
    assert copy.MODEL.DEVICE == "meta" and cfg.MODEL.DEVICE == "cpu"
    with pytest.raises(ValueError, match="config file not found: .*nothing.yaml"):
        build_inference_config(tmp_path / "nothing.yaml")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback without CUDA")
def test_build_inference_config_falls_back_to_cpu_without_cuda(tiny_config_file):
    cfg = build_inference_config(tiny_config_file, opts=["MODEL.DEVICE", "cuda"])
    assert cfg.MODEL.DEVICE == "cpu"


@pytest.mark.parametrize("threshold", [0, 1, np.float32(0.5)])
def test_score_threshold_accepts_ints_and_numpy_numbers(tiny_config_file, threshold):
    predictor = GroupPosePredictor(tiny_config_file, score_threshold=threshold)
    threshold_in_config = predictor.cfg.MODEL.GROUP_POSE.TEST_SCORE_THRESH
    assert threshold_in_config == float(threshold)


@pytest.mark.parametrize("threshold", [-1, 2, 1.5, "0.5", True])
def test_score_threshold_outside_0_1_is_refused(tiny_config_file, threshold):
    with pytest.raises(ValueError, match=r"score_threshold must be a number in \[0, 1\].*got"):
        GroupPosePredictor(tiny_config_file, score_threshold=threshold)


def test_checkpoint_with_another_k_states_both(tiny_config_file, tmp_path):
    """A checkpoint of a model with K = 5 keypoints, loaded with the K = 17 config."""
    cfg = get_grouppose_cfg(str(tiny_config_file))
    cfg.merge_from_list(["MODEL.GROUP_POSE.NUM_KEYPOINTS", 5,
                         "MODEL.GROUP_POSE.OKS_SIGMAS", [0.05] * 5])
    weights = tmp_path / "k5.pth"
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    with pytest.raises(ValueError) as error:
        GroupPosePredictor(tiny_config_file, str(weights))
    assert str(error.value).startswith(
        f"checkpoint {weights} has K=5 keypoints, the config MODEL.GROUP_POSE.NUM_KEYPOINTS=17"
    )


def test_cpu_predictor_keeps_freed_memory_for_the_next_forward(tiny_config_file):
    with mock.patch("grouppose.predictor.reuse_freed_memory") as reuse:
        GroupPosePredictor(tiny_config_file, device="cpu")
    reuse.assert_called_once_with()
