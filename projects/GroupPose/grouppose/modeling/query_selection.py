"""Two-stage query selection and the construction of Group Pose's queries.

The encoder memory proposes one person at every position; the N best-scoring positions give the
initial K-keypoint poses and the content of the decoder queries. Each selected person becomes a
group of K + 1 queries: one instance query (scores the pose) followed by K keypoint queries
(each regresses one keypoint).
"""

from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

import torch
from detectron2.config import CfgNode
from torch import Tensor, nn

from grouppose.layers import Linear
from grouppose.modeling.blocks import MLP, in_float32, person_prior_logit
from grouppose.modeling.variants import DecoderVariant

# A proposal (center x, y and size w, h, all normalised) must lie strictly inside this open
# interval to be used; the others are rejected (see encoder_proposals).
_PROPOSAL_RANGE = (0.01, 0.99)
# Size of the box proposed at level l: PROPOSAL_BASE_SIZE * 2 ** l.
PROPOSAL_BASE_SIZE = 0.05


@dataclass
class SelectedPoses:
    """The two-stage (encoder) prediction at the N selected positions."""

    indices: Tensor  # (B, N) int64 positions in the flattened memory (S)
    logits: Tensor  # (B, N) person logit at those positions (the top-N scores)
    embedding: Tensor  # (B, N, C) selected memory after memory_proj + memory_norm
    keypoints: Tensor  # (B, N, K, 2) initial poses, xy in [0, 1] of the unpadded image


def encoder_proposals(
    padding_mask: Tensor, level_shapes: Sequence[Tuple[int, int]]
) -> Tuple[Tensor, Tensor]:
    """The center proposed at every flattened position and whether the position may propose.

    Position (i, j) of a level proposes the point ((j + 0.5) / W_valid, (i + 0.5) / H_valid) and
    a box of size 0.05 * 2**level. Padding, and proposals not all inside the open interval
    (0.01, 0.99), are rejected: from 50 cells (0.5 / 50 = 0.01) on, a level's outermost cells.

    Args:
        padding_mask: (B, S) bool, True on padding.
        level_shapes: L (H, W).

    Returns:
        center logits (B, S, 2) (inverse sigmoid of the xy center; +inf where rejected) and
        valid (B, S) bool.
    """
    B = padding_mask.shape[0]
    low, high = _PROPOSAL_RANGE
    centers, valid, start = [], [], 0
    for level, (height, width) in enumerate(level_shapes):
        mask = padding_mask[:, start : start + height * width].view(B, height, width)
        start += height * width
        valid_h = (~mask[:, :, 0]).sum(1)
        valid_w = (~mask[:, 0, :]).sum(1)
        # arange, not linspace: the same values, and it keeps the level size symbolic under
        # torch.export with dynamic shapes (the ONNX export).
        ys = torch.arange(height, dtype=torch.float32, device=mask.device)
        xs = torch.arange(width, dtype=torch.float32, device=mask.device)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack([grid_x, grid_y], dim=-1)  # (H, W, 2)
        scale = torch.stack([valid_w, valid_h], dim=-1).view(B, 1, 1, 2)
        center = ((grid[None] + 0.5) / scale).view(B, -1, 2)
        size = PROPOSAL_BASE_SIZE * 2.0**level
        size_valid = low < size < high
        inside = ((center > low) & (center < high)).all(-1)
        centers.append(center)
        # Not `inside & size_valid`: torch.jit.trace (fvcore's FLOP count) fails on Tensor & bool.
        valid.append(inside if size_valid else torch.zeros_like(inside))
    center = torch.cat(centers, dim=1)
    valid = torch.cat(valid, dim=1) & ~padding_mask
    center_logit = torch.log(center / (1 - center))
    return center_logit.masked_fill(~valid[..., None], float("inf")), valid


class QuerySelection(nn.Module):
    """Two-stage selection: score every memory position as a person, keep the top N.

    Its class and keypoint predictions at the kept positions are the encoder (``interm``)
    predictions; its keypoints initialise the decoder's reference points.
    """

    def __init__(self, *, dim: int, num_keypoints: int, num_instances: int):
        super().__init__()
        self.num_keypoints = num_keypoints
        self.num_instances = num_instances
        self.memory_proj = Linear(dim, dim)
        self.memory_norm = nn.LayerNorm(dim)
        self.class_head = Linear(dim, 1)
        self.keypoint_head = MLP(dim, 2 * dim, 2 * num_keypoints, 4)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier projection and keypoint MLP, person-prior class bias, zero keypoint offsets
        (initial poses start at the proposal centers)."""
        nn.init.xavier_uniform_(self.memory_proj.weight)
        nn.init.zeros_(self.memory_proj.bias)
        for layer in self.keypoint_head.layers:
            nn.init.xavier_uniform_(layer.weight)
        nn.init.constant_(self.class_head.bias, person_prior_logit())
        nn.init.zeros_(self.keypoint_head.layers[-1].weight)
        nn.init.zeros_(self.keypoint_head.layers[-1].bias)

    def forward(
        self, memory: Tensor, padding_mask: Tensor, level_shapes: Sequence[Tuple[int, int]]
    ) -> SelectedPoses:
        """
        Args:
            memory: (B, S, C) encoder output; padding_mask: (B, S) bool, True on padding;
            level_shapes: L (H, W).
        """
        center_logit, valid = encoder_proposals(padding_mask, level_shapes)
        memory = memory.masked_fill(~valid[..., None], 0.0)
        # In float32 (see in_float32): which positions are kept depends on near-equal scores.
        embedding = in_float32(lambda m: self.memory_norm(self.memory_proj(m)), memory)
        logits = in_float32(self.class_head, embedding).squeeze(-1)  # (B, S)
        # Rejected positions cannot be selected while enough valid ones exist. (The official
        # code leaves them in the top-N; a trained model never picks them.)
        scores = logits.detach().masked_fill(~valid, float("-inf"))
        num_selected = min(self.num_instances, scores.shape[1])
        indices = scores.topk(num_selected, dim=1).indices  # (B, N)

        selected = embedding.gather(1, indices[..., None].expand(-1, -1, embedding.shape[-1]))
        B, N = indices.shape
        keypoint_logits = in_float32(self.keypoint_head, selected).view(
            B, N, self.num_keypoints, 2
        )
        selected_center = center_logit.gather(1, indices[..., None].expand(-1, -1, 2))
        keypoints = (keypoint_logits + selected_center[:, :, None]).sigmoid()
        return SelectedPoses(
            indices=indices,
            logits=logits.gather(1, indices),
            embedding=selected,
            keypoints=keypoints,
        )


def build_query_selection(cfg: CfgNode) -> QuerySelection:
    """The two-stage selection of MODEL.GROUP_POSE.NUM_INSTANCES persons of NUM_KEYPOINTS
    keypoints from HIDDEN_DIM-channel memory."""
    gp = cfg.MODEL.GROUP_POSE
    return QuerySelection(
        dim=gp.HIDDEN_DIM, num_keypoints=gp.NUM_KEYPOINTS, num_instances=gp.NUM_INSTANCES
    )


class InstanceKeypointQueries(nn.Module):
    """Content of the N x (K + 1) decoder queries: per person one instance query and K keypoint
    queries.

    Keypoint query k of a person = learnable keypoint embedding k + that person's feature (its
    selected memory feature); instance query = one learnable instance embedding, shared by all
    persons. The person features come in detached: the decoder does not train what made them.

    Variants (grouppose.modeling.variants): only the keypoint queries or only the instance query.
    The instance query also gets the person feature when ``instance_from_person`` (the human
    detection decoder's persons) or when it is the only query (it then regresses the pose).
    ``__init__`` picks the query types' functions once.
    """

    def __init__(
        self, *, dim: int, num_keypoints: int, variant: DecoderVariant, instance_from_person: bool
    ):
        super().__init__()
        self.variant = variant
        # (B, N, 1, C) person features -> (B, N, G_t, C) queries of each type, in group order.
        query_types: List[Callable[[Tensor], Tensor]] = []
        if variant.has_instance_query:
            self.instance_embedding = nn.Embedding(1, dim)
            nn.init.xavier_uniform_(self.instance_embedding.weight)
            from_person = instance_from_person or not variant.has_keypoint_queries
            query_types.append(
                self.person_instance_queries if from_person else self.shared_instance_queries
            )
        if variant.has_keypoint_queries:
            self.keypoint_embedding = nn.Embedding(num_keypoints, dim)
            nn.init.xavier_uniform_(self.keypoint_embedding.weight)
            query_types.append(self.keypoint_queries)
        self.query_types = tuple(query_types)

    def shared_instance_queries(self, person: Tensor) -> Tensor:
        """(B, N, 1, C) -> (B, N, 1, C): the one instance embedding, for every person."""
        return self.instance_embedding.weight[None, None].expand(person.shape)

    def person_instance_queries(self, person: Tensor) -> Tensor:
        """(B, N, 1, C) -> (B, N, 1, C): the instance embedding + each person's feature."""
        return self.shared_instance_queries(person) + person

    def keypoint_queries(self, person: Tensor) -> Tensor:
        """(B, N, 1, C) -> (B, N, K, C): keypoint embedding k + each person's feature."""
        return self.keypoint_embedding.weight[None, None] + person

    def forward(self, person_features: Tensor) -> Tensor:
        """(B, N, C) person features -> (B, N, G, C) queries, instance query first."""
        person = person_features.detach()[:, :, None]
        return torch.cat([queries(person) for queries in self.query_types], dim=2)


def build_queries(
    cfg: CfgNode, variant: DecoderVariant, instance_from_person: bool
) -> InstanceKeypointQueries:
    """The decoder's queries of MODEL.GROUP_POSE (HIDDEN_DIM, NUM_KEYPOINTS) in the layout of
    ``variant``; ``instance_from_person``: see InstanceKeypointQueries."""
    gp = cfg.MODEL.GROUP_POSE
    return InstanceKeypointQueries(
        dim=gp.HIDDEN_DIM, num_keypoints=gp.NUM_KEYPOINTS, variant=variant,
        instance_from_person=instance_from_person,
    )
