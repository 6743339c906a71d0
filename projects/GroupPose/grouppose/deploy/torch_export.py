"""Exporting Group Pose inference with ``torch.export``.

Detectron2's input and output (lists of dicts, ``Instances``) cannot be exported, so
``GroupPoseExportModule`` wraps the network with tensors in and out. The deformable attention
exports as the single custom op ``torch.ops.grouppose.ms_deform_attn`` (its fake kernel gives
torch.export the output shape), so ``grouppose._C`` must be built, and loaded (``import
grouppose``) wherever the exported program runs.

    model = build_model(cfg); DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    program = export_grouppose(model, height=800, width=1216)
    torch.export.save(program, "grouppose.pt2")
    scores, keypoints = torch.export.load("grouppose.pt2").module()(normalized_images)
"""

from typing import Tuple

import torch
from detectron2.structures import ImageList
from torch import Tensor, nn

from grouppose.modeling import GroupPose
from grouppose.modeling.postprocess import keypoints_to_pixels

__all__ = ["GroupPoseExportModule", "export_grouppose"]


class GroupPoseExportModule(nn.Module):
    """Group Pose inference on a batch of same-size, unpadded, normalised images.

    ``export_grouppose`` specialises the program to one input size; the ONNX export
    (``grouppose.deploy.export_onnx``) can keep height and width dynamic. Images are not
    padded: a padding mask would need per-image sizes as input.

    Args:
        model: the Group Pose model (put in eval mode).
        raw_images: ``forward`` takes 0..255 images and normalises them itself (``normalize``),
            so that an exported file alone turns images into poses.
    """

    def __init__(self, model: GroupPose, raw_images: bool = False):
        super().__init__()
        self.model = model
        self.raw_images = raw_images
        self.eval()  # the wrapper too: exporters warn about modules left in training mode

    def normalize(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) 0..255 in the model's INPUT.FORMAT (RGB for Group Pose) -> the
        normalised input of ``forward``, exactly as the model's own preprocessing computes it."""
        return self.model.normalize(images)

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        """
        Args:
            images: (B, 3, H, W) float, already normalised (see ``normalize``), or 0..255 in
                the model's INPUT.FORMAT when ``raw_images``.

        Returns:
            scores (B, N) person scores in [0, 1], best first;
            keypoints (B, N, K, 3) as Detectron2's ``pred_keypoints`` (x, y in pixels of the
            input, the per-keypoint score: the constant sigmoid(1), or the probability that the
            keypoint is visible with MODEL.GROUP_POSE.KEYPOINT_CONFIDENCE), in the order of
            ``scores``.
        """
        if self.raw_images:
            images = self.normalize(images)
        B, _, H, W = images.shape
        network = self.model.network(ImageList(images, [(H, W)] * B))
        scores, order = network.decoder.logits[-1].sigmoid().sort(dim=1, descending=True)
        keypoints = network.decoder.keypoints[-1]  # (B, N, K, 2) in [0, 1]
        keypoints = keypoints.gather(1, order[:, :, None, None].expand_as(keypoints))
        keypoint_scores = network.keypoint_scores()  # (B, N, K) or None
        if keypoint_scores is not None:
            order_k = order[:, :, None].expand_as(keypoint_scores)
            keypoint_scores = keypoint_scores.gather(1, order_k)
        return scores, keypoints_to_pixels(keypoints, (H, W), keypoint_scores)


def export_grouppose(
    model: GroupPose, height: int, width: int, batch_size: int = 1
) -> torch.export.ExportedProgram:
    """``torch.export`` of ``GroupPoseExportModule(model)`` for (batch_size, 3, height, width)
    normalised inputs on the model's device."""
    if height <= 0 or width <= 0 or batch_size <= 0:
        raise ValueError(
            f"export_grouppose: height, width and batch_size must be positive, got "
            f"{height}, {width}, {batch_size}"
        )
    module = GroupPoseExportModule(model)
    example = torch.zeros((batch_size, 3, height, width), device=model.device)
    with torch.no_grad():
        return torch.export.export(module, (example,))
