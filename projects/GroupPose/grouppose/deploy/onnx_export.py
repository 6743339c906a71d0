"""ONNX export of Group Pose inference: 0..255 images -> the N poses, best first.

    model = build_model(cfg); load_trained_weights(model, cfg.MODEL.WEIGHTS)
    export_onnx(model.eval(), "model.onnx", dynamic=True, cfg=cfg)

The graph is ``GroupPoseExportModule(model, raw_images=True)`` (normalisation, network, scores
sorted with their keypoints) captured by ``torch.export`` and translated by PyTorch's ONNX
exporter. Deformable attention, the compiled op ``grouppose::ms_deform_attn`` in the captured
graph, is translated into standard ONNX operators (``ms_deform_attn_onnx``: one GridSample per
level), so the file runs in any ONNX runtime without a custom-op library. With ``dynamic`` the
image height and width are symbolic: the level geometry (level sizes and offsets, position
encodings, reference points, proposals) is computed in the graph from the image size. The
batch size is fixed at export.

Needs torch, onnx and onnxscript (``pip install --no-build-isolation -e '.[deploy]'``) and the
compiled op (``grouppose._C``).
"""

import os
from typing import Optional, Tuple, Union

import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog

from grouppose.deploy.metadata import INPUT_NAME, METADATA_KEY, OUTPUT_NAMES, DeployMetadata
from grouppose.deploy.torch_export import GroupPoseExportModule
from grouppose.layers import plain_inference
from grouppose.layers.ms_deform_attn_op import kernel_unavailable_reason
from grouppose.modeling import GroupPose

__all__ = ["MIN_DYNAMIC_SIZE", "OPSETS", "export_onnx", "ms_deform_attn_onnx"]

DEPLOY_INSTALL_HINT = "install it with `pip install --no-build-isolation -e '.[deploy]'`"
# PyTorch's exporter writes opset 18; other versions are converted from it. LayerNormalization
# needs 17; GridSample (16) is renamed at 20 (mode "bilinear" -> "linear"), which the
# conversion handles.
EXPORT_OPSET = 18
OPSETS = range(17, 22)
# Smallest height / width of a dynamic export: torch.export proves the graph for sizes whose
# coarsest level (stride 64) has at least 2 cells a side.
MIN_DYNAMIC_SIZE = 65
# The size a dynamic graph is traced at (any size in the dynamic range would do).
_DYNAMIC_EXAMPLE_SIZE = (256, 384)


def _require(module: str):
    try:
        return __import__(module)
    except ModuleNotFoundError as e:
        raise ImportError(f"export_onnx needs {module}: {DEPLOY_INSTALL_HINT}") from e


def ms_deform_attn_onnx(value, spatial_shapes, level_start_index, sampling_locations,
                        attention_weights):
    """ONNX translation of ``grouppose::ms_deform_attn`` (see ``ms_deform_attn`` for the
    arguments and result): per level one ``GridSample`` (bilinear, zero padding,
    align_corners=0: the op's sampling of pixel centers at (i + 0.5) / size) of the level's
    values (B*M, D, H_l, W_l) at the level's points (B*M, Lq, P, 2), weighted and summed.

    ``value`` (B, S, M, D), ``sampling_locations`` (B, Lq, M, L, P, 2) and
    ``attention_weights`` (B, Lq, M, L, P) have static M, D, L, P; S, Lq and the level sizes
    (``spatial_shapes`` (L, 2) (H, W), ``level_start_index`` (L,)) are read in the graph, so
    they may be dynamic. Returns (B, Lq, M * D).

    GridSample was measured faster than an equivalent Gather formulation (four corner rows per
    point, weighted by a MatMul) in ONNX Runtime on the CPU (docs/deploy.md).
    """
    from onnxscript import opset18 as op

    def ints(*values):
        return op.Constant(value_ints=list(values))

    _, _, M, D = value.shape
    L = sampling_locations.shape[3]
    # (B, S, M, D) -> (B*M, D, S): each head's values as D channels.
    values = op.Reshape(
        op.Transpose(value, perm=[0, 2, 3, 1]),
        op.Concat(ints(-1, D), op.Shape(value, start=1, end=2), axis=0),
    )
    # [0, 1] -> GridSample's [-1, 1]; (B, Lq, M, L, P, 2) -> (L, B*M, Lq, P, 2).
    grids = op.Sub(op.Mul(sampling_locations, op.Constant(value_float=2.0)),
                   op.Constant(value_float=1.0))
    grids = op.Transpose(grids, perm=[3, 0, 2, 1, 4, 5])
    grids = op.Reshape(grids, op.Concat(ints(L, -1), op.Shape(grids, start=3), axis=0))
    # (B, Lq, M, L, P) -> (L, B*M, 1, Lq, P): broadcast over the D channels.
    weights = op.Transpose(attention_weights, perm=[3, 0, 2, 1, 4])
    weights = op.Reshape(weights, op.Concat(ints(L, -1, 1), op.Shape(weights, start=3), axis=0))
    sizes = op.Reshape(spatial_shapes, ints(-1))  # H_0, W_0, H_1, W_1, ...
    outputs = []
    for level in range(L):
        height = op.Slice(sizes, ints(2 * level), ints(2 * level + 1))
        width = op.Slice(sizes, ints(2 * level + 1), ints(2 * level + 2))
        start = op.Slice(level_start_index, ints(level), ints(level + 1))
        level_values = op.Slice(values, start, op.Add(start, op.Mul(height, width)), ints(2))
        level_values = op.Reshape(level_values, op.Concat(ints(-1, D), height, width, axis=0))
        level_grid = op.Squeeze(op.Slice(grids, ints(level), ints(level + 1), ints(0)), ints(0))
        sampled = op.GridSample(level_values, level_grid, mode="bilinear",
                                padding_mode="zeros", align_corners=0)  # (B*M, D, Lq, P)
        level_weights = op.Squeeze(op.Slice(weights, ints(level), ints(level + 1), ints(0)),
                                   ints(0))
        outputs.append(op.ReduceSum(op.Mul(sampled, level_weights), ints(-1), keepdims=0))
    output = op.Sum(*outputs)  # (B*M, D, Lq)
    output = op.Reshape(output, op.Concat(ints(-1, M * D), op.Shape(output, start=2), axis=0))
    return op.Transpose(output, perm=[0, 2, 1])


def _metadata(model: GroupPose, input_size: Optional[Tuple[int, int]],
              cfg: Optional[CfgNode]) -> DeployMetadata:
    """What the predictor needs besides the graph, from the model and (if given) its config."""
    values = {
        "num_keypoints": model.num_keypoints,
        "test_topk": model.test_topk,
        "test_score_thresh": float(model.test_score_thresh),
        "input_size": input_size,
        "keypoint_confidence": model.keypoint_confidence is not None,
    }
    if cfg is not None:
        dataset = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else ""
        names = MetadataCatalog.get(dataset).get("keypoint_names", ()) if dataset else ()
        values.update(
            input_format=cfg.INPUT.FORMAT,
            min_size_test=cfg.INPUT.MIN_SIZE_TEST,
            max_size_test=cfg.INPUT.MAX_SIZE_TEST,
            keypoint_names=tuple(names) if len(names) == model.num_keypoints else (),
            dataset=dataset,
        )
    return DeployMetadata(**values)._checked("export_onnx")


def _convert_opset(model_proto, opset: int):
    """The exporter's opset-18 model converted to ``opset``."""
    onnx = _require("onnx")
    if opset < EXPORT_OPSET:
        # ONNX's 18 -> 17 adapter moves the axes input of ReduceMin/Max/Mean/Prod/... into an
        # attribute but keeps noop_with_empty_axes, which those operators only have from 18
        # on: drop it where it has its default (0), which then changes nothing.
        for node in model_proto.graph.node:
            if node.op_type.startswith("Reduce") and node.op_type != "ReduceSum":
                kept = [a for a in node.attribute
                        if not (a.name == "noop_with_empty_axes" and a.i == 0)]
                del node.attribute[:]
                node.attribute.extend(kept)
    return onnx.version_converter.convert_version(model_proto, opset)


def export_onnx(
    model: GroupPose,
    path: Union[str, os.PathLike],
    *,
    height: Optional[int] = None,
    width: Optional[int] = None,
    dynamic: bool = False,
    opset: int = 17,
    cfg: Optional[CfgNode] = None,
    batch_size: int = 1,
) -> str:
    """Export Group Pose inference to an ONNX file that runs without torch and Detectron2.

    Args:
        model: a built GroupPose, on the CPU (put in eval mode).
        path: the .onnx file to write (weights included).
        height, width: the fixed input size; leave them None with ``dynamic``.
        dynamic: any input height and width >= MIN_DYNAMIC_SIZE from one file.
        opset: ONNX opset, in OPSETS.
        cfg: the model's config: stores the input format, test-time resizing and keypoint names
            in the file's metadata, which ``OnnxPosePredictor`` needs (``run_network`` does
            not).
        batch_size: images per call (fixed).

    Graph: input ``images`` (batch_size, 3, H, W) float32, 0..255 in the model's INPUT.FORMAT,
    unpadded; outputs ``scores`` (batch_size, N) in [0, 1], best first, and ``keypoints``
    (batch_size, N, K, 3): x, y in pixels of ``images`` (Detectron2's continuous frame) and the
    keypoint score (constant, or the confidence head's probability; the metadata's
    ``keypoint_confidence`` says which), as ``GroupPoseExportModule``.

    The written model passes ``onnx.checker`` with full shape inference.

    Returns:
        ``path`` as a string.
    """
    if dynamic == (height is not None or width is not None):
        raise ValueError(
            "export_onnx: give either height and width (a fixed size) or dynamic=True, "
            f"got height={height}, width={width}, dynamic={dynamic}"
        )
    if not dynamic and (height is None or width is None or height <= 0 or width <= 0):
        raise ValueError(f"export_onnx: height and width must be positive, got {height}, {width}")
    if opset not in OPSETS:
        raise ValueError(
            f"export_onnx: opset must be in {OPSETS.start}..{OPSETS.stop - 1}, got {opset} "
            "(LayerNormalization needs 17)"
        )
    if batch_size <= 0:
        raise ValueError(f"export_onnx: batch_size must be positive, got {batch_size}")
    if model.device.type != "cpu":
        raise ValueError(f"export_onnx: the model must be on the CPU, got {model.device}")
    reason = kernel_unavailable_reason(model.device)
    if reason is not None:
        raise RuntimeError(f"export_onnx needs the compiled deformable attention: {reason}")
    onnx = _require("onnx")
    _require("onnxscript")

    dynamic_shapes = None
    if dynamic:
        height, width = _DYNAMIC_EXAMPLE_SIZE
        dims = [torch.export.Dim(name, min=MIN_DYNAMIC_SIZE) for name in ("height", "width")]
        dynamic_shapes = {"images": {2: dims[0], 3: dims[1]}}
    example = torch.zeros((batch_size, 3, height, width))
    # plain_inference: the standard ops (no channels-last input, oneDNN linears or folded
    # BatchNorm), whose shapes torch.export generalises; ONNX Runtime fuses its own.
    with torch.no_grad(), plain_inference():
        program = torch.onnx.export(
            GroupPoseExportModule(model, raw_images=True), (example,), dynamo=True,
            opset_version=EXPORT_OPSET, dynamic_shapes=dynamic_shapes,
            input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
            custom_translation_table={
                torch.ops.grouppose.ms_deform_attn.default: ms_deform_attn_onnx
            },
            optimize=True, verbose=False,
        )
    model_proto = program.model_proto
    if opset != EXPORT_OPSET:
        model_proto = _convert_opset(model_proto, opset)
    metadata = _metadata(model, None if dynamic else (height, width), cfg)
    entry = model_proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata.to_json()
    onnx.checker.check_model(model_proto, full_check=True)
    path = os.fspath(path)
    onnx.save(model_proto, path)
    return path
