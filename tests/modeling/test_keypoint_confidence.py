"""The optional per-keypoint confidence head (MODEL.GROUP_POSE.KEYPOINT_CONFIDENCE): its target
and loss, shapes, that the default model is unchanged without it, loading, drawing and ONNX
export with it."""


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.data import Metadata
from detectron2.structures import Instances
from helpers.tiny_training import build, tiny_cfg, train_step, training_batch

from grouppose.modeling.criterion import build_targets
from grouppose.modeling.keypoint_confidence import (
    KeypointConfidenceHeads,
    keypoint_confidence_loss,
    keypoint_confidence_target,
)
from grouppose.modeling.postprocess import KEYPOINT_SCORE
from grouppose.predictor import load_trained_weights
from grouppose.visualization import draw_poses
from tools.benchmarks import eval_keypoint_confidence

DEC_LAYERS = 2  # test_meta_arch's tiny model


def test_target_is_visible_only():
    visibility = torch.tensor([[0.0, 1.0, 2.0], [2.0, 2.0, 0.0]])
    expected = torch.tensor([[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    assert torch.equal(keypoint_confidence_target(visibility), expected)
    keypoints = torch.cat([torch.rand(2, 3, 2) * 50, visibility[..., None]], dim=-1)
    targets = build_targets(keypoints, torch.tensor([100.0, 200.0]), (60, 80))
    assert torch.equal(targets["confidence"], expected)
    # The keypoint losses still train every labeled keypoint, occluded ones included.
    assert torch.equal(targets["visible"], visibility > 0)


def test_loss_is_bce_averaged_over_keypoints_per_person():
    logits = torch.tensor([[2.0, -1.0, 0.0], [0.5, 0.5, -3.0]])
    target = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    per_keypoint = -(target * F.logsigmoid(logits) + (1 - target) * F.logsigmoid(-logits))
    expected = per_keypoint.mean(dim=1).sum() / 4.0
    torch.testing.assert_close(keypoint_confidence_loss(logits, target, 4.0), expected)


def test_heads_read_the_keypoint_queries():
    B, N, K, C = 2, 5, 3, 8
    heads = KeypointConfidenceHeads(num_layers=DEC_LAYERS, dim=C, keypoint_slice=slice(1, None))
    hidden = [torch.randn(B, N, K + 1, C) for _ in range(DEC_LAYERS)]
    logits = heads(hidden)
    assert [tuple(x.shape) for x in logits] == [(B, N, K)] * DEC_LAYERS
    # The instance query (index 0) does not enter.
    changed = [torch.cat([torch.randn(B, N, 1, C), x[:, :, 1:]], dim=2) for x in hidden]
    for a, b in zip(logits, heads(changed)):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="3 decoder layers' hidden states for 2"):
        heads(hidden + hidden[:1])


def test_switch_off_is_the_paper_model_and_on_adds_only_the_head_last():
    off = build(tiny_cfg())
    assert off.keypoint_confidence is None and not off.criterion.keypoint_confidence
    assert not any(name.startswith("keypoint_confidence") for name in off.state_dict())
    assert not any("kpt_conf" in name for name in off.criterion.weight_dict)
    on = build(tiny_cfg(KEYPOINT_CONFIDENCE=True, KPT_CONF_WEIGHT=0.5))
    on_weights = on.state_dict()
    head = [name for name in on_weights if name.startswith("keypoint_confidence.")]
    assert head == [f"keypoint_confidence.heads.{layer}.layers.{i}.{p}"
                    for layer in range(DEC_LAYERS) for i in range(2) for p in ("weight", "bias")]
    # Built last: every other weight has the same seeded initial value as without the head.
    for name, value in off.state_dict().items():
        assert torch.equal(value, on_weights[name]), name
    assert on.criterion.weight_dict["loss_kpt_conf"] == 0.5
    assert on.criterion.weight_dict["loss_kpt_conf_0"] == 0.5
    assert "loss_kpt_conf_interm" not in on.criterion.weight_dict


def test_training_step_trains_the_head():
    model = build(tiny_cfg(KEYPOINT_CONFIDENCE=True))
    before = {n: p.detach().clone() for n, p in model.keypoint_confidence.named_parameters()}
    losses = train_step(model, training_batch([((64, 96), 3), ((80, 56), 0)]))
    assert {"loss_kpt_conf", "loss_kpt_conf_0"} <= set(losses)
    assert all(torch.isfinite(losses[name]) and losses[name] > 0
               for name in ("loss_kpt_conf", "loss_kpt_conf_0"))
    for name, value in model.keypoint_confidence.named_parameters():
        assert not torch.equal(before[name], value.detach()), name


def test_inference_keypoint_score_is_the_heads_probability():
    model = build(tiny_cfg(KEYPOINT_CONFIDENCE=True)).eval()
    image = training_batch([((64, 96), 0)])[0]["image"]
    with torch.no_grad():
        images = model.preprocess_image([{"image": image}])
        network = model.network(images)
        instances = model([{"image": image}])[0]["instances"]
    probabilities = network.keypoint_confidence[-1][0].sigmoid()  # (N, K)
    order = network.decoder.logits[-1][0].sigmoid().argsort(descending=True)[: len(instances)]
    torch.testing.assert_close(instances.pred_keypoints[..., 2], probabilities[order])
    assert not (instances.pred_keypoints[..., 2] == KEYPOINT_SCORE).any()


def test_config_checks():
    with pytest.raises(ValueError, match="KEYPOINT_CONFIDENCE needs keypoint queries"):
        build(tiny_cfg(KEYPOINT_CONFIDENCE=True, QUERIES="instance_only",
                       GROUP_ATTN="across_only"))
    with pytest.raises(ValueError, match="KPT_CONF_WEIGHT must be a finite number >= 0"):
        build(tiny_cfg(KEYPOINT_CONFIDENCE=True, KPT_CONF_WEIGHT=-1.0))
    with pytest.raises(ValueError, match="KEYPOINT_CONFIDENCE must be True or False"):
        build(tiny_cfg(KEYPOINT_CONFIDENCE="yes"))


def test_loading_with_and_without_the_head(tmp_path):
    without_head = tmp_path / "without_head.pth"
    torch.save({"model": build(tiny_cfg()).state_dict()}, without_head)
    with_head = tmp_path / "with_head.pth"
    trained = build(tiny_cfg(KEYPOINT_CONFIDENCE=True))
    torch.nn.init.constant_(trained.keypoint_confidence.heads[0].layers[1].bias, 3.0)
    torch.save({"model": trained.state_dict()}, with_head)

    load_trained_weights(build(tiny_cfg()), str(without_head))  # the switch off: as before
    model = build(tiny_cfg(KEYPOINT_CONFIDENCE=True))
    load_trained_weights(model, str(with_head))
    assert model.keypoint_confidence.heads[0].layers[1].bias.item() == 3.0
    with pytest.raises(ValueError) as error:
        load_trained_weights(build(tiny_cfg(KEYPOINT_CONFIDENCE=True)), str(without_head))
    message = str(error.value)
    assert "\n" not in message and "has no keypoint confidence head (keypoint_confidence.*, 8 " \
        "weights)" in message and "MODEL.GROUP_POSE.KEYPOINT_CONFIDENCE" in message


def test_drawing_leaves_out_keypoints_unlikely_visible():
    image = np.full((64, 64, 3), 255, dtype=np.uint8)
    metadata = Metadata(keypoint_names=("a", "b"),
                        keypoint_connection_rules=[("a", "b", (0, 0, 0))])

    def drawn(score: float) -> np.ndarray:
        instances = Instances((64, 64))
        instances.pred_keypoints = torch.tensor([[[10.0, 10.0, score], [50.0, 40.0, score]]])
        return draw_poses(image, instances, metadata)

    assert (drawn(KEYPOINT_SCORE) != image).any()  # the constant score: drawn, as before
    assert (drawn(0.9) != image).any()
    assert (drawn(0.2) == image).all()


def test_auroc_of_the_evaluation_tool():
    auroc = eval_keypoint_confidence.auroc
    assert auroc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert auroc([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 0.0
    # A constant score (the paper's model): every pair ties, 0.5.
    assert auroc([KEYPOINT_SCORE] * 5, [True, False, True, False, False]) == 0.5
    # Pairs (positive, negative): (0.4, 0.1) win, (0.4, 0.4) tie, (0.4, 0.7) lose; (0.9, all) win.
    assert auroc([0.4, 0.9, 0.1, 0.4, 0.7], [True, True, False, False, False]) == 4.5 / 6
    assert np.isnan(auroc([0.3, 0.5], [True, True]))
