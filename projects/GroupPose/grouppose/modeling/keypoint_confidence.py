"""Per-keypoint confidence (``MODEL.GROUP_POSE.KEYPOINT_CONFIDENCE``; not in the paper).

The paper's model, like the official implementation, has no keypoint-visibility output: every
keypoint scores the constant sigmoid(1) (``postprocess.KEYPOINT_SCORE``). With the switch on,
a small head on each keypoint query's decoder output predicts the probability that the keypoint
is *visible*, which then becomes the third value of ``pred_keypoints``.

- Head: per decoder layer a 2-layer MLP C -> C -> 1 (ReLU) on the K keypoint queries' hidden
  states, the same states the layer's keypoint head reads; (B, N, K, C) -> (B, N, K) logits.
- Target: 1 for a visible keypoint (COCO v = 2), 0 for an occluded (v = 1) or unlabeled one
  (v = 0, which includes keypoints off the image after augmentation), of the person a query is
  matched to. So "confident" means "you can see it there", the question a user filtering
  joints asks; an occluded joint's position is still predicted and trained as before.
- Loss ``loss_kpt_conf``: sigmoid binary cross-entropy (calibrated probabilities, unlike a
  focal loss), averaged over the K keypoints of each matched query, summed over queries and
  divided by the number of people like the other losses; on the last and, with
  ``AUX_LOSS``, every earlier decoder layer (suffix ``_{i}``), not on the encoder's two-stage
  prediction (it has no keypoint queries). The matching does not use it.
"""

from typing import List, Optional

import torch.nn.functional as F
from detectron2.config import CfgNode
from torch import Tensor, nn

from grouppose.config import config_key
from grouppose.modeling.blocks import MLP, in_float32
from grouppose.modeling.variants import DecoderVariant

__all__ = [
    "CONFIDENCE_LOSS", "KeypointConfidenceHeads", "VISIBLE", "build_keypoint_confidence_heads",
    "keypoint_confidence_loss", "keypoint_confidence_target",
]

VISIBLE = 2  # COCO's v of a labeled, visible keypoint
CONFIDENCE_LOSS = "loss_kpt_conf"


def keypoint_confidence_target(visibility: Tensor) -> Tensor:
    """(..., K) COCO visibility v in {0, 1, 2} -> (..., K) float 1 where v = 2, else 0."""
    return (visibility == VISIBLE).float()


def keypoint_confidence_loss(logits: Tensor, target: Tensor, num_people: float) -> Tensor:
    """Binary cross-entropy of (M, K) logits of M matched queries against their (M, K) targets
    (see keypoint_confidence_target): mean over K, summed over M, divided by ``num_people``."""
    loss = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    return loss.mean(dim=-1).sum() / num_people


class KeypointConfidenceHeads(nn.Module):
    """One confidence MLP per decoder layer (see the module docstring)."""

    def __init__(self, *, num_layers: int, dim: int, keypoint_slice: slice):
        """
        Args:
            num_layers: decoder layers (one head each).
            dim: C, the decoder's hidden size.
            keypoint_slice: where the K keypoint queries are on the group axis of the decoder's
                (B, N, G, C) hidden states (``DecoderVariant.keypoint_slice``).
        """
        super().__init__()
        self.keypoint_slice = keypoint_slice
        self.heads = nn.ModuleList(MLP(dim, dim, 1, 2) for _ in range(num_layers))

    def forward(self, hidden: List[Tensor]) -> List[Tensor]:
        """Per decoder layer (B, N, G, C) hidden states -> (B, N, K) float32 logits."""
        if len(hidden) != len(self.heads):
            raise ValueError(f"{len(hidden)} decoder layers' hidden states for "
                             f"{len(self.heads)} keypoint confidence heads")
        return [
            in_float32(head, states[:, :, self.keypoint_slice]).squeeze(-1)
            for head, states in zip(self.heads, hidden)
        ]


def build_keypoint_confidence_heads(
    cfg: CfgNode, variant: DecoderVariant
) -> Optional[KeypointConfidenceHeads]:
    """The heads of MODEL.GROUP_POSE.KEYPOINT_CONFIDENCE on the keypoint queries of the
    decoder's ``variant``, or None with the switch off (the paper's model)."""
    gp = cfg.MODEL.GROUP_POSE
    if not gp.KEYPOINT_CONFIDENCE:
        return None
    if not variant.has_keypoint_queries:
        raise ValueError(f"{config_key('KEYPOINT_CONFIDENCE')} needs keypoint queries, which "
                         f"{config_key('QUERIES')} {variant.queries!r} has none of")
    return KeypointConfidenceHeads(
        num_layers=gp.DEC_LAYERS, dim=gp.HIDDEN_DIM, keypoint_slice=variant.keypoint_slice
    )
