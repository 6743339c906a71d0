"""Deployment without Detectron2 (grouppose.deploy): the ONNX export computes what PyTorch does,
for any input size from one dynamic file, and the ONNX Runtime predictor returns what
GroupPosePredictor returns, without importing torch or Detectron2.

PyTorch is our default fp32 CPU path (compiled deformable attention, fused CPU paths).
"""

import json
import subprocess
import sys
from pathlib import Path
from typing import Tuple

import cv2
import numpy as np
import pytest
import torch
from detectron2.data.transforms import ResizeShortestEdge
from detectron2.modeling import build_model
from helpers.reference import load_reference, reference_cfg
from helpers.tiny_grouppose import BASE_CONFIG

from grouppose.deploy import DeployMetadata, GroupPoseExportModule, OnnxPosePredictor, resized_shape
from grouppose.deploy.metadata import METADATA_KEY
from grouppose.predictor import GroupPosePredictor
from tools import convert_official_checkpoint
from tools import export_onnx as export_onnx_tool

INSTALL_HINT = "needs the deploy extra: pip install --no-build-isolation -e '.[deploy]'"
onnx = pytest.importorskip("onnx", reason=INSTALL_HINT)
pytest.importorskip("onnxruntime", reason=INSTALL_HINT)
pytest.importorskip("onnxscript", reason=INSTALL_HINT)

from grouppose.deploy.onnx_export import export_onnx, ms_deform_attn_onnx  # noqa: E402

# The bounds: ONNX Runtime vs PyTorch fp32.
SCORE_ATOL = 1e-4
PIXEL_ATOL = 0.01
# The reference weights' architecture (ResNet-50, 2 encoder / 2 decoder layers, N = 20) and
# small test sizes, which keep the ResNet-50 quick on a CPU.
REFERENCE_OPTS = [
    "MODEL.GROUP_POSE.ENC_LAYERS", "2",
    "MODEL.GROUP_POSE.DEC_LAYERS", "2",
    "MODEL.GROUP_POSE.NUM_INSTANCES", "20",
    "MODEL.GROUP_POSE.TEST_TOPK", "20",
    "MODEL.DEVICE", "cpu",
    "INPUT.MIN_SIZE_TEST", "224",
    "INPUT.MAX_SIZE_TEST", "320",
    "DATASETS.TEST", "('keypoints_coco_2017_val',)",  # the keypoint names
]


def assert_same_poses(
    scores: np.ndarray, keypoints: np.ndarray, expected_scores: np.ndarray,
    expected_keypoints: np.ndarray,
) -> None:
    """(N,) scores and (N, K, 3) keypoints, best first, against the expected ones: scores
    within SCORE_ATOL in order, and each pose's keypoints within PIXEL_ATOL of the expected
    pose of the same rank, or of one whose score is within SCORE_ATOL of its own (near-equal
    scores may be ordered either way)."""
    assert scores.shape == expected_scores.shape and keypoints.shape == expected_keypoints.shape
    np.testing.assert_allclose(scores, expected_scores, rtol=0, atol=SCORE_ATOL)
    for rank, (score, pose) in enumerate(zip(scores, keypoints)):
        tied = np.flatnonzero(np.abs(expected_scores - score) <= SCORE_ATOL)
        errors = [np.abs(pose - expected_keypoints[i]).max() for i in tied]
        assert min(errors) <= PIXEL_ATOL, f"pose {rank}: keypoints off by {min(errors):.4f} px"


def pytorch_poses(model, image: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
    """(3, H, W) 0..255 image -> PyTorch's (N,) scores and (N, K, 3) keypoints, best first."""
    with torch.no_grad():
        scores, keypoints = GroupPoseExportModule(model, raw_images=True)(image[None])
    return scores[0].numpy(), keypoints[0].numpy()


# ------------------------------------------------------------------------------------------
# The deformable attention's ONNX translation


class _DeformAttn(torch.nn.Module):
    def forward(self, value, spatial_shapes, level_start_index, locations, weights):
        return torch.ops.grouppose.ms_deform_attn(
            value, spatial_shapes, level_start_index, locations, weights
        )


def _deform_attn_inputs(level_shapes, num_queries: int, seed: int):
    """Random inputs of the op: M = 2 heads of D = 4, P = 3 points, locations also outside
    [0, 1] (where the op samples zeros), attention weights far from uniform."""
    generator = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(level_shapes)
    areas = shapes.prod(1)
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    L = len(level_shapes)
    value = torch.randn(1, int(areas.sum()), 2, 4, generator=generator)
    locations = torch.rand(1, num_queries, 2, L, 3, 2, generator=generator) * 1.4 - 0.2
    weights = (torch.randn(1, num_queries, 2, L * 3, generator=generator) * 3).softmax(-1)
    return value, shapes, starts, locations, weights.view(1, num_queries, 2, L, 3)


def test_deformable_attention_translation_matches_the_op(tmp_path):
    """The GridSample translation computes the compiled op's result, for level sizes, value
    lengths and query counts other than the exported example's (all read in the graph)."""
    import onnxruntime

    example = _deform_attn_inputs([(6, 8), (3, 4)], num_queries=5, seed=0)
    sequence = torch.export.Dim.DYNAMIC
    program = torch.onnx.export(
        _DeformAttn().eval(), example, dynamo=True, verbose=False,
        dynamic_shapes=({1: sequence}, None, None, {1: sequence}, {1: sequence}),
        custom_translation_table={torch.ops.grouppose.ms_deform_attn.default: ms_deform_attn_onnx},
    )
    path = tmp_path / "ms_deform_attn.onnx"
    program.save(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert "GridSample" in {node.op_type for node in onnx.load(str(path)).graph.node}
    for level_shapes, num_queries in ([(6, 8), (3, 4)], 5), ([(11, 7), (5, 13)], 17):
        inputs = _deform_attn_inputs(level_shapes, num_queries, seed=num_queries)
        names = [i.name for i in session.get_inputs()]
        (output,) = session.run(None, dict(zip(names, (x.numpy() for x in inputs))))
        expected = torch.ops.grouppose.ms_deform_attn(*inputs)
        np.testing.assert_allclose(output, expected.numpy(), rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------
# The reference fixture's weights, exported by tools/export_onnx.py --dynamic


@pytest.fixture(scope="module")
def reference_export(reference_dir, tmp_path_factory):
    """(config opts, converted weights, .onnx file, PyTorch model): the official reference
    weights converted by tools/convert_official_checkpoint.py, exported by
    tools/export_onnx.py --dynamic."""
    folder = tmp_path_factory.mktemp("reference_onnx")
    weights = folder / "converted.pth"
    architecture = REFERENCE_OPTS[:6]
    assert convert_official_checkpoint.main([
        str(reference_dir / "weights_official.pt"), str(weights),
        "--config-file", str(BASE_CONFIG), *architecture,
    ]) == 0
    path = folder / "reference.onnx"
    assert export_onnx_tool.main([
        "--config-file", str(BASE_CONFIG), "--weights", str(weights), "--output", str(path),
        "--dynamic", "--opts", *REFERENCE_OPTS,
    ]) == 0
    model = build_model(reference_cfg()).eval()
    model.load_state_dict(torch.load(weights)["model"])
    return weights, path, model


def test_onnx_runtime_matches_pytorch_at_both_reference_sizes(reference_dir, reference_export):
    """One dynamic file, the reference images at their own sizes (160x224 and 192x176)."""
    _, path, model = reference_export
    predictor = OnnxPosePredictor(path)
    images = load_reference(reference_dir, "inputs")["raw_rgb_0_255"]
    assert len({tuple(image.shape) for image in images}) == 2
    for image in images:
        scores, keypoints = predictor.run_network(image[None].numpy())
        assert_same_poses(scores[0], keypoints[0], *pytorch_poses(model, image))


def test_exported_graph_is_standard_onnx_with_symbolic_height_and_width(reference_export):
    _, path, _ = reference_export
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)  # with strict shape inference
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert {node.domain for node in model.graph.node} == {""}  # no custom operator
    assert "GridSample" in {node.op_type for node in model.graph.node}
    (images,) = model.graph.input
    dims = images.type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[:2]] == [1, 3]
    assert all(d.dim_param and not d.dim_value for d in dims[2:])
    # N = min(NUM_INSTANCES, S): symbolic too, 20 for any image of the dynamic range.
    keypoints = model.graph.output[1].type.tensor_type.shape.dim
    assert [keypoints[0].dim_value, *(d.dim_value for d in keypoints[2:])] == [1, 17, 3]


def test_file_metadata_is_what_the_predictor_needs(reference_export):
    _, path, _ = reference_export
    metadata = OnnxPosePredictor(path).metadata
    assert metadata.input_format == "RGB"
    assert (metadata.min_size_test, metadata.max_size_test) == (224, 320)
    assert metadata.input_size is None and metadata.test_topk == 20
    assert metadata.num_keypoints == 17 and metadata.keypoint_names[:2] == ("nose", "left_eye")
    assert not metadata.keypoint_confidence  # the paper's model: constant keypoint scores


def reference_image_bgr(reference_dir, index: int = 0) -> np.ndarray:
    image = load_reference(reference_dir, "inputs")["raw_rgb_0_255"][index]
    return np.ascontiguousarray(image.permute(1, 2, 0).numpy()[:, :, ::-1].round().astype(np.uint8))


def test_onnx_predictor_returns_what_grouppose_predictor_returns(reference_dir, reference_export):
    """Same resizing (160x224 -> 224x314), same poses in the image's pixels, same format."""
    weights, path, _ = reference_export
    image = reference_image_bgr(reference_dir)
    expected = GroupPosePredictor(BASE_CONFIG, str(weights), opts=REFERENCE_OPTS)(image)
    poses = OnnxPosePredictor(path, num_threads=2)(image)
    assert type(poses) is type(expected)
    assert poses.keypoints.dtype == poses.scores.dtype == np.float32
    assert len(poses) == len(expected) == 20
    assert_same_poses(poses.scores, poses.keypoints, expected.scores, expected.keypoints)
    assert len(OnnxPosePredictor(path, score_threshold=1.0)(image)) == 0


def test_onnx_runtime_threads_do_not_busy_wait_between_calls(reference_export):
    options = OnnxPosePredictor(reference_export[1], num_threads=2).session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


TORCH_FREE_RUN = """
import importlib.abc, json, sys

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "detectron2"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)

sys.meta_path.insert(0, Blocked())
import numpy as np
import grouppose
from grouppose.deploy import OnnxPosePredictor

poses = OnnxPosePredictor(sys.argv[1], num_threads=1)(np.load(sys.argv[2]))
try:
    grouppose.GroupPose
except ImportError as e:
    error = str(e)
loaded = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "detectron2"})
print(json.dumps({"scores": poses.scores.tolist(), "keypoints": poses.keypoints.tolist(),
                  "error": error, "loaded": loaded}))
"""


def test_onnx_predictor_runs_without_torch_and_detectron2(reference_dir, reference_export,
                                                          tmp_path):
    _, path, _ = reference_export
    image = reference_image_bgr(reference_dir, index=1)
    np.save(tmp_path / "image.npy", image)
    result = subprocess.run(
        [sys.executable, "-c", TORCH_FREE_RUN, str(path), str(tmp_path / "image.npy")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout.splitlines()[-1])
    assert output["loaded"] == []
    assert "needs torch and detectron2" in output["error"]
    expected = OnnxPosePredictor(path, num_threads=1)(image)
    np.testing.assert_array_equal(np.float32(output["scores"]), expected.scores)
    np.testing.assert_array_equal(np.float32(output["keypoints"]), expected.keypoints)


def test_demo_draws_the_onnx_predictors_poses(reference_dir, reference_export, tmp_path, capsys):
    from test_demo import demo

    _, path, _ = reference_export
    image = reference_image_bgr(reference_dir)
    cv2.imwrite(str(tmp_path / "people.png"), image)
    output = tmp_path / "drawn.png"
    assert demo.main([
        "--onnx", str(path), "--confidence-threshold", "0", "--input",
        str(tmp_path / "people.png"), "--output", str(output),
    ]) == 0
    assert "people.png: 20 people in" in capsys.readouterr().out
    assert (cv2.imread(str(output)) != image).any()
    with pytest.raises(SystemExit):
        demo.main(["--onnx", str(path), "--input", "x.png", "--opts", "MODEL.DEVICE", "cpu"])


# ------------------------------------------------------------------------------------------
# Bad input


def test_predictor_names_missing_and_foreign_files(tmp_path):
    with pytest.raises(ValueError, match="ONNX file not found: '.*missing.onnx'"):
        OnnxPosePredictor(tmp_path / "missing.onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    foreign = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph), str(foreign))
    with pytest.raises(ValueError, match="identity.onnx' is not a Group Pose export.*'grouppose'"):
        OnnxPosePredictor(foreign)
    with pytest.raises(ValueError, match="cannot load ONNX model"):
        (tmp_path / "text.onnx").write_text("not onnx")
        OnnxPosePredictor(tmp_path / "text.onnx")


@pytest.mark.parametrize("threshold", [-1, 2, 1.5, "0.5"])
def test_score_threshold_outside_0_1_is_refused(threshold, tmp_path):
    with pytest.raises(ValueError, match=r"score_threshold must be a number in \[0, 1\].*got"):
        OnnxPosePredictor(tmp_path / "model.onnx", score_threshold=threshold)


def test_score_threshold_accepts_ints(reference_export):
    _, path, _ = reference_export
    for threshold in (0, 1):
        predictor = OnnxPosePredictor(path, score_threshold=threshold)
        assert predictor.score_threshold == threshold
        assert isinstance(predictor.score_threshold, float)


def test_bad_metadata_is_named_with_its_file_and_field():
    good = DeployMetadata(num_keypoints=17, test_topk=20, test_score_thresh=0.0).to_json()
    assert DeployMetadata.from_json(good, "m.onnx").num_keypoints == 17
    for change, field in (
        ({"num_keypoints": 0}, "num_keypoints"),
        ({"input_format": "YUV"}, "input_format"),
        ({"input_size": [800]}, "input_size"),
        ({"keypoint_names": ["nose"]}, "keypoint_names"),
    ):
        text = json.dumps({**json.loads(good), **change})
        with pytest.raises(ValueError, match=f"m.onnx: metadata field '{field}'"):
            DeployMetadata.from_json(text, "m.onnx")
    with pytest.raises(ValueError, match=f"m.onnx: unknown metadata field.*'{METADATA_KEY}'"):
        DeployMetadata.from_json(json.dumps({**json.loads(good), "colour": 1}), "m.onnx")
    with pytest.raises(ValueError, match="m.onnx: metadata 'grouppose' is not JSON"):
        DeployMetadata.from_json("{", "m.onnx")


def test_export_with_the_keypoint_confidence_head(tmp_path):
    """The third keypoint value of the ONNX output is the head's probability, as in PyTorch,
    and the file says so; without the head it stays the constant (metadata False)."""
    from helpers.tiny_grouppose import tiny_config

    cfg = tiny_config()
    cfg.MODEL.GROUP_POSE.KEYPOINT_CONFIDENCE = True
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    path = export_onnx(model, tmp_path / "kpt_conf.onnx", dynamic=True, cfg=cfg)
    predictor = OnnxPosePredictor(path)
    assert predictor.metadata.keypoint_confidence
    image = torch.rand((3, 96, 128), generator=torch.Generator().manual_seed(0)) * 255
    scores, keypoints = predictor.run_network(image[None].numpy())
    expected_scores, expected_keypoints = pytorch_poses(model, image)
    assert_same_poses(scores[0], keypoints[0], expected_scores, expected_keypoints)
    assert np.ptp(keypoints[0, :, :, 2]) > 1e-3  # per keypoint, not a constant
    # Compared at PIXEL_ATOL above (the pixels' bound); probabilities are far tighter.
    np.testing.assert_allclose(np.sort(keypoints[0, :, :, 2], axis=None),
                               np.sort(expected_keypoints[:, :, 2], axis=None), atol=SCORE_ATOL)


def test_resizing_is_detectron2s():
    for height, width in ((160, 224), (480, 640), (1000, 333), (333, 1000), (801, 1199)):
        for short, longest in ((224, 320), (800, 1333), (0, 1333)):
            expected = (
                (height, width) if short == 0
                else ResizeShortestEdge.get_output_shape(height, width, short, longest)
            )
            assert resized_shape(height, width, short, longest) == expected


def test_export_refuses_bad_arguments(reference_export, tmp_path):
    *_, model = reference_export
    path = tmp_path / "m.onnx"
    with pytest.raises(ValueError, match="either height and width .* or dynamic=True"):
        export_onnx(model, path, height=64, width=64, dynamic=True)
    with pytest.raises(ValueError, match="either height and width .* or dynamic=True"):
        export_onnx(model, path)
    with pytest.raises(ValueError, match="opset must be in 17..21, got 16"):
        export_onnx(model, path, dynamic=True, opset=16)
    tool = export_onnx_tool
    with pytest.raises(SystemExit):
        tool.get_parser().parse_args(["--config-file", "c", "--output", "m.onnx", "--size", "8"])
    with pytest.raises(SystemExit) as stop:  # a user error: one line, status 2
        tool.main(["--config-file", str(BASE_CONFIG), "--output", "m.txt", "--dynamic"])
    assert stop.value.code == 2
    assert not path.exists()


# ------------------------------------------------------------------------------------------
# A trained tiny model (slow: trains it first)


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory) -> Tuple[Path, object]:
    """(config, weights): the tiny model trained on the tiny training set (150 iterations)."""
    from helpers.training_utils import tiny_training_config

    from grouppose.engine import Trainer

    root = tmp_path_factory.mktemp("trained_tiny")
    cfg = tiny_training_config(root / "data", root / "output", [
        "SOLVER.MAX_ITER", "150", "SOLVER.BASE_LR", "1e-3", "SOLVER.STEPS", "()",
        "TEST.EVAL_PERIOD", "0", "SOLVER.CHECKPOINT_PERIOD", "100000",
    ])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return cfg, root / "output" / "model_final.pth"


def _trained_model(cfg, weights) -> torch.nn.Module:
    model = build_model(cfg).eval()
    model.load_state_dict(torch.load(weights)["model"])
    return model


@pytest.mark.slow
def test_trained_tiny_model_dynamic_export_matches_pytorch(trained_tiny, tmp_path):
    cfg, weights = trained_tiny
    model = _trained_model(cfg, weights)
    path = export_onnx(model, tmp_path / "tiny.onnx", dynamic=True, cfg=cfg)
    predictor = OnnxPosePredictor(path)
    generator = torch.Generator().manual_seed(0)
    for height, width in ((128, 128), (96, 176)):
        image = torch.rand((3, height, width), generator=generator) * 255
        scores, keypoints = predictor.run_network(image[None].numpy())
        assert_same_poses(scores[0], keypoints[0], *pytorch_poses(model, image))


@pytest.mark.slow
def test_fixed_size_export_stretches_every_image_to_its_size(trained_tiny, tmp_path):
    cfg, weights = trained_tiny
    model = _trained_model(cfg, weights)
    path = export_onnx(model, tmp_path / "tiny_96x160.onnx", height=96, width=160, cfg=cfg)
    predictor = OnnxPosePredictor(path)
    assert predictor.metadata.input_size == (96, 160)
    assert predictor.network_input_size(300, 200) == (96, 160)
    image = torch.rand((3, 96, 160), generator=torch.Generator().manual_seed(0)) * 255
    scores, keypoints = predictor.run_network(image[None].numpy())
    assert_same_poses(scores[0], keypoints[0], *pytorch_poses(model, image))
