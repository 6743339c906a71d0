"""The paper's ablation variants of the decoder (Table 4, Appendix A.2, A.3), validated.

Each field is the config key ``MODEL.GROUP_POSE.<FIELD>``; the defaults are the paper's model.

- ``self_attn`` (Table 4d, Fig. 3): ``group`` = within-instance then across-instance group
  self-attention; ``standard`` = one self-attention over all N x G queries of an image;
  ``standard_masked`` = the same with the mask of Fig. 3(b): a query attends to the queries of
  its own person and to the queries of the same type (instance, keypoint k) of other persons.
- ``group_attn`` (Table 4e): which group self-attentions exist: ``both``, ``within_only``,
  ``across_only``, ``none``.
- ``across_instance`` (Appendix A.2): which query types have across-instance attention:
  ``both`` (inst-inst and kpt-kpt), ``keypoint_only``, ``instance_only``; the other types pass
  the step unchanged.
- ``share_group_attn`` (Appendix A.3): within- and across-instance attention use one attention
  module (each keeps its own add & norm).
- ``queries`` (Table 4a): the queries of a person: ``instance_and_keypoint`` (1 + K),
  ``keypoint_only`` (K; the pose is scored from the mean of its keypoint queries) or
  ``instance_only`` (1 query regressing all K keypoints; it then carries the selected memory
  feature and a position from its reference point, the pose center, as keypoint queries do).
- ``score_from`` (Table 4b): the pose score is read from the ``instance`` query or from the
  ``mean_keypoint`` of the keypoint queries' hidden states.
"""

from dataclasses import dataclass, fields

from grouppose.config import config_key

CHOICES = {
    "self_attn": ("group", "standard", "standard_masked"),
    "group_attn": ("both", "within_only", "across_only", "none"),
    "across_instance": ("both", "keypoint_only", "instance_only"),
    "queries": ("instance_and_keypoint", "keypoint_only", "instance_only"),
    "score_from": ("instance", "mean_keypoint"),
}


@dataclass(frozen=True)
class DecoderVariant:
    """One combination of the ablation switches (see the module docstring)."""

    self_attn: str = "group"
    group_attn: str = "both"
    across_instance: str = "both"
    share_group_attn: bool = False
    queries: str = "instance_and_keypoint"
    score_from: str = "instance"

    def __post_init__(self):
        for name, choices in CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"{config_key(name)}={value!r} is not one of {list(choices)}")
        if not isinstance(self.share_group_attn, bool):
            raise ValueError(f"{config_key('share_group_attn')} must be True or False, got "
                             f"{self.share_group_attn!r}")
        self._check_combination()

    def _require(self, condition: bool, message: str) -> None:
        if not condition:
            raise ValueError(message)

    def _check_combination(self) -> None:
        non_default = [
            config_key(f.name) for f in fields(self)
            if f.name in ("group_attn", "across_instance", "share_group_attn")
            and getattr(self, f.name) != f.default
        ]
        self._require(
            self.self_attn == "group" or not non_default,
            f"{config_key('self_attn')}={self.self_attn!r} has no group self-attentions; "
            f"{', '.join(non_default)} only apply to 'group'",
        )
        self._require(
            not self.share_group_attn or self.group_attn == "both",
            f"{config_key('share_group_attn')}=True needs both group self-attentions, got "
            f"{config_key('group_attn')}={self.group_attn!r}",
        )
        self._require(
            self.across_instance == "both" or self.has_across_instance,
            f"{config_key('across_instance')}={self.across_instance!r} needs an across-instance "
            f"attention, got {config_key('group_attn')}={self.group_attn!r}",
        )
        self._require(
            self.queries != "keypoint_only" or self.score_from == "mean_keypoint",
            f"{config_key('queries')}='keypoint_only' has no instance query to score the pose: "
            f"set {config_key('score_from')} to 'mean_keypoint'",
        )
        self._require(
            self.queries != "instance_only" or self.score_from == "instance",
            f"{config_key('queries')}='instance_only' has no keypoint queries: set "
            f"{config_key('score_from')} to 'instance'",
        )
        self._require(
            self.queries != "instance_only" or not self.has_within_instance,
            f"{config_key('queries')}='instance_only' leaves one query per person, so "
            f"within-instance attention has nothing to attend to: set "
            f"{config_key('group_attn')} to 'across_only' or 'none'",
        )
        self._require(
            self.across_instance == "both" or self.queries == "instance_and_keypoint",
            f"{config_key('across_instance')}={self.across_instance!r} needs both query types, "
            f"got {config_key('queries')}={self.queries!r}",
        )

    @classmethod
    def from_config(cls, group_pose_cfg) -> "DecoderVariant":
        """From ``cfg.MODEL.GROUP_POSE``."""
        return cls(**{f.name: group_pose_cfg[f.name.upper()] for f in fields(cls)})

    def non_default(self) -> list:
        """``KEY=value`` of every switch that differs from the paper's model."""
        return [
            f"{config_key(f.name)}={getattr(self, f.name)!r}" for f in fields(self)
            if getattr(self, f.name) != f.default
        ]

    @property
    def has_within_instance(self) -> bool:
        return self.self_attn == "group" and self.group_attn in ("both", "within_only")

    @property
    def has_across_instance(self) -> bool:
        return self.self_attn == "group" and self.group_attn in ("both", "across_only")

    @property
    def has_instance_query(self) -> bool:
        return self.queries != "keypoint_only"

    @property
    def has_keypoint_queries(self) -> bool:
        return self.queries != "instance_only"

    @property
    def keypoint_slice(self) -> slice:
        """The keypoint queries on the group axis (they follow the instance query)."""
        return slice(int(self.has_instance_query), None)

    @property
    def positioned_slice(self) -> slice:
        """The queries that carry a position from their reference point: the keypoint queries,
        or the instance query when it is the only one. Always the trailing queries of a group."""
        return self.keypoint_slice if self.has_keypoint_queries else slice(0, None)

    @property
    def across_instance_slice(self) -> slice:
        """The query types that attend across instances."""
        if self.across_instance == "keypoint_only":
            return self.keypoint_slice
        if self.across_instance == "instance_only":
            return slice(0, 1)
        return slice(0, None)

    def group_size(self, num_keypoints: int) -> int:
        """Queries per person."""
        return int(self.has_instance_query) + num_keypoints * int(self.has_keypoint_queries)


PAPER_VARIANT = DecoderVariant()  # the paper's model (every switch at its default)
