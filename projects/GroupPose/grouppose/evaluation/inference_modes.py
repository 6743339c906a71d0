"""Inference modes of a Group Pose model, and how closely their poses agree.

A mode is how the same weights are run: the default float32 path (compiled deformable-attention
op, fused CPU paths), bfloat16 / float16 autocast (``MODEL.GROUP_POSE.INFERENCE_PRECISION``),
TF32 on CUDA, and the reference: the pure-PyTorch op without fused paths, in float32, which
computes as the official implementation does. The benchmarks time the modes
(tools/benchmarks/bench_inference.py) and check that each one predicts the reference's poses
(tools/benchmarks/check_inference_modes.py) with ``inference_mode`` and ``pose_agreement``.

A mode is made of the model's own switches, each usable alone: the model's ``inference_dtype``
attribute (read at every forward), ``grouppose.layers.reference_op()`` and
``grouppose.layers.plain_inference()``, and PyTorch's TF32 flags.
"""

import contextlib
from dataclasses import dataclass
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

import torch
from detectron2.structures import Instances
from torch import Tensor, nn

from grouppose.config import INFERENCE_DTYPES
from grouppose.layers import plain_inference, reference_op
from grouppose.modeling.oks import pairwise_keypoint_similarity

__all__ = [
    "DEFAULT_MODES",
    "MODES",
    "Mode",
    "OUT_OF_THE_BOX_MODE",
    "PoseAgreement",
    "REFERENCE_MODE",
    "check_mode",
    "inference_mode",
    "pose_agreement",
]


@dataclass(frozen=True)
class Mode:
    dtype: str  # the arithmetic: fp32 | tf32 | fp16 | bf16
    devices: Tuple[str, ...]
    op: str = "compiled"  # or "reference": run inside grouppose.layers.reference_op()
    plain: bool = False  # run inside grouppose.layers.plain_inference()


MODES: Dict[str, Mode] = {
    "fp32": Mode("fp32", ("cpu", "cuda")),
    "bf16": Mode("bf16", ("cpu", "cuda")),
    "fp16": Mode("fp16", ("cpu", "cuda")),
    "tf32": Mode("tf32", ("cuda",)),
    "reference": Mode("fp32", ("cpu", "cuda"), op="reference", plain=True),
}
DEFAULT_MODES: Dict[str, List[str]] = {
    "cpu": ["fp32", "bf16", "reference"],
    "cuda": ["fp32", "tf32", "fp16", "bf16"],
}
OUT_OF_THE_BOX_MODE = "fp32"  # what the predictor runs with the default config
REFERENCE_MODE = "reference"


def check_mode(name: str, device: torch.device) -> Mode:
    """The mode called ``name``, if it runs on ``device``; else a ValueError that says why."""
    if name not in MODES:
        raise ValueError(f"unknown inference mode '{name}': one of {sorted(MODES)}")
    mode = MODES[name]
    if device.type not in mode.devices:
        raise ValueError(f"inference mode '{name}' is a {'/'.join(mode.devices)} mode, not "
                         f"for {device.type}")
    return mode


@contextlib.contextmanager
def _inference_dtype(model: nn.Module, dtype: Optional[torch.dtype]) -> Iterator[None]:
    """``model`` (a GroupPose) autocasts inference to ``dtype`` (None: float32) in the block."""
    previous, model.inference_dtype = model.inference_dtype, dtype
    try:
        yield
    finally:
        model.inference_dtype = previous


@contextlib.contextmanager
def _tf32() -> Iterator[None]:
    """TF32 CUDA matmuls and cuDNN convolutions in the block (PyTorch's global flags)."""
    backends = (torch.backends.cuda.matmul, torch.backends.cudnn)
    previous = [backend.allow_tf32 for backend in backends]
    try:
        for backend in backends:
            backend.allow_tf32 = True
        yield
    finally:
        for backend, allowed in zip(backends, previous):
            backend.allow_tf32 = allowed


@contextlib.contextmanager
def inference_mode(model: nn.Module, name: str) -> Iterator[None]:
    """Inside the block, ``model`` (a GroupPose) runs the mode called ``name``; everything it
    switches is restored after."""
    mode = check_mode(name, model.device)
    with contextlib.ExitStack() as stack:
        dtype = "fp32" if mode.dtype == "tf32" else mode.dtype
        stack.enter_context(_inference_dtype(model, INFERENCE_DTYPES[dtype]))
        if mode.op == "reference":
            stack.enter_context(reference_op())
        if mode.plain:
            stack.enter_context(plain_inference())
        if mode.dtype == "tf32":
            stack.enter_context(_tf32())
        yield


class PoseAgreement(NamedTuple):
    """Per top pose of the reference, (t,) each: the OKS with its counterpart and the absolute
    change of its score (0 and 1 when the other mode has no pose left for it)."""

    oks: Tensor
    score_change: Tensor


def pose_agreement(
    reference: Instances, other: Instances, sigmas: Tensor, top_k: int, min_score: float = 0.0
) -> PoseAgreement:
    """How closely ``other`` reproduces the best poses of ``reference`` (one image).

    The reference's top poses are its ``top_k`` highest-scoring ones that score at least
    ``min_score``: below a useful score, poses are background hypotheses whose order any
    rounding may change (the AP of each mode accounts for them). In score order, each takes the
    not yet taken pose of ``other`` with the highest OKS; the OKS uses every keypoint and, as
    the object area, the area of the box around the reference pose's keypoints.

    Args:
        reference, other: Detectron2 predictions with ``pred_keypoints`` (n, K, 3) in pixels
            and ``scores`` (n,).
        sigmas: (K,) OKS sigmas.

    Returns:
        the OKS and the score change of each top reference pose and its counterpart (t <=
        top_k poses, in the reference's score order).
    """
    scores, order = reference.scores.sort(descending=True)
    keep = scores[:top_k] >= min_score
    order, scores = order[:top_k][keep], scores[:top_k][keep].float()
    poses = reference.pred_keypoints[order, :, :2].float()
    extent = poses.amax(dim=1) - poses.amin(dim=1)  # (t, 2) width, height of the pose's box
    visible = torch.ones(poses.shape[:2], device=poses.device)
    oks = pairwise_keypoint_similarity(
        other.pred_keypoints[:, :, :2].float(), poses, visible, extent.prod(dim=1),
        sigmas.to(poses.device),
    )  # (n_other, t)
    agreement = torch.zeros(len(order), device=poses.device)
    score_change = torch.ones(len(order), device=poses.device)
    taken = torch.zeros(len(other), dtype=torch.bool, device=poses.device)
    for index in range(len(order)):
        candidates = oks[:, index].masked_fill(taken, -1.0)
        if len(candidates) and candidates.max() >= 0:
            best = candidates.argmax()
            agreement[index], taken[best] = candidates[best], True
            score_change[index] = (other.scores[best].float() - scores[index]).abs()
    return PoseAgreement(agreement, score_change)
