"""GroupPose meta-architecture: config, training on awkward batches, inference output format.

Uses a tiny model (tests/helpers/tiny_grouppose.py: ResNet-18, hidden size 64, 1 encoder layer) with
few instances, for speed.
"""

import hashlib
import itertools

import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import ImageList
from detectron2.utils.visualizer import Visualizer
from helpers.tiny_grouppose import BASE_CONFIG
from helpers.tiny_training import (
    DEC_LAYERS,
    NUM_INSTANCES,
    build,
    image,
    tiny_cfg,
    train_step,
    training_batch,
)

import grouppose
from grouppose.config import get_grouppose_cfg
from grouppose.modeling.decoder import GroupPoseDecoder
from grouppose.modeling.detection_decoder import HumanDetectionDecoder
from grouppose.modeling.encoder import DeformableEncoder
from grouppose.modeling.meta_arch import padding_mask
from grouppose.modeling.oks import COCO_OKS_SIGMAS, CROWDPOSE_OKS_SIGMAS
from grouppose.modeling.postprocess import KEYPOINT_SCORE, PIXEL_CENTER_OFFSET
from grouppose.modeling.variants import PAPER_VARIANT


def expected_loss_names(aux_layers: int):
    suffixes = ["", *(f"_{i}" for i in range(aux_layers)), "_interm"]
    return {
        base + suffix
        for base, suffix in itertools.product(("loss_cls", "loss_keypoints", "loss_oks"), suffixes)
    }


def test_import_registers_and_config_defaults():
    from detectron2.modeling import META_ARCH_REGISTRY

    assert META_ARCH_REGISTRY.get("GroupPose") is grouppose.GroupPose
    cfg = get_grouppose_cfg(str(BASE_CONFIG))
    gp = cfg.MODEL.GROUP_POSE
    assert (gp.NUM_INSTANCES, gp.NUM_KEYPOINTS, gp.HIDDEN_DIM, gp.NHEADS) == (100, 17, 256, 8)
    assert (gp.ENC_LAYERS, gp.DEC_LAYERS, gp.NUM_FEATURE_LEVELS, gp.TEST_TOPK) == (6, 6, 4, 50)
    assert (gp.CLS_WEIGHT, gp.KPT_L1_WEIGHT, gp.OKS_WEIGHT) == (2.0, 10.0, 4.0)
    assert (gp.COST_CLASS, gp.COST_KPT_L1, gp.COST_OKS, gp.FOCAL_ALPHA) == (2.0, 10.0, 4.0, 0.25)
    assert gp.IN_FEATURES == ["res3", "res4", "res5"] and gp.POS_TEMPERATURE == 20
    assert cfg.MODEL.META_ARCHITECTURE == "GroupPose" and cfg.INPUT.FORMAT == "RGB"
    assert not cfg.MODEL.RESNETS.STRIDE_IN_1X1 and cfg.MODEL.RESNETS.NORM == "FrozenBN"
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 2


LAYER_ARGS = {"num_layers": 2, "dim": 32, "num_heads": 4, "ffn_dim": 64, "dropout": 0.0,
              "num_levels": 2, "num_points": 2}
# The first 16 hex digits of the sha256 of each part's state dict (names and float32 bytes, in
# order), built with LAYER_ARGS after torch.manual_seed(0): the initialisation each part had
# before they shared grouppose.modeling.blocks.init_transformer_layers. Change a digest only for an
# intended change of initialisation: training from scratch starts from these values.
INIT_DIGESTS = {
    "encoder": ("3194c3800ed2058c", lambda: DeformableEncoder(**LAYER_ARGS)),
    "decoder": (
        "0d074f26110628b9",
        lambda: GroupPoseDecoder(**LAYER_ARGS, num_keypoints=3, variant=PAPER_VARIANT),
    ),
    "detection_decoder": (
        "ec27afdcafaf06f4", lambda: HumanDetectionDecoder(**LAYER_ARGS, num_keypoints=3)
    ),
}


@pytest.mark.parametrize("part", sorted(INIT_DIGESTS))
def test_seeded_initialisation_is_unchanged(part):
    expected, build_part = INIT_DIGESTS[part]
    torch.manual_seed(0)
    digest = hashlib.sha256()
    for name, value in build_part().state_dict().items():
        digest.update(name.encode())
        digest.update(value.numpy().tobytes())
    assert digest.hexdigest()[:16] == expected


def test_training_two_sizes_with_an_image_without_people():
    cfg = tiny_cfg()
    model = build(cfg)
    batch = training_batch([((64, 96), 3), ((80, 56), 0)])
    losses = train_step(model, batch)
    assert set(losses) == expected_loss_names(DEC_LAYERS - 1)
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), name
        assert value.requires_grad, name
    # Frozen stem and res2 (FREEZE_AT = 2) get no gradient.
    assert all(p.grad is None for n, p in model.named_parameters()
               if n.startswith(("backbone.stem", "backbone.res2")))


def test_padding_mask_and_loss_weights():
    cfg = tiny_cfg(INTERM_LOSS_WEIGHT=0.5, CLS_WEIGHT=3.0)
    model = build(cfg)
    images = model.preprocess_image(training_batch([((64, 96), 1), ((80, 56), 1)]))
    assert tuple(images.tensor.shape) == (2, 3, 80, 96)  # no size divisibility
    mask = padding_mask(images)
    assert not mask[0, :64, :].any() and mask[0, 64:, :].all()
    assert not mask[1, :, :56].any() and mask[1, :, 56:].all()
    assert (images.tensor[0, :, 64:] == 0).all() and (images.tensor[1, :, :, 56:] == 0).all()
    weights = model.criterion.weight_dict
    assert weights["loss_cls"] == weights["loss_cls_0"] == 3.0
    assert weights["loss_cls_interm"] == 1.5 and weights["loss_oks_interm"] == 2.0


def test_training_without_aux_loss():
    model = build(tiny_cfg(AUX_LOSS=False))
    model.train()
    losses = model(training_batch([((64, 64), 2)]))
    assert set(losses) == expected_loss_names(0)


def test_crowdpose_k14_trains_a_step():
    model = build(tiny_cfg(num_keypoints=14))
    assert torch.allclose(model.criterion.sigmas, torch.tensor(CROWDPOSE_OKS_SIGMAS))
    losses = train_step(model, training_batch([((64, 80), 2), ((72, 64), 1)], 14))
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        (result,) = model([{"image": image(64, 80, 0)}])
    assert result["instances"].pred_keypoints.shape[1:] == (14, 3)


def test_custom_k5_sigmas_from_metadata():
    sigmas = [0.3, 0.4, 0.5, 0.6, 0.7]
    name = "grouppose_test_k5_train"
    MetadataCatalog.get(name).set(kpt_oks_sigmas=sigmas)
    try:
        cfg = tiny_cfg(num_keypoints=5)
        cfg.DATASETS.TRAIN = (name,)
        model = build(cfg)
        assert torch.allclose(model.criterion.sigmas, torch.tensor(sigmas))
        assert torch.allclose(model.criterion.matcher.sigmas, torch.tensor(sigmas))
        losses = train_step(model, training_batch([((64, 64), 2)], 5))
        assert all(torch.isfinite(v) for v in losses.values())
        # The config key wins over the metadata.
        cfg.MODEL.GROUP_POSE.OKS_SIGMAS = [1.0] * 5
        assert torch.allclose(build(cfg).criterion.sigmas, torch.ones(5))
    finally:
        MetadataCatalog.remove(name)


def test_sigmas_errors():
    cfg = tiny_cfg(num_keypoints=5)
    with pytest.raises(ValueError, match="OKS_SIGMAS"):
        build(cfg)  # K = 5: no standard sigmas and none given
    cfg.MODEL.GROUP_POSE.OKS_SIGMAS = [0.5] * 4
    with pytest.raises(ValueError, match="4 values"):
        build(cfg)
    assert torch.allclose(build(tiny_cfg()).criterion.sigmas, torch.tensor(COCO_OKS_SIGMAS))


def test_inference_without_confident_person_returns_empty_instances():
    model = build(tiny_cfg(TEST_SCORE_THRESH=0.5))
    with torch.no_grad():
        model.decoder.class_heads[-1].bias.fill_(-10.0)  # every score ~ 5e-5
    model.eval()
    with torch.no_grad():
        (result,) = model([{"image": image(64, 96, 0), "height": 128, "width": 192}])
    instances = result["instances"]
    assert len(instances) == 0 and instances.image_size == (128, 192)
    assert instances.pred_keypoints.shape == (0, 17, 3)
    assert instances.pred_boxes.tensor.shape == (0, 4) and instances.scores.shape == (0,)
    assert instances_to_coco_json(instances, 1) == []


def test_inference_output_format_and_rescaling():
    model = build(tiny_cfg())
    model.eval()
    inputs = [
        {"image": image(64, 96, 0), "height": 128, "width": 192},
        {"image": image(80, 56, 1)},  # output size defaults to the input size
    ]
    with torch.no_grad():
        results = model(inputs)
        network = model.network(model.preprocess_image(inputs))
    for index, (result, size) in enumerate(zip(results, [(128, 192), (80, 56)])):
        instances = result["instances"]
        height, width = size
        assert instances.image_size == size and len(instances) == 4  # TEST_TOPK
        keypoints = instances.pred_keypoints
        assert keypoints.shape == (4, 17, 3) and keypoints.dtype == torch.float32
        assert (keypoints[..., 2] == KEYPOINT_SCORE).all()
        assert (instances.scores[:-1] >= instances.scores[1:]).all()
        assert instances.pred_classes.dtype == torch.int64 and (instances.pred_classes == 0).all()
        # The best poses of the last decoder layer, scaled from [0, 1] to the output size, in
        # Detectron2's continuous pixel frame.
        scores, order = network.decoder.logits[-1][index].sigmoid().topk(4)
        assert torch.allclose(instances.scores, scores)
        expected = network.decoder.keypoints[-1][index][order] * torch.tensor([width, height])
        expected += PIXEL_CENTER_OFFSET
        assert torch.allclose(keypoints[..., :2], expected)
        boxes = instances.pred_boxes.tensor
        assert torch.allclose(boxes[:, :2], keypoints[..., :2].amin(1))
        assert torch.allclose(boxes[:, 2:], keypoints[..., :2].amax(1))
        coco = instances_to_coco_json(instances, index)
        assert len(coco) == 4 and len(coco[0]["keypoints"]) == 17 * 3
        assert coco[0]["category_id"] == 0
    metadata = MetadataCatalog.get("grouppose_test_visualizer")
    metadata.thing_classes = ["person"]
    try:
        canvas = torch.zeros(128, 192, 3, dtype=torch.uint8).numpy()
        drawn = Visualizer(canvas, metadata).draw_instance_predictions(results[0]["instances"])
        assert drawn.get_image().shape == (128, 192, 3)
    finally:
        MetadataCatalog.remove("grouppose_test_visualizer")


@pytest.mark.parametrize("size", [(8, 8), (33, 17), (150, 20)])
def test_inference_on_any_image_size(size):
    model = build(tiny_cfg())
    model.eval()
    with torch.no_grad():
        (result,) = model([{"image": image(*size, 0)}])
        network = model.network(model.preprocess_image([{"image": image(*size, 0)}]))
    positions = network.memory.shape[1]
    instances = result["instances"]
    assert len(instances) == min(4, NUM_INSTANCES, positions)
    assert torch.isfinite(instances.pred_keypoints).all()


def test_network_output_shapes():
    model = build(tiny_cfg())
    model.eval()
    with torch.no_grad():
        network = model.network(
            ImageList.from_tensors([torch.zeros(3, 64, 96), torch.zeros(3, 80, 56)])
        )
    predictions = network.predictions()
    assert predictions["pred_logits"].shape == (2, NUM_INSTANCES)
    assert predictions["pred_keypoints"].shape == (2, NUM_INSTANCES, 17, 2)
    assert len(predictions["aux_outputs"]) == DEC_LAYERS - 1
    assert predictions["interm_outputs"]["pred_keypoints"].shape == (2, NUM_INSTANCES, 17, 2)
    assert [level.shape[-2:] for level in network.levels] == [
        (10, 12), (5, 6), (3, 3), (2, 2)
    ]
    assert network.decoder.hidden[0].shape == (2, NUM_INSTANCES, 18, 64)
    assert len(network.decoder.reference_points) == DEC_LAYERS + 1


@pytest.mark.cuda
def test_cuda_training_step_and_inference():
    cfg = tiny_cfg()
    cfg.MODEL.DEVICE = "cuda"
    model = build(cfg)
    losses = train_step(model, training_batch([((64, 96), 3), ((80, 56), 0)]))
    assert all(torch.isfinite(v) and v.device.type == "cuda" for v in losses.values())
    model.eval()
    with torch.no_grad():
        (result,) = model([{"image": image(64, 96, 0), "height": 128, "width": 192}])
    assert result["instances"].pred_keypoints.device.type == "cuda"
    assert len(result["instances"]) == 4


@pytest.mark.cuda
def test_cuda_matches_cpu():
    """The same weights and batch give the same losses, gradients and predictions on CUDA as
    on CPU (float32, TF32 off: the compiled CUDA and CPU deformable-attention kernels, the
    matcher and the post-processing agree)."""
    cfg = tiny_cfg()
    cpu_model = build(cfg)
    # At initialisation every encoder sampling point sits exactly on a pixel center (cell-center
    # references plus whole-pixel offset biases), where bilinear interpolation has no gradient
    # with respect to the location: CPU and CUDA may round to different one-sided derivatives.
    # Move the points off the pixel grid so that gradients are defined.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in cpu_model.named_parameters():
            if name.endswith("sampling_offsets.bias"):
                parameter.add_(torch.rand(parameter.shape, generator=generator) * 0.5 + 0.25)
    cfg.MODEL.DEVICE = "cuda"
    cuda_model = build(cfg)
    cuda_model.load_state_dict(cpu_model.state_dict())
    batch = training_batch([((64, 96), 3), ((80, 56), 1)])
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        losses = {}
        gradients = {}
        for name, model in (("cpu", cpu_model), ("cuda", cuda_model)):
            model.train()
            model.zero_grad()
            losses[name] = model(batch)
            sum(losses[name].values()).backward()
            gradients[name] = {n: p.grad for n, p in model.named_parameters()
                               if p.grad is not None}
        for key, value in losses["cpu"].items():
            torch.testing.assert_close(losses["cuda"][key].cpu(), value, rtol=1e-4, atol=1e-5)
        assert gradients["cpu"].keys() == gradients["cuda"].keys()
        mismatches = []
        for key, value in gradients["cpu"].items():
            scale = max(value.abs().max().item(), 1e-6)
            error = (gradients["cuda"][key].cpu() - value).abs().max().item()
            if error > 1e-3 * scale:
                mismatches.append((key, error, scale))
        assert not mismatches, mismatches
        inputs = [{"image": image(64, 96, 0), "height": 128, "width": 192}]
        with torch.no_grad():
            results = {name: model.eval()(inputs)[0]["instances"].to("cpu")
                       for name, model in (("cpu", cpu_model), ("cuda", cuda_model))}
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.testing.assert_close(results["cuda"].scores, results["cpu"].scores,
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(results["cuda"].pred_keypoints, results["cpu"].pred_keypoints,
                               rtol=1e-4, atol=1e-3)
