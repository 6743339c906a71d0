"""One-to-one assignment of predicted poses to ground-truth people (Hungarian matching)."""

from typing import Callable, Dict, List, Sequence, Tuple, Union

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from grouppose.modeling.oks import MIN_OKS, as_sigmas, pairwise_keypoint_similarity

# Keeps log() finite in the focal classification cost, as Deformable-DETR-family matchers do.
_LOG_EPS = 1e-8
# Gamma of every focal classification cost and loss (pose and detection), as in Deformable DETR.
FOCAL_GAMMA = 2.0

# Per image (query indices (m,), target indices (m,)), int64 on the CPU, ordered by query index.
Matches = List[Tuple[Tensor, Tensor]]


class NonFiniteCostError(FloatingPointError):
    """A matching cost is NaN or infinite: the predictions it was computed from diverged."""


def optimal_assignment(cost: Tensor) -> Tuple[Tensor, Tensor]:
    """The one-to-one assignment of least total cost (Hungarian algorithm, scipy).

    Args:
        cost: (Q, n) cost of assigning query q to target t.

    Returns:
        (query indices (m,), target indices (m,)), int64 on the CPU, m = min(Q, n), ordered by
        query index.

    Raises:
        NonFiniteCostError when a cost is NaN or infinite (scipy would fail with "matrix
        contains invalid numeric entries").
    """
    cost = cost.float().cpu()
    finite = torch.isfinite(cost)
    if not finite.all():
        raise NonFiniteCostError(
            f"{int((~finite).sum())} of {cost.numel()} matching costs are NaN or infinite"
        )
    query_indices, target_indices = linear_sum_assignment(cost.numpy())
    return (torch.as_tensor(query_indices, dtype=torch.int64),
            torch.as_tensor(target_indices, dtype=torch.int64))


def match_each_image(
    targets: Sequence[Dict[str, Tensor]], target_key: str,
    cost_matrix: Callable[[int, Dict[str, Tensor]], Tensor],
) -> Matches:
    """The optimal assignment of every image of a batch.

    Args:
        targets: B dicts; ``target[target_key]`` holds the image's n people along dim 0.
        cost_matrix: (image index, target) -> (Q, n) matching cost of that image; called only
            for images with people.

    Returns:
        B pairs (query indices (m,), target indices (m,)) (see optimal_assignment), empty for an
        image without people.

    Raises:
        NonFiniteCostError when a cost is NaN or infinite.
    """
    matches = []
    for image, target in enumerate(targets):
        if target[target_key].shape[0] == 0:
            empty = torch.zeros(0, dtype=torch.int64)
            matches.append((empty, empty.clone()))
        else:
            matches.append(optimal_assignment(cost_matrix(image, target)))
    return matches


def focal_class_cost(logits: Tensor, alpha: float, gamma: float = FOCAL_GAMMA) -> Tensor:
    """Cost of calling each query a person: focal loss if positive minus focal loss if negative.

    Args:
        logits: (Q,) person logits.

    Returns:
        (Q,) cost (lower = more person-like).
    """
    prob = logits.sigmoid()
    positive = alpha * (1 - prob) ** gamma * -(prob + _LOG_EPS).log()
    negative = (1 - alpha) * prob**gamma * -(1 - prob + _LOG_EPS).log()
    return positive - negative


def pairwise_keypoint_l1(pred: Tensor, target: Tensor, visible: Tensor) -> Tensor:
    """L1 distance over labeled keypoints, summed over keypoints and x/y.

    Args:
        pred: (Q, K, 2); target: (G, K, 2); visible: (G, K).

    Returns:
        (Q, G).
    """
    distance = (pred[:, None] - target[None]).abs() * visible[None, :, :, None]
    return distance.flatten(2).sum(-1)


class HungarianMatcher(nn.Module):
    """Matches queries to people by minimising a classification + keypoint + OKS cost.

    cost = cost_class * focal class cost + cost_keypoints * visibility-masked L1
           + cost_oks * (1 - OKS), computed per image, solved by scipy's linear_sum_assignment.
    """

    def __init__(
        self,
        *,
        cost_class: float,
        cost_keypoints: float,
        cost_oks: float,
        focal_alpha: float,
        sigmas: Union[Tensor, Sequence[float]],
    ):
        """
        Args:
            cost_class, cost_keypoints, cost_oks: weights of the three costs
                (MODEL.GROUP_POSE.COST_CLASS, COST_KPT_L1, COST_OKS).
            focal_alpha: alpha of the focal class cost (MODEL.GROUP_POSE.FOCAL_ALPHA).
            sigmas: (K,) OKS sigmas (see grouppose.modeling.oks.default_oks_sigmas).
        """
        super().__init__()
        self.cost_class = cost_class
        self.cost_keypoints = cost_keypoints
        self.cost_oks = cost_oks
        self.focal_alpha = focal_alpha
        # A plain tensor (not a buffer): moved to the predictions' device when used, so it works
        # whether or not the matcher is registered in a model, and adds no checkpoint key.
        self.sigmas = as_sigmas(sigmas)

    @torch.no_grad()
    def forward(self, outputs: Dict[str, Tensor], targets: List[Dict[str, Tensor]]) -> Matches:
        """
        Args:
            outputs: `pred_logits` (B, N) and `pred_keypoints` (B, N, K, 2); other keys ignored.
            targets: B dicts with `keypoints` (n, K, 2), `visible` (n, K) bool, `area` (n,).

        Returns:
            B pairs (query indices (m,), target indices (m,)), int64 on the CPU, m = min(N, n),
            ordered by query index.

        Raises:
            NonFiniteCostError when the predictions make a cost NaN or infinite.
        """
        logits = outputs["pred_logits"]
        pred_keypoints = outputs["pred_keypoints"]
        if len(targets) != logits.shape[0]:
            raise ValueError(f"targets has {len(targets)} images, outputs {logits.shape[0]}")
        if pred_keypoints.shape[2] != self.sigmas.numel():
            raise ValueError(f"pred_keypoints has {pred_keypoints.shape[2]} keypoints, sigmas "
                             f"{self.sigmas.numel()}")
        return match_each_image(
            targets, "keypoints",
            lambda image, target: self.cost_matrix(logits[image], pred_keypoints[image], target),
        )

    def cost_matrix(
        self, logits: Tensor, pred_keypoints: Tensor, target: Dict[str, Tensor]
    ) -> Tensor:
        """Matching cost of one image.

        Args:
            logits: (N,); pred_keypoints: (N, K, 2); target: one target dict with n people.

        Returns:
            (N, n) cost.
        """
        visible = target["visible"]
        class_cost = focal_class_cost(logits, self.focal_alpha)[:, None]
        l1_cost = pairwise_keypoint_l1(pred_keypoints, target["keypoints"], visible)
        oks = pairwise_keypoint_similarity(
            pred_keypoints, target["keypoints"], visible, target["area"],
            self.sigmas.to(pred_keypoints.device),
        ).clamp(min=MIN_OKS)
        return (self.cost_class * class_cost + self.cost_keypoints * l1_cost
                + self.cost_oks * (1 - oks))
