"""Object Keypoint Similarity (OKS) as Group Pose's matcher and loss compute it.

OKS = sum over labeled keypoints k of exp(-d_k^2 / (2 * area * (2 * sigma_k)^2))
      / (number of labeled keypoints + 1e-6)

Distances and areas are in image-normalised units (x / W, y / H, area / (W * H)), as in the
official implementation. On a non-square image this makes the similarity anisotropic: the same
pixel offset counts more along the shorter side. That is deliberate, for parity with the official
training; COCO evaluation itself computes OKS in pixels and does not use this module.
"""

from typing import List, Optional, Sequence, Tuple, Union

import torch
from detectron2.data import MetadataCatalog
from torch import Tensor

# Per-keypoint standard deviations from the COCO keypoint evaluation (already divided by 10).
COCO_OKS_SIGMAS = tuple(
    s / 10.0
    for s in (.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89)
)
# CrowdPose: 12 body joints in COCO order without the face, then head top and neck.
CROWDPOSE_OKS_SIGMAS = tuple(
    s / 10.0 for s in (.79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89, .79, .79)
)

# Keeps 0/0 out of the similarity when a person has an area of zero (degenerate annotation):
# such a person then scores 1 for exactly-hit keypoints and 0 otherwise instead of NaN. Any
# real person area (even 1 pixel on a 2000 x 2000 image, 2.5e-7) is far above it, so results
# on valid data are unchanged.
_MIN_AREA = 1e-12
# Added to the number of labeled keypoints, as the official code does.
_VISIBLE_COUNT_EPS = 1e-6
# The official OKS loss and OKS matching cost clamp the similarity to >= this before taking
# 1 - OKS.
MIN_OKS = 1e-6


def default_oks_sigmas(num_keypoints: int) -> Tensor:
    """Standard OKS sigmas for a keypoint count: COCO for 17, CrowdPose for 14.

    Returns:
        (K,) float32 tensor.
    """
    if num_keypoints == len(COCO_OKS_SIGMAS):
        return torch.tensor(COCO_OKS_SIGMAS, dtype=torch.float32)
    if num_keypoints == len(CROWDPOSE_OKS_SIGMAS):
        return torch.tensor(CROWDPOSE_OKS_SIGMAS, dtype=torch.float32)
    raise ValueError(
        f"num_keypoints={num_keypoints}: no standard OKS sigmas (known: 17 = COCO, "
        "14 = CrowdPose); give the per-keypoint sigmas explicitly"
    )


def as_sigmas(sigmas: Union[Tensor, Sequence[float]]) -> Tensor:
    """Validate per-keypoint sigmas (K positive numbers) and return them as a (K,) float32 tensor.
    """
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).detach().clone()
    if sigmas.dim() != 1 or sigmas.numel() == 0:
        raise ValueError(
            f"sigmas must be a non-empty 1-d sequence, got shape {tuple(sigmas.shape)}"
        )
    if not bool((sigmas > 0).all()):
        raise ValueError("sigmas must all be > 0")
    return sigmas


def _metadata_sigmas(dataset_names: Sequence[str]) -> Tuple[Optional[List[float]], str]:
    """The ``kpt_oks_sigmas`` of the first of ``dataset_names`` that has them, and where they
    come from."""
    for name in dataset_names:
        sigmas = MetadataCatalog.get(name).get("kpt_oks_sigmas", None)
        if sigmas is not None:
            return list(sigmas), f"the kpt_oks_sigmas of dataset '{name}'"
    return None, ""


def oks_sigmas(
    num_keypoints: int, sigmas: Sequence[float] = (), dataset_names: Sequence[str] = (),
    source: str = "the OKS sigmas",
) -> List[float]:
    """The K = ``num_keypoints`` OKS sigmas of training and evaluation: ``sigmas`` when given,
    else the ``kpt_oks_sigmas`` metadata of the first of ``dataset_names`` that has them, else
    the standard sigmas for K (``default_oks_sigmas``, as float32 values). ``source`` names
    ``sigmas`` in errors.

    Returns:
        K positive numbers, as given (the evaluators compute in float64 with them).

    Raises:
        ValueError when there are not K of them, when one is not > 0, or when none are given
        and K has no standard sigmas.
    """
    given, found = list(sigmas), source
    if not given:
        given, found = _metadata_sigmas(dataset_names)
    if given is None:
        try:
            return default_oks_sigmas(num_keypoints).tolist()
        except ValueError as e:
            raise ValueError(f"{e}: set {source} or the dataset metadata's kpt_oks_sigmas") from e
    if len(given) != num_keypoints:
        raise ValueError(f"{found} has {len(given)} values but there are {num_keypoints} keypoints")
    as_sigmas(given)  # validates: positive numbers
    return given


def _keypoint_similarity(
    pred: Tensor, target: Tensor, visible: Tensor, area: Tensor, sigmas: Tensor
) -> Tensor:
    """OKS of broadcastable pose tensors.

    Args:
        pred: (..., K, 2) predicted xy, normalised.
        target: (..., K, 2) target xy, normalised.
        visible: (..., K) bool or {0, 1}: which target keypoints are labeled.
        area: (...) target person area / (W * H).
        sigmas: (K,).

    Returns:
        (...) OKS in [0, 1), broadcast over the leading dimensions of the inputs.
    """
    squared_distance = ((pred - target) ** 2).sum(-1)
    variances = (2 * sigmas) ** 2
    scale = 2 * area.clamp(min=_MIN_AREA).unsqueeze(-1) * variances
    visible = visible.to(squared_distance.dtype)
    per_keypoint = torch.exp(-squared_distance / scale) * visible
    return per_keypoint.sum(-1) / (visible.sum(-1) + _VISIBLE_COUNT_EPS)


def keypoint_similarity(
    pred: Tensor, target: Tensor, visible: Tensor, area: Tensor, sigmas: Tensor
) -> Tensor:
    """OKS of matched pairs: pred[i] against target[i].

    Args:
        pred: (n, K, 2); target: (n, K, 2); visible: (n, K); area: (n,); sigmas: (K,).

    Returns:
        (n,) OKS.
    """
    return _keypoint_similarity(pred, target, visible, area, sigmas)


def pairwise_keypoint_similarity(
    pred: Tensor, target: Tensor, visible: Tensor, area: Tensor, sigmas: Tensor
) -> Tensor:
    """OKS of every prediction against every target.

    Args:
        pred: (Q, K, 2); target: (G, K, 2); visible: (G, K); area: (G,); sigmas: (K,).

    Returns:
        (Q, G) OKS; entry (q, g) compares pred[q] with target[g].
    """
    return _keypoint_similarity(pred[:, None], target[None], visible[None], area[None], sigmas)
