"""Group Pose (ICCV 2023) as a Detectron2 meta-architecture: images -> losses | Instances."""

import contextlib
from dataclasses import dataclass
from typing import ContextManager, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import ImageList, Instances
from torch import Tensor, nn

from grouppose.config import check_grouppose_config
from grouppose.layers.fast_paths import fast_paths_active
from grouppose.modeling.backbone import (
    InputProjection,
    build_input_projection,
    use_affine_frozen_batch_norm,
)
from grouppose.modeling.criterion import (
    CONFIDENCE_KEY,
    SetCriterion,
    build_criterion,
    build_targets,
)
from grouppose.modeling.decoder import DecoderOutput, GroupPoseDecoder, build_decoder
from grouppose.modeling.detection_criterion import DetectionCriterion, person_boxes
from grouppose.modeling.detection_decoder import (
    DetectionOutput,
    HumanDetectionDecoder,
    build_detection_branch,
    proposal_boxes,
)
from grouppose.modeling.encoder import DeformableEncoder, build_encoder
from grouppose.modeling.inference_precision import resolve_inference_dtype
from grouppose.modeling.keypoint_confidence import (
    KeypointConfidenceHeads,
    build_keypoint_confidence_heads,
)
from grouppose.modeling.levels import FlattenedLevels, flatten_levels
from grouppose.modeling.position_encoding import feature_map_position_encoding
from grouppose.modeling.postprocess import PIXEL_CENTER_OFFSET, poses_to_instances
from grouppose.modeling.query_selection import (
    InstanceKeypointQueries,
    QuerySelection,
    SelectedPoses,
    build_queries,
    build_query_selection,
)
from grouppose.modeling.variants import DecoderVariant

__all__ = ["GroupPose", "NetworkOutput"]


@dataclass
class NetworkOutput:
    """Everything one forward pass computes (B images, N persons, K keypoints, C channels)."""

    levels: List[Tensor]  # L projected feature maps (B, C, H_l, W_l)
    flattened: FlattenedLevels  # the same flattened, with masks, positions and geometry
    memory: Tensor  # (B, S, C) encoder output
    selection: SelectedPoses  # two-stage (encoder) prediction at the N selected positions
    decoder: DecoderOutput  # per decoder layer hidden states, references and predictions
    detection: Optional[DetectionOutput] = None  # the human detection decoder's, if any
    # Per decoder layer (B, N, K) keypoint confidence logits, with KEYPOINT_CONFIDENCE.
    keypoint_confidence: Optional[List[Tensor]] = None

    def keypoint_scores(self) -> Optional[Tensor]:
        """(B, N, K) float32 probability that each keypoint of the last decoder layer is
        visible, or None without the confidence head."""
        if self.keypoint_confidence is None:
            return None
        return self.keypoint_confidence[-1].float().sigmoid()

    def predictions(self, with_aux: bool = True) -> Dict:
        """The criterion's input: ``pred_logits`` (B, N), ``pred_keypoints`` (B, N, K, 2) (and
        with the confidence head CONFIDENCE_KEY (B, N, K)) of the last decoder layer,
        ``aux_outputs`` (earlier layers, in order, if ``with_aux``) and ``interm_outputs`` (the
        two-stage prediction), each a dict with those keys (the two-stage one without
        CONFIDENCE_KEY)."""
        layers = [
            {"pred_logits": logits, "pred_keypoints": keypoints}
            for logits, keypoints in zip(self.decoder.logits, self.decoder.keypoints)
        ]
        if self.keypoint_confidence is not None:
            for layer, confidence in zip(layers, self.keypoint_confidence):
                layer[CONFIDENCE_KEY] = confidence
        outputs = dict(layers[-1])
        if with_aux:
            outputs["aux_outputs"] = layers[:-1]
        outputs["interm_outputs"] = {
            "pred_logits": self.selection.logits, "pred_keypoints": self.selection.keypoints,
        }
        return outputs


def _backbone_layout(images: Tensor) -> Tensor:
    """``images`` in the memory layout the backbone runs fastest on.

    On the CPU at inference that is channels-last (NHWC): oneDNN's convolutions run about 1.4x
    faster on it, the feature maps keep it, and flattening them into tokens then needs no copy.
    Training keeps PyTorch's default layout (the layout of the official gradients).
    """
    if images.device.type == "cpu" and fast_paths_active():
        return images.contiguous(memory_format=torch.channels_last)
    return images


def padding_mask(images: ImageList) -> Tensor:
    """(B, H, W) bool, True on the padding of the batched images."""
    B, _, H, W = images.tensor.shape
    mask = torch.ones((B, H, W), dtype=torch.bool, device=images.tensor.device)
    for i, (height, width) in enumerate(images.image_sizes):
        mask[i, :height, :width] = False
    return mask


def downsample_mask(mask: Tensor, size: Tuple[int, int]) -> Tensor:
    """(B, H, W) padding mask -> (B, h, w) by nearest interpolation (as the official does)."""
    return F.interpolate(mask[None].float(), size=size).to(torch.bool)[0]


@META_ARCH_REGISTRY.register()
class GroupPose(nn.Module):
    """Group Pose: end-to-end multi-person pose estimation with N x K keypoint queries and N
    instance queries, decoded with within-instance and across-instance group self-attentions.

    backbone -> input projections (+ extra levels) -> deformable encoder -> two-stage query
    selection -> Group Pose decoder -> losses (training) or Instances (inference).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        in_features: List[str],
        input_proj: InputProjection,
        encoder: DeformableEncoder,
        query_selection: QuerySelection,
        queries: InstanceKeypointQueries,
        decoder: GroupPoseDecoder,
        criterion: SetCriterion,
        pixel_mean: Tuple[float, ...],
        pixel_std: Tuple[float, ...],
        pos_temperature: float,
        aux_loss: bool,
        test_topk: int,
        test_score_thresh: float,
        detection_decoder: Optional[HumanDetectionDecoder] = None,
        detection_criterion: Optional[DetectionCriterion] = None,
        inference_dtype: Optional[torch.dtype] = None,
        keypoint_confidence: Optional[KeypointConfidenceHeads] = None,
    ):
        """
        Args:
            backbone: Detectron2 backbone returning ``in_features``.
            in_features: backbone outputs used, finest first.
            input_proj, encoder, query_selection, queries, decoder: the model's parts.
            criterion: matching + losses; its ``weight_dict`` weights the returned losses.
            detection_decoder, detection_criterion: the human detection decoder variant (paper
                Table 5) and its losses (both or neither): it initialises the decoder's persons.
            pixel_mean, pixel_std: input normalisation (0..255 units, Detectron2's PIXEL_MEAN /
                PIXEL_STD), in the input format's channel order.
            pos_temperature: temperature of the feature maps' sine position encoding.
            aux_loss: whether earlier decoder layers are supervised too.
            test_topk, test_score_thresh: inference keeps the test_topk best persons scoring
                above test_score_thresh.
            inference_dtype: autocast dtype of inference (bfloat16 / float16), or None for
                float32. Training is unaffected (see SOLVER.AMP).
            keypoint_confidence: the optional per-keypoint confidence heads (see
                grouppose.modeling.keypoint_confidence); the criterion must then have a
                keypoint confidence weight. None: every keypoint scores the constant
                KEYPOINT_SCORE, as in the paper.
        """
        super().__init__()
        if (detection_decoder is None) != (detection_criterion is None):
            raise ValueError("detection_decoder and detection_criterion go together")
        if (keypoint_confidence is None) == criterion.keypoint_confidence:
            raise ValueError("keypoint_confidence heads and the criterion's "
                             "keypoint_confidence_weight go together")
        self.backbone = backbone
        self.in_features = list(in_features)
        self.input_proj = input_proj
        self.encoder = encoder
        self.query_selection = query_selection
        self.queries = queries
        self.decoder = decoder
        self.criterion = criterion
        self.pos_temperature = pos_temperature
        self.aux_loss = aux_loss
        self.test_topk = test_topk
        self.test_score_thresh = test_score_thresh
        self.detection_decoder = detection_decoder
        self.detection_criterion = detection_criterion
        self.keypoint_confidence = keypoint_confidence
        self.inference_dtype = inference_dtype
        # Mean / std of images scaled to [0, 1], divided in float64 so that they round to the
        # official float32 constants (0.485, ..., 0.229, ...); see preprocess_image.
        for name, values in (("image_mean", pixel_mean), ("image_std", pixel_std)):
            unit = torch.tensor(values, dtype=torch.float64) / 255
            self.register_buffer(name, unit.float().view(-1, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, cfg) -> Dict:
        """The model's parts from ``cfg`` (see add_grouppose_config), in the paper's order; a
        ValueError names the first invalid ``MODEL.GROUP_POSE`` key: check_grouppose_config
        checks each key, DecoderVariant the ablation switches, the parts the rules between keys.
        """
        check_grouppose_config(cfg)
        gp = cfg.MODEL.GROUP_POSE
        variant = DecoderVariant.from_config(gp)  # checks the ablation switches
        # Frozen BN as the official computes it (see AffineFrozenBatchNorm2d).
        backbone = use_affine_frozen_batch_norm(build_backbone(cfg))
        # Built right after the backbone: the seeded initial weights of the parts built after
        # it depend on the random numbers its initialisation draws.
        detection_decoder, detection_criterion = build_detection_branch(cfg)
        return {
            "backbone": backbone,
            "in_features": gp.IN_FEATURES,
            "input_proj": build_input_projection(cfg, backbone.output_shape()),
            "encoder": build_encoder(cfg),
            "query_selection": build_query_selection(cfg),
            "detection_decoder": detection_decoder,
            # The detection decoder's persons also start the instance queries.
            "queries": build_queries(
                cfg, variant, instance_from_person=detection_decoder is not None
            ),
            "decoder": build_decoder(cfg, variant),
            "criterion": build_criterion(cfg),
            "detection_criterion": detection_criterion,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "pos_temperature": gp.POS_TEMPERATURE,
            "aux_loss": gp.AUX_LOSS,
            "test_topk": gp.TEST_TOPK,
            "test_score_thresh": gp.TEST_SCORE_THRESH,
            "inference_dtype": resolve_inference_dtype(
                gp.INFERENCE_PRECISION, torch.device(cfg.MODEL.DEVICE)
            ),
            # Built last (an optional part): the other parts' seeded initial weights are then
            # the same with and without it.
            "keypoint_confidence": build_keypoint_confidence_heads(cfg, variant),
        }

    @property
    def device(self) -> torch.device:
        return self.image_mean.device

    @property
    def num_keypoints(self) -> int:
        return self.query_selection.num_keypoints

    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: Detectron2 inputs; each dict has ``image`` (3, H, W) in
                INPUT.FORMAT (uint8 or float, 0..255), optional ``height`` / ``width`` (output
                size, default the input size) and in training ``instances`` with
                ``gt_keypoints`` (Keypoints, (n, K, 3) pixels, v > 0 = labeled) and
                ``gt_area`` (n,) person area in pixels.

        Returns:
            training: dict of weighted scalar losses (their sum is the total loss);
            inference: per image ``{"instances": Instances}`` (see poses_to_instances).
        """
        images = self.preprocess_image(batched_inputs)
        with self._inference_autocast():
            network = self.network(images)
        if self.training:
            targets = [
                self._targets(x["instances"], image_size)
                for x, image_size in zip(batched_inputs, images.image_sizes)
            ]
            losses = self.criterion(network.predictions(with_aux=self.aux_loss), targets)
            weighted = {
                name: loss * self.criterion.weight_dict[name] for name, loss in losses.items()
            }
            if self.detection_criterion is not None:
                detection = network.detection
                losses = self.detection_criterion(detection.logits, detection.boxes, targets)
                weighted.update({
                    name: loss * self.detection_criterion.weight_dict[name]
                    for name, loss in losses.items()
                })
            return weighted
        keypoint_scores = network.keypoint_scores()
        return [
            {"instances": self._instances(logits, keypoints, scores, x, image_size)}
            for logits, keypoints, scores, x, image_size in zip(
                network.decoder.logits[-1], network.decoder.keypoints[-1],
                [None] * len(batched_inputs) if keypoint_scores is None else keypoint_scores,
                batched_inputs, images.image_sizes,
            )
        ]

    def _inference_autocast(self) -> ContextManager:
        """Autocast to ``inference_dtype`` at inference, nothing otherwise."""
        if self.training or self.inference_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.inference_dtype)

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise, then zero-pad bottom/right to the largest image (no size divisibility).

        Computed as the official pipeline (torchvision ToTensor + Normalize) does, on images
        scaled to [0, 1]: (x / 255 - mean / 255) / (std / 255). That is (x - mean) / std up to
        rounding; matching the official rounding bit for bit keeps the backbone's gradients
        within 1e-3 of the official ones even with the reference fixture's random BN statistics.
        """
        images = [self.normalize(x["image"]) for x in batched_inputs]
        return ImageList.from_tensors(images, size_divisibility=0)

    def normalize(self, images: Tensor) -> Tensor:
        """(..., 3, H, W) 0..255 in INPUT.FORMAT -> the network's input, on the model's device
        (see preprocess_image; also the first step of the exported models)."""
        return (images.to(self.device) / 255 - self.image_mean) / self.image_std

    def network(self, images: ImageList) -> NetworkOutput:
        """Run the network on a normalised, padded batch."""
        mask = padding_mask(images)
        features = self.backbone(_backbone_layout(images.tensor))
        levels = self.input_proj([features[name] for name in self.in_features])
        masks = [downsample_mask(mask, level.shape[-2:]) for level in levels]
        pos = [
            feature_map_position_encoding(m, level.shape[1] // 2, self.pos_temperature)
            for m, level in zip(masks, levels)
        ]
        padded = any(tuple(size) != tuple(images.tensor.shape[-2:]) for size in images.image_sizes)
        flattened = flatten_levels(levels, masks, pos, padded)
        memory = self.encoder(flattened)
        selection = self.query_selection(
            memory, flattened.padding_mask, flattened.level_shapes
        )
        detection = None
        if self.detection_decoder is None:
            # The two-stage poses start the decoder, which does not train the selection.
            person_features, keypoints = selection.embedding, selection.keypoints.detach()
        else:
            boxes = proposal_boxes(
                selection.indices, flattened.padding_mask, flattened.level_shapes
            )
            detection = self.detection_decoder(selection.embedding, boxes, memory, flattened)
            person_features, keypoints = detection.hidden, detection.keypoints
        decoded = self.decoder(self.queries(person_features), keypoints, memory, flattened)
        confidence = None
        if self.keypoint_confidence is not None:
            confidence = self.keypoint_confidence(decoded.hidden)
        return NetworkOutput(levels, flattened, memory, selection, decoded, detection, confidence)

    def _targets(self, instances: Instances, image_size: Tuple[int, int]) -> Dict[str, Tensor]:
        """One image's people in the criterion's normalised format (see build_targets), with
        their ``boxes`` (see person_boxes) for the human detection decoder variant."""
        if not instances.has("gt_keypoints"):
            # Detectron2 adds no keypoint fields to the Instances of an image without people.
            if instances.get_fields() and len(instances) > 0:
                raise ValueError("training instances need the field 'gt_keypoints'")
            keypoints = torch.zeros((0, self.num_keypoints, 3), device=self.device)
            area = torch.zeros((0,), device=self.device)
        else:
            if not instances.has("gt_area"):
                raise ValueError("training instances need the field 'gt_area' (person area)")
            keypoints = instances.gt_keypoints.tensor.to(self.device).clone()
            keypoints[..., :2] -= PIXEL_CENTER_OFFSET  # Detectron2's frame -> the network's
            area = instances.gt_area.to(self.device)
        targets = build_targets(keypoints, area, image_size)
        if self.detection_decoder is not None:
            boxes = instances.gt_boxes.tensor.to(self.device) if instances.has("gt_boxes") else None
            targets["boxes"] = person_boxes(keypoints, image_size, boxes)
        return targets

    def _instances(
        self, logits: Tensor, keypoints: Tensor, keypoint_scores: Optional[Tensor],
        batched_input: Dict, image_size: Tuple[int, int],
    ) -> Instances:
        """One image's (N,) logits, (N, K, 2) keypoints and (N, K) keypoint scores (None: the
        constant) -> Instances at the requested output size (``height`` / ``width`` of the
        input dict, default the network input size)."""
        height = batched_input.get("height", image_size[0])
        width = batched_input.get("width", image_size[1])
        return poses_to_instances(
            logits, keypoints, (height, width), self.test_topk, self.test_score_thresh,
            keypoint_scores,
        )
