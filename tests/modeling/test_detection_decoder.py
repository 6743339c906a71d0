"""Human detection decoder variant (paper Table 5): box targets, proposals, the initialisation of
the Group Pose decoder, its losses, and that a tiny model trains with it."""

import pytest
import torch
from detectron2.structures import Boxes
from helpers.reference import reference_cfg
from helpers.tiny_training import build, image, tiny_cfg, training_batch
from torchvision.ops import box_convert

from grouppose.checkpoint import convert_official_checkpoint
from grouppose.modeling.detection_criterion import DetectionCriterion, person_boxes
from grouppose.modeling.detection_decoder import (
    HumanDetectionDecoder,
    build_detection_branch,
    proposal_boxes,
)
from grouppose.modeling.query_selection import encoder_proposals

DETECTION_LAYERS = 2


def detection_cfg(**group_pose):
    return tiny_cfg(DETECTION_DECODER_LAYERS=DETECTION_LAYERS, **group_pose)


def test_target_boxes_from_annotations_or_keypoint_extent():
    keypoints = torch.tensor([
        [[10.0, 20.0, 2], [30.0, 5.0, 1], [90.0, 90.0, 0]],  # unlabeled point ignored
        [[0.0, 0.0, 0], [0.0, 0.0, 0], [0.0, 0.0, 0]],  # no labeled point: empty box
    ])
    boxes = person_boxes(keypoints, (100, 50))
    expected_xyxy = torch.tensor([[10 / 50, 5 / 100, 30 / 50, 20 / 100], [0.0, 0, 0, 0]])
    assert torch.allclose(boxes, box_convert(expected_xyxy, "xyxy", "cxcywh"))
    # An annotated box wins, and is clipped to the image.
    annotated = torch.tensor([[5.0, 2.0, 60.0, 40.0], [1.0, 1.0, 11.0, 21.0]])
    boxes = person_boxes(keypoints, (100, 50), annotated)
    expected_xyxy = torch.tensor([[0.1, 0.02, 1.0, 0.4], [0.02, 0.01, 0.22, 0.21]])
    assert torch.allclose(boxes, box_convert(expected_xyxy, "xyxy", "cxcywh"))
    assert person_boxes(torch.zeros(0, 3, 3), (10, 10)).shape == (0, 4)


def test_proposal_boxes_are_the_encoder_proposals():
    level_shapes = [(6, 8), (3, 4), (2, 2)]
    padding_mask = torch.zeros(2, 48 + 12 + 4, dtype=torch.bool)
    padding_mask[1, 40:48] = True  # last row of level 0 is padding in image 1
    indices = torch.tensor([[0, 47, 48, 63], [9, 50, 59, 60]])
    boxes = proposal_boxes(indices, padding_mask, level_shapes)
    center_logit, _ = encoder_proposals(padding_mask, level_shapes)
    centers = center_logit.gather(1, indices[..., None].expand(-1, -1, 2)).sigmoid()
    assert torch.allclose(boxes[..., :2], centers)
    sizes = torch.tensor([[0.05, 0.05, 0.1, 0.2], [0.05, 0.1, 0.1, 0.2]])
    assert torch.allclose(boxes[..., 2], sizes) and torch.allclose(boxes[..., 3], sizes)
    # Image 1's level 0 has 5 valid rows: cell (1, 1) is at ((1 + 0.5) / 8, (1 + 0.5) / 5).
    assert torch.allclose(boxes[1, 0, :2], torch.tensor([1.5 / 8, 1.5 / 5]))


def test_detection_criterion_matching_and_losses():
    criterion = DetectionCriterion(
        num_layers=1, cost_class=2.0, cost_box_l1=5.0, cost_giou=2.0, focal_alpha=0.25,
        cls_weight=2.0, box_l1_weight=5.0, giou_weight=2.0,
    )
    target = torch.tensor([[0.3, 0.3, 0.2, 0.4], [0.7, 0.6, 0.3, 0.3]])
    boxes = torch.tensor([[[0.71, 0.6, 0.3, 0.3], [0.5, 0.5, 0.1, 0.1], [0.3, 0.32, 0.2, 0.4]]])
    logits = torch.zeros(1, 3)
    targets = [{"boxes": target, "keypoints": torch.zeros(2, 3, 2)}]
    (queries, people), = criterion.match(logits, boxes, targets)
    assert queries.tolist() == [0, 2] and people.tolist() == [1, 0]
    losses = criterion([logits], [boxes], targets)
    assert set(losses) == {"loss_det_cls_0", "loss_det_bbox_0", "loss_det_giou_0"}
    assert torch.isclose(losses["loss_det_bbox_0"], torch.tensor(0.03 / 2))
    assert 0 < losses["loss_det_giou_0"] < 0.1
    assert criterion.weight_dict == {"loss_det_cls_0": 2.0, "loss_det_bbox_0": 5.0,
                                     "loss_det_giou_0": 2.0}
    # An image without people: only the classification loss, all queries negative.
    empty = criterion([logits], [boxes], [{"boxes": torch.zeros(0, 4),
                                            "keypoints": torch.zeros(0, 3, 2)}])
    assert empty["loss_det_bbox_0"] == 0 and empty["loss_det_cls_0"] > 0


def test_detection_branch_from_config():
    assert build_detection_branch(tiny_cfg()) == (None, None)  # the paper's model
    cfg = tiny_cfg(DETECTION_DECODER_LAYERS=2, CLS_WEIGHT=3.0, COST_GIOU=1.5)
    decoder, criterion = build_detection_branch(cfg)
    assert isinstance(decoder, HumanDetectionDecoder) and len(decoder.layers) == 2
    assert decoder.class_heads[0].in_features == cfg.MODEL.GROUP_POSE.HIDDEN_DIM
    assert criterion.cost_giou == 1.5 and set(criterion.weight_dict) == {
        f"{name}_{layer}" for name in ("loss_det_cls", "loss_det_bbox", "loss_det_giou")
        for layer in range(2)}
    assert criterion.weight_dict["loss_det_cls_1"] == 3.0


def test_network_initialises_the_pose_decoder_from_the_detections():
    model = build(detection_cfg())
    assert len(model.detection_decoder.layers) == DETECTION_LAYERS
    assert len(model.decoder.layers) == 2  # DEC_LAYERS Group Pose layers follow
    model.eval()
    batch = training_batch([((64, 96), 2), ((80, 56), 1)])
    with torch.no_grad():
        network = model.network(model.preprocess_image(batch))
    detection = network.detection
    assert len(detection.logits) == len(detection.boxes) == DETECTION_LAYERS
    assert detection.boxes[-1].shape == (2, 6, 4)
    # Zero-initialised pose head: every initial keypoint at its detected box's center, and
    # those are the Group Pose decoder's initial references.
    centers = detection.boxes[-1][:, :, None, :2].expand(-1, -1, 17, -1)
    assert torch.allclose(detection.keypoints, centers, atol=1e-6)
    assert torch.allclose(network.decoder.reference_points[0][:, :, 1:], detection.keypoints)
    # The instance queries carry the detection queries (not only the shared embedding).
    instance_queries = model.queries(detection.hidden)[:, :, 0]
    expected = model.queries.instance_embedding.weight + detection.hidden
    assert torch.allclose(instance_queries, expected)


def test_pose_losses_train_the_pose_initialisation_not_the_boxes():
    model = build(detection_cfg())
    model.train()
    batch = training_batch([((64, 64), 2)])
    images = model.preprocess_image(batch)
    network = model.network(images)
    targets = [model._targets(batch[0]["instances"], images.image_sizes[0])]
    pose_losses = model.criterion(network.predictions(), targets)
    sum(pose_losses.values()).backward()
    detection = model.detection_decoder
    assert detection.pose_head.layers[-1].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in detection.box_heads.parameters())


def test_training_uses_annotated_boxes_when_given():
    model = build(detection_cfg())
    batch = training_batch([((64, 64), 2)])
    instances = batch[0]["instances"]
    targets = model._targets(instances, (64, 64))
    from_keypoints = targets["boxes"].clone()
    instances.gt_boxes = Boxes(torch.tensor([[0.0, 0.0, 32.0, 16.0], [8.0, 8.0, 64.0, 64.0]]))
    targets = model._targets(instances, (64, 64))
    assert torch.allclose(targets["boxes"], torch.tensor([[0.25, 0.125, 0.5, 0.25],
                                                          [0.5625, 0.5625, 0.875, 0.875]]))
    assert not torch.allclose(targets["boxes"], from_keypoints)


def test_tiny_model_trains_with_the_detection_decoder():
    torch.manual_seed(0)
    model = build(detection_cfg())
    model.train()
    batch = training_batch([((64, 64), 2), ((64, 64), 1)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    history = []
    for _ in range(6):
        losses = model(batch)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append({name: value.item() for name, value in losses.items()})
    names = {f"{base}_{layer}" for base in ("loss_det_cls", "loss_det_bbox", "loss_det_giou")
             for layer in range(DETECTION_LAYERS)}
    assert names <= set(history[0])
    assert all(torch.isfinite(torch.tensor(list(step.values()))).all() for step in history)
    totals = [sum(step.values()) for step in history]
    detection = [sum(step[name] for name in names) for step in history]
    # Seeded runs fall by ~10% in these 6 steps, the detection losses by ~12%.
    assert totals[-1] < 0.95 * totals[0], totals
    assert detection[-1] < 0.95 * detection[0], detection
    model.eval()
    with torch.no_grad():
        (result,) = model([{"image": image(64, 64, 0)}])
    assert result["instances"].pred_keypoints.shape == (4, 17, 3)


def test_official_converter_refuses_the_detection_variant(reference_dir):
    official = torch.load(reference_dir / "weights_official.pt")["model"]
    with pytest.raises(ValueError, match="DETECTION_DECODER_LAYERS=2 but official checkpoints"):
        convert_official_checkpoint(official, reference_cfg(DETECTION_DECODER_LAYERS=2))
