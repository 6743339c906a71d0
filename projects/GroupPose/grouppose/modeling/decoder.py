"""Group Pose decoder: group self-attentions, deformable cross-attention and per-layer heads.

Queries are laid out (B, N, G, C): N persons ("groups") of G = K + 1 queries, an instance query
(index 0) followed by K keypoint queries. Reference points are laid out the same way,
(B, N, G, 2): the instance query's reference is the center (mean) of its person's K keypoints.
The ablation variants (grouppose.modeling.variants) change the self-attention and the queries
of a group (K keypoint queries only, or the instance query only): the layers and the decoder
pick the functions of their variant when they are built, so that their ``forward`` is the
paper's whatever the variant.
"""

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
from detectron2.config import CfgNode
from torch import Tensor, nn

from grouppose.layers import Linear
from grouppose.modeling.blocks import (
    MLP,
    DeformableDecoderLayer,
    attention_layer_args,
    in_float32,
    init_transformer_layers,
    inverse_sigmoid,
    person_prior_logit,
)
from grouppose.modeling.levels import FlattenedLevels
from grouppose.modeling.position_encoding import point_position_encoding
from grouppose.modeling.variants import DecoderVariant


def person_centers(keypoints: Tensor) -> Tensor:
    """(B, N, K, 2) keypoints -> (B, N, 1, 2) their mean: the instance query's reference."""
    return keypoints.mean(dim=2, keepdim=True)


def with_instance_centers(keypoints: Tensor) -> Tensor:
    """(B, N, K, 2) keypoints -> (B, N, K + 1, 2) reference points, the person center first."""
    return torch.cat([person_centers(keypoints), keypoints], dim=2)


def keypoint_references(keypoints: Tensor) -> Tensor:
    """(B, N, K, 2) keypoints -> the same: the K keypoint queries' references."""
    return keypoints


# (B, N, K, 2) keypoints -> (B, N, G, 2) reference points of a person's queries, for each layout
# of the queries (DecoderVariant.queries): the person center for the instance query, the
# keypoints for the keypoint queries.
GROUP_REFERENCES: Dict[str, Callable[[Tensor], Tensor]] = {
    "instance_and_keypoint": with_instance_centers,
    "keypoint_only": keypoint_references,
    "instance_only": person_centers,
}


def add_positions(queries: Tensor, positions: Tensor, positioned: slice) -> Tensor:
    """(B, N, G, C) queries + (B, N, P, C) positions on the trailing P = G - positioned.start
    queries (the keypoint queries; the instance query has none unless it is alone)."""
    start = positioned.start
    return torch.cat([queries[:, :, :start], queries[:, :, start:] + positions], dim=2)


def group_attention_mask(num_instances: int, group_size: int, device=None) -> Tensor:
    """The mask of Fig. 3(b) for one self-attention over N x G queries laid out person-major.

    Returns:
        (N * G, N * G) bool, True where attention is blocked: between queries of different
        persons that are also of different types (type = position in the group).
    """
    person = torch.arange(num_instances, device=device).repeat_interleave(group_size)
    query_type = torch.arange(group_size, device=device).repeat(num_instances)
    return (person[:, None] != person[None, :]) & (query_type[:, None] != query_type[None, :])


def _attention(dim: int, num_heads: int, dropout: float) -> nn.MultiheadAttention:
    return nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)


# One self-attention step of a decoder layer: (B, N, G, C) queries -> (B, N, G, C).
SelfAttentionStep = Callable[[Tensor], Tensor]


class GroupPoseDecoderLayer(DeformableDecoderLayer):
    """One post-norm Group Pose decoder layer (paper Fig. 2):

    1. within-instance self-attention: N attentions, each over one person's K + 1 queries;
    2. across-instance self-attention: K + 1 attentions, each over the N queries of one type
       (all instance queries, all "nose" keypoint queries, ...);
    3. deformable cross-attention into the encoder memory at each query's reference point;
    4. FFN. Each step is followed by add & LayerNorm.

    Keypoint queries carry a position (from their reference point); the instance queries do not.
    As in the official implementation the position is part of the keypoint queries' *content*:
    the layer's input already includes it (see GroupPoseDecoder), and it is added again before
    step 3, so it enters the attention values and the residuals.

    The ablation variants (grouppose.modeling.variants) replace steps 1-2: ``__init__`` picks
    the variant's self-attention steps once, from within-instance, across-instance (of its own
    module, or of the within-instance one: App. A.3; over the query types of
    ``variant.across_instance``) and standard self-attention over all N x G queries (plain, or
    masked as in Fig. 3(b)); ``forward`` runs them in order.
    """

    def __init__(
        self, *, dim: int, num_heads: int, ffn_dim: int, dropout: float, num_levels: int,
        num_points: int, variant: DecoderVariant,
    ):
        super().__init__()
        self.variant = variant
        self.across_instance_types = variant.across_instance_slice
        self.positioned = variant.positioned_slice
        # Modules in the order of their parameters in checkpoints and of their seeded
        # initialisation; each self-attention a variant has adds its step.
        steps: List[SelfAttentionStep] = []
        if variant.has_within_instance:
            self.within_instance_attn = _attention(dim, num_heads, dropout)
            self.within_instance_norm = nn.LayerNorm(dim)
            steps.append(self.within_instance_attention)
        if variant.has_across_instance:
            if variant.share_group_attn:
                steps.append(self.shared_across_instance_attention)
            else:
                self.across_instance_attn = _attention(dim, num_heads, dropout)
                steps.append(self.across_instance_attention)
            self.across_instance_norm = nn.LayerNorm(dim)
        if variant.self_attn != "group":
            self.self_attn = _attention(dim, num_heads, dropout)
            self.self_attn_norm = nn.LayerNorm(dim)
            masked = variant.self_attn == "standard_masked"
            steps.append(self.masked_standard_attention if masked else self.standard_attention)
        self.self_attention_steps = tuple(steps)
        self.add_cross_attention_and_ffn(
            dim=dim, num_heads=num_heads, ffn_dim=ffn_dim, dropout=dropout, num_levels=num_levels,
            num_points=num_points,
        )

    def _self_attention(
        self, attn: nn.MultiheadAttention, norm: nn.LayerNorm, x: Tensor,
        mask: Optional[Tensor] = None,
    ) -> Tensor:
        """Post-norm self-attention over dim 1 of (batch, sequence, C); ``mask`` (sequence,
        sequence) bool, True = blocked."""
        update = attn(x, x, x, attn_mask=mask, need_weights=False)[0]
        return norm(x + self.dropout(update))

    def within_instance_attention(self, queries: Tensor) -> Tensor:
        """(B, N, G, C): each person's G queries attend to each other."""
        B, N, G, C = queries.shape
        x = queries.reshape(B * N, G, C)
        x = self._self_attention(self.within_instance_attn, self.within_instance_norm, x)
        return x.view(B, N, G, C)

    def across_instance_attention(self, queries: Tensor) -> Tensor:
        """(B, N, G, C): the N queries of each type (instance, keypoint k) attend to each
        other, for the types of ``variant.across_instance``; the other types are unchanged."""
        return self._across_instance(self.across_instance_attn, queries)

    def shared_across_instance_attention(self, queries: Tensor) -> Tensor:
        """``across_instance_attention`` with the within-instance attention module (App. A.3);
        the step keeps its own add & norm."""
        return self._across_instance(self.within_instance_attn, queries)

    def _across_instance(self, attn: nn.MultiheadAttention, queries: Tensor) -> Tensor:
        types = self.across_instance_types
        selected = queries[:, :, types]
        B, N, T, C = selected.shape
        x = selected.transpose(1, 2).reshape(B * T, N, C)
        x = self._self_attention(attn, self.across_instance_norm, x)
        x = x.view(B, T, N, C).transpose(1, 2)
        if queries.shape[2] == T:
            return x
        return torch.cat([queries[:, :, : types.start], x, queries[:, :, types.start + T :]], 2)

    def standard_attention(self, queries: Tensor) -> Tensor:
        """(B, N, G, C): one self-attention over all N x G queries of an image (Fig. 3(a))."""
        return self._all_queries(queries, mask=None)

    def masked_standard_attention(self, queries: Tensor) -> Tensor:
        """``standard_attention`` with the mask of Fig. 3(b) (see group_attention_mask)."""
        _, N, G, _ = queries.shape
        return self._all_queries(queries, mask=group_attention_mask(N, G, queries.device))

    def _all_queries(self, queries: Tensor, mask: Optional[Tensor]) -> Tensor:
        B, N, G, C = queries.shape
        x = self._self_attention(
            self.self_attn, self.self_attn_norm, queries.reshape(B, N * G, C), mask
        )
        return x.view(B, N, G, C)

    def self_attention(self, queries: Tensor) -> Tensor:
        """Steps 1-2 (the paper: within-, then across-instance attention; a variant's steps,
        see ``__init__``): (B, N, G, C) -> (B, N, G, C)."""
        for step in self.self_attention_steps:
            queries = step(queries)
        return queries

    def forward(
        self, queries: Tensor, positions: Tensor, reference_points: Tensor,
        memory: Tensor, levels: FlattenedLevels,
    ) -> Tensor:
        """
        Args:
            queries: (B, N, G, C), instance query first, keypoint positions included.
            positions: (B, N, P, C) positions of the positioned queries (the K keypoint
                queries; see DecoderVariant.positioned_slice).
            reference_points: (B, N, G, L, 2) xy per level, in the padded frame.
            memory: (B, S, C) encoder output; levels: its geometry and padding mask.

        Returns:
            (B, N, G, C).
        """
        B, N, G, C = queries.shape
        x = self.self_attention(queries)
        x = add_positions(x, positions, self.positioned).reshape(B, N * G, C)
        x = self.cross_attention_and_ffn(x, x, reference_points.flatten(1, 2), memory, levels)
        return x.view(B, N, G, C)


@dataclass
class DecoderOutput:
    """Per decoder layer l (0 .. L-1) unless noted."""

    # (B, N, G, C) hidden states the heads of layer l read (instance query first). For
    # l < L - 1 the keypoint queries include layer l + 1's keypoint positions (see
    # GroupPoseDecoder).
    hidden: List[Tensor]
    reference_points: List[Tensor]  # L + 1 entries (B, N, K + 1, 2): [0] initial, [l+1] refined
    logits: List[Tensor]  # (B, N) person logit from the instance query
    keypoints: List[Tensor]  # (B, N, K, 2) predicted xy in [0, 1] of the unpadded image


class GroupPoseDecoder(nn.Module):
    """Decoder layers with per-layer class and keypoint heads and keypoint refinement.

    Layer l predicts keypoint offsets in inverse-sigmoid space from its keypoint queries and
    refines its (detached) reference keypoints with them; the refined keypoints are the next
    layer's references. Two details of the official implementation are reproduced:
    - layer l's *prediction* applies its offsets to the previous layer's refined keypoints
      before detaching, so layer l's loss also trains layer l - 1 (the values are the same);
    - the official adds layer l + 1's keypoint positions in place to layer l's output, after
      layer l's refinement but before layer l's heads read it: the prediction of every layer
      but the last is made from its output plus the next layer's keypoint positions.

    The pose score is read from the instance query and each keypoint query regresses its
    keypoint. The variant's functions, picked in ``__init__``: ``group_references`` (the
    layout of the queries, GROUP_REFERENCES), ``keypoint_offsets`` (for ``variant.queries``
    "instance_only", the instance query regresses all K) and ``score_features`` (for
    ``variant.score_from`` "mean_keypoint", the mean of the keypoint queries).
    """

    def __init__(
        self, *, num_layers: int, dim: int, num_heads: int, ffn_dim: int, dropout: float,
        num_levels: int, num_points: int, num_keypoints: int, variant: DecoderVariant,
    ):
        super().__init__()
        self.variant = variant
        self.num_keypoints = num_keypoints
        self.keypoint_slice = variant.keypoint_slice
        self.positioned = variant.positioned_slice
        # The variant's functions (see the class docstring).
        self.group_references = GROUP_REFERENCES[variant.queries]
        self.keypoint_offsets = (self.offsets_per_keypoint_query if variant.has_keypoint_queries
                                 else self.offsets_from_instance_query)
        self.score_features = (self.score_from_instance if variant.score_from == "instance"
                               else self.score_from_mean_keypoint)
        self.layers = nn.ModuleList(
            GroupPoseDecoderLayer(
                dim=dim, num_heads=num_heads, ffn_dim=ffn_dim, dropout=dropout,
                num_levels=num_levels, num_points=num_points, variant=variant,
            )
            for _ in range(num_layers)
        )
        # Position of a keypoint query: MLP of the sine encoding of its reference point.
        self.keypoint_pos_head = MLP(dim, dim, dim, 2)
        self.class_heads = nn.ModuleList(Linear(dim, 1) for _ in range(num_layers))
        # An (x, y) offset per keypoint query, or all K from a lone instance query.
        offsets = 2 if variant.has_keypoint_queries else 2 * num_keypoints
        self.keypoint_heads = nn.ModuleList(MLP(dim, dim, offsets, 3) for _ in range(num_layers))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The layers as Deformable DETR initialises them, Xavier position head, class bias at
        the person prior, zero initial keypoint offsets."""
        init_transformer_layers(self.layers)
        for layer in self.keypoint_pos_head.layers:
            nn.init.xavier_uniform_(layer.weight)
        for head in self.class_heads:
            nn.init.constant_(head.bias, person_prior_logit())
        for head in self.keypoint_heads:
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)

    def keypoint_positions(self, references: Tensor) -> Tensor:
        """(B, N, G, L, 2) per-level reference points -> (B, N, P, C) positions of the
        positioned queries (the K keypoint queries), from the level-0 points."""
        dim = self.keypoint_pos_head.layers[0].in_features
        points = references[:, :, self.positioned, 0]
        return self.keypoint_pos_head(point_position_encoding(points, dim // 2))

    def offsets_per_keypoint_query(self, layer_index: int, hidden: Tensor) -> Tensor:
        """(B, N, G, C) hidden states -> (B, N, K, 2) layer ``layer_index``'s keypoint offsets
        (inverse-sigmoid space), one from each keypoint query."""
        return in_float32(self.keypoint_heads[layer_index], hidden[:, :, self.keypoint_slice])

    def offsets_from_instance_query(self, layer_index: int, hidden: Tensor) -> Tensor:
        """The same, all K from the lone instance query (QUERIES "instance_only")."""
        B, N = hidden.shape[:2]
        offsets = in_float32(self.keypoint_heads[layer_index], hidden[:, :, 0])
        return offsets.view(B, N, self.num_keypoints, 2)

    def score_from_instance(self, hidden: Tensor) -> Tensor:
        """(B, N, G, C) -> (B, N, C) what the class head reads: the instance query."""
        return hidden[:, :, 0]

    def score_from_mean_keypoint(self, hidden: Tensor) -> Tensor:
        """The same, the mean of the keypoint queries (SCORE_FROM "mean_keypoint")."""
        return hidden[:, :, self.keypoint_slice].mean(dim=2)

    def forward(
        self, queries: Tensor, keypoints: Tensor, memory: Tensor, levels: FlattenedLevels
    ) -> DecoderOutput:
        """
        Args:
            queries: (B, N, G, C) initial query content, instance query first.
            keypoints: (B, N, K, 2) initial reference keypoints in [0, 1]. The layers use them
                as constants; layer 0's prediction refines them *with* their gradient, so pass
                them detached unless what produced them should learn from layer 0's losses.
            memory: (B, S, C) encoder output; levels: its geometry and padding mask.
        """
        # The reference keypoints of the layer whose prediction is pending (with gradient).
        layer_references = keypoints
        keypoints = keypoints.detach()
        output = DecoderOutput([], [with_instance_centers(keypoints)], [], [])
        hidden = queries
        for layer_index, layer in enumerate(self.layers):
            # (B, N, G, L, 2): references are relative to the unpadded image.
            references = self.group_references(keypoints.detach())[:, :, :, None]
            references = references * levels.valid_ratios[:, None, None]
            positions = self.keypoint_positions(references)
            hidden = add_positions(hidden, positions, self.positioned)
            if layer_index > 0:
                self._predict(output, layer_index - 1, hidden, layer_references)
                layer_references = keypoints
            hidden = layer(hidden, positions, references, memory, levels)
            offsets = self.keypoint_offsets(layer_index, hidden)
            keypoints = (inverse_sigmoid(keypoints.detach()) + offsets).sigmoid()
            output.reference_points.append(with_instance_centers(keypoints))
        self._predict(output, len(self.layers) - 1, hidden, layer_references)
        return output

    def _predict(
        self, output: DecoderOutput, layer_index: int, hidden: Tensor, references: Tensor
    ) -> None:
        """Append layer ``layer_index``'s heads' predictions from ``hidden`` (B, N, G, C) and
        its (B, N, K, 2) reference keypoints (with their gradient) to ``output``."""
        offsets = self.keypoint_offsets(layer_index, hidden)
        output.hidden.append(hidden)
        scores = in_float32(self.class_heads[layer_index], self.score_features(hidden))
        output.logits.append(scores.squeeze(-1))
        output.keypoints.append((inverse_sigmoid(references) + offsets).sigmoid())


def build_decoder(cfg: CfgNode, variant: DecoderVariant) -> GroupPoseDecoder:
    """The Group Pose decoder of ``cfg.MODEL.GROUP_POSE`` (DEC_LAYERS layers of DEC_N_POINTS
    points, NUM_KEYPOINTS keypoints) in the ablation ``variant`` (DecoderVariant.from_config)."""
    gp = cfg.MODEL.GROUP_POSE
    return GroupPoseDecoder(
        num_layers=gp.DEC_LAYERS, num_points=gp.DEC_N_POINTS, num_keypoints=gp.NUM_KEYPOINTS,
        variant=variant, **attention_layer_args(cfg),
    )
