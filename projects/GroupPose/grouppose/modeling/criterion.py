"""Group Pose training losses: focal classification, masked keypoint L1 and OKS, after matching.

Loss names (unweighted): `loss_cls`, `loss_keypoints`, `loss_oks` for the final decoder layer,
the same with suffix `_{i}` for earlier decoder layer i (`aux_outputs[i]`) and `_interm` for the
encoder (two-stage) prediction. Each set of predictions gets its own Hungarian matching. With
the keypoint confidence head (grouppose.modeling.keypoint_confidence), `loss_kpt_conf` too, for
the decoder layers only.
"""

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
from detectron2.config import CfgNode
from detectron2.utils.events import get_event_storage
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from grouppose.modeling.keypoint_confidence import (
    CONFIDENCE_LOSS,
    keypoint_confidence_loss,
    keypoint_confidence_target,
)
from grouppose.modeling.matcher import FOCAL_GAMMA, HungarianMatcher, Matches, NonFiniteCostError
from grouppose.modeling.oks import MIN_OKS, as_sigmas, keypoint_similarity, oks_sigmas

LOSS_NAMES = ("loss_cls", "loss_keypoints", "loss_oks")
INTERM_SUFFIX = "_interm"
# The decoder outputs' (B, N, K) keypoint confidence logits, with the confidence head.
CONFIDENCE_KEY = "pred_keypoint_confidence"

NamedPredictions = List[Tuple[str, Mapping[str, Tensor]]]

DIVERGENCE_ADVICE = (
    "Training stopped before the optimizer step; resume from the last checkpoint with --resume "
    "after fixing the cause (e.g. a lower SOLVER.BASE_LR or SOLVER.CLIP_GRADIENTS)."
)


class NonFinitePredictionError(FloatingPointError):
    """Training diverged: predictions, and so their matching costs, are NaN or infinite."""


def describe_non_finite(predictions: Mapping[str, object]) -> str:
    """E.g. "pred_keypoints has 340 of 340 values NaN/inf" for the tensors of ``predictions``
    that are not finite; "finite predictions, but too large" when all are finite."""
    tensors = {name: t for name, t in predictions.items() if isinstance(t, Tensor)}
    counts = {name: int((~torch.isfinite(t)).sum()) for name, t in tensors.items()}
    bad = [f"{name} has {count} of {tensors[name].numel()} values NaN/inf"
           for name, count in counts.items() if count]
    return ", ".join(bad) or "finite predictions, but too large"


def match_each(
    named_predictions: NamedPredictions, match: Callable[[Mapping[str, Tensor]], Matches]
) -> Tuple[Dict[str, Matches], List[str]]:
    """Match every named set of predictions.

    Returns:
        the matches by name, and descriptions of the sets whose matching cost was not finite
        (reported, not raised, so that ``num_people_across_workers`` stops every worker).
    """
    matches, diverged = {}, []
    for name, predictions in named_predictions:
        try:
            matches[name] = match(predictions)
        except NonFiniteCostError:
            diverged.append(f"{name} ({describe_non_finite(predictions)})")
    return matches, diverged


def matched_queries(matches: Matches, device: torch.device) -> Tuple[Tensor, Tensor]:
    """(batch indices (M,), query indices (M,)) of the M matched queries of a batch, on
    ``device``: ``predictions[batch, query]`` picks their rows of a (B, N, ...) tensor."""
    batch_index = torch.cat([
        torch.full_like(queries, image) for image, (queries, _) in enumerate(matches)
    ]).to(device)
    query_index = torch.cat([queries for queries, _ in matches]).to(device)
    return batch_index, query_index


def matched_targets(
    targets: List[Dict[str, Tensor]], matches: Matches, key: str, device: torch.device
) -> Tensor:
    """(M, ...) ``target[key]`` of the person each matched query is assigned to, in the order of
    ``matched_queries``, on ``device``."""
    return torch.cat([
        target[key][people.to(target[key].device)]
        for target, (_, people) in zip(targets, matches)
    ]).to(device)


def focal_classification_loss(
    logits: Tensor, batch_index: Tensor, query_index: Tensor, alpha: float
) -> Tensor:
    """Sigmoid focal loss of every query's (B, N) person logit, summed; the queries at
    (batch_index, query_index) are persons. (The official averages over queries, sums over
    images and multiplies by the number of queries, which is this plain sum.)"""
    is_person = torch.zeros_like(logits)
    is_person[batch_index, query_index] = 1
    return sigmoid_focal_loss(logits, is_person, alpha=alpha, gamma=FOCAL_GAMMA).sum()


def _training_iteration() -> str:
    try:
        return f" at iteration {get_event_storage().iter}"
    except AssertionError:  # not called by a trainer
        return ""


def build_targets(
    keypoints: Tensor, area: Tensor, image_size: Tuple[int, int]
) -> Dict[str, Tensor]:
    """Convert one image's people from Detectron2 pixel units to the criterion's target format.

    Args:
        keypoints: (n, K, 3) x, y in pixels of the unpadded input image and v in {0, 1, 2}
            (0 = unlabeled), as in Detectron2's `gt_keypoints.tensor`.
        area: (n,) person area in pixels of that same image.
        image_size: (H, W) of the unpadded input image.

    Returns:
        dict with `keypoints` (n, K, 2) xy / (W, H) (unlabeled keypoints at 0, as the official
        data pipeline stores them), `visible` (n, K) bool (v > 0: labeled, the keypoints the
        keypoint losses train), `area` (n,) area / (W * H) and `confidence` (n, K) float, the
        keypoint confidence head's target (1 where v = 2, see keypoint_confidence_target).
    """
    if keypoints.dim() != 3 or keypoints.shape[-1] != 3:
        raise ValueError(f"keypoints must be (n, K, 3), got {tuple(keypoints.shape)}")
    if area.shape != keypoints.shape[:1]:
        raise ValueError(f"area must be ({keypoints.shape[0]},), got {tuple(area.shape)}")
    height, width = image_size
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size must be positive (H, W), got {image_size}")
    keypoints = keypoints.float()
    visible = keypoints[..., 2] > 0
    scale = keypoints.new_tensor([width, height])
    xy = torch.where(visible[..., None], keypoints[..., :2] / scale, keypoints.new_zeros(()))
    return {
        "keypoints": xy, "visible": visible, "area": area.float() / (width * height),
        "confidence": keypoint_confidence_target(keypoints[..., 2]),
    }


def expand_weight_dict(
    base_weights: Mapping[str, float], num_aux_outputs: int, interm_loss_weight: float
) -> Dict[str, float]:
    """Weights for every returned loss name: the base names plus `_{i}` copies and `_interm`
    copies multiplied by ``interm_loss_weight``."""
    suffixes = ["", *(f"_{i}" for i in range(num_aux_outputs))]
    weights = {name + suffix: weight
               for suffix in suffixes for name, weight in base_weights.items()}
    weights.update({name + INTERM_SUFFIX: weight * interm_loss_weight
                    for name, weight in base_weights.items()})
    return weights


# Set by ``step_normaliser``: the loss normaliser of the whole optimizer step, None = the batch's.
_STEP_NORMALISER: ContextVar[Optional[float]] = ContextVar("step_normaliser", default=None)


@contextmanager
def step_normaliser(people_per_worker: float) -> Iterator[None]:
    """Normalise the losses computed in the block by ``max(people_per_worker, 1)`` instead of
    by their own batch's people: with gradient accumulation, every micro-batch of an optimizer
    step shares the normaliser of the whole step (grouppose.engine.accumulation)."""
    token = _STEP_NORMALISER.set(max(people_per_worker, 1.0))
    try:
        yield
    finally:
        _STEP_NORMALISER.reset(token)


def num_people_across_workers(
    targets: List[Dict[str, Tensor]], device: torch.device, diverged: Sequence[str] = ()
) -> float:
    """Average number of people per worker, at least 1 (the loss normaliser); inside
    ``step_normaliser``, that of the whole optimizer step instead.

    Averaging (all-reduce sum / world size) keeps every worker's losses on the same scale, as the
    official DETR-family training does. The same all-reduce tells every worker whether any
    worker's predictions diverged, so that all stop together.

    Args:
        diverged: descriptions of this worker's predictions whose matching cost is not finite
            (see ``match_each``).

    Raises:
        NonFinitePredictionError on every worker when any worker reports ``diverged``.
    """
    people = float(sum(t["keypoints"].shape[0] for t in targets))
    values = torch.tensor([people, float(bool(diverged))], dtype=torch.float32, device=device)
    world_size = 1
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        world_size = dist.get_world_size()
        dist.all_reduce(values)
    count, diverged_workers = values.cpu().tolist()
    if diverged_workers:
        others = int(diverged_workers) - bool(diverged)
        where = "; ".join(diverged) or "on another worker"
        if diverged and others:
            where += f" (and on {others} other worker(s))"
        raise NonFinitePredictionError(
            f"Non-finite predictions{_training_iteration()}: {where}. {DIVERGENCE_ADVICE}"
        )
    step = _STEP_NORMALISER.get()
    return max(count / world_size, 1.0) if step is None else step


def output_name(suffix: str) -> str:
    """The prediction a loss-name suffix stands for, in words, for messages."""
    if suffix == "":
        return "the last decoder layer's outputs"
    if suffix == INTERM_SUFFIX:
        return "the encoder's (two-stage) interm_outputs"
    return f"decoder aux_outputs[{suffix[1:]}]"


class SetCriterion(nn.Module):
    """Group Pose losses for the final, every auxiliary and the encoder prediction."""

    def __init__(
        self,
        *,
        matcher: HungarianMatcher,
        sigmas: Union[Tensor, Sequence[float]],
        focal_alpha: float,
        weight_dict: Mapping[str, float],
        num_aux_outputs: int,
        interm_loss_weight: float,
        keypoint_confidence_weight: Optional[float] = None,
    ):
        """
        Args:
            matcher: assigns queries to people, called once per set of predictions.
            sigmas: (K,) OKS sigmas (see grouppose.modeling.oks.oks_sigmas).
            focal_alpha: alpha of the sigmoid focal classification loss.
            weight_dict: weights of the LOSS_NAMES `loss_cls`, `loss_keypoints`, `loss_oks` (all
                three). `self.weight_dict` repeats them for every suffix.
            num_aux_outputs: number of earlier decoder layers in `aux_outputs`
                (decoder layers - 1).
            interm_loss_weight: multiplies the weights of the encoder's (two-stage) `_interm`
                losses.
            keypoint_confidence_weight: the weight of `loss_kpt_conf` (and its `_{i}` copies),
                which the decoder outputs' CONFIDENCE_KEY logits then need; None: no such loss.
        """
        super().__init__()
        base_weights = dict(weight_dict)
        if set(base_weights) != set(LOSS_NAMES):
            raise ValueError(f"weight_dict must have exactly the keys "
                             f"{sorted(LOSS_NAMES)}, got {sorted(base_weights)}")
        if num_aux_outputs < 0:
            raise ValueError(f"num_aux_outputs must be >= 0, got {num_aux_outputs}")
        sigmas = as_sigmas(sigmas)
        if not torch.equal(sigmas, matcher.sigmas):
            raise ValueError("sigmas differ from the matcher's sigmas: matching and loss must use "
                             "the same OKS")
        self.matcher = matcher
        self.focal_alpha = focal_alpha
        self.num_aux_outputs = num_aux_outputs
        self.weight_dict = expand_weight_dict(base_weights, num_aux_outputs, interm_loss_weight)
        self.keypoint_confidence = keypoint_confidence_weight is not None
        if self.keypoint_confidence:
            self.weight_dict.update({
                CONFIDENCE_LOSS + suffix: keypoint_confidence_weight
                for suffix in ["", *(f"_{i}" for i in range(num_aux_outputs))]
            })
        self.sigmas = sigmas  # moved to the predictions' device when used, as in the matcher

    def named_predictions(self, outputs: Dict) -> List[Tuple[str, Dict[str, Tensor]]]:
        """(loss-name suffix, predictions) for the final, auxiliary and encoder outputs."""
        aux_outputs = outputs.get("aux_outputs", [])
        if len(aux_outputs) != self.num_aux_outputs:
            raise ValueError(f"outputs has {len(aux_outputs)} aux_outputs, the criterion was built "
                             f"with num_aux_outputs={self.num_aux_outputs}")
        named = [("", outputs)]
        named += [(f"_{i}", aux) for i, aux in enumerate(aux_outputs)]
        for suffix, predictions in named:
            if self.keypoint_confidence and CONFIDENCE_KEY not in predictions:
                raise ValueError(f"{output_name(suffix)} lack '{CONFIDENCE_KEY}', which the "
                                 f"criterion's keypoint_confidence_weight needs")
        if "interm_outputs" in outputs:
            named.append((INTERM_SUFFIX, outputs["interm_outputs"]))
        return named

    def forward(self, outputs: Dict, targets: List[Dict[str, Tensor]]) -> Dict[str, Tensor]:
        """
        Args:
            outputs: `pred_logits` (B, N), `pred_keypoints` (B, N, K, 2), `aux_outputs` (list of
                dicts with those keys), optional `interm_outputs` (dict with those keys); with
                keypoint confidence, the decoder outputs also have CONFIDENCE_KEY (B, N, K).
            targets: B dicts with `keypoints` (n, K, 2), `visible` (n, K) bool, `area` (n,)
                and, with keypoint confidence, `confidence` (n, K) (see build_targets).

        Returns:
            unweighted scalar losses by name (see the module docstring).

        Raises:
            NonFinitePredictionError naming the outputs when predictions diverged.
        """
        named = self.named_predictions(outputs)
        matches, diverged = match_each(
            [(output_name(suffix), predictions) for suffix, predictions in named],
            lambda predictions: self.matcher(predictions, targets),
        )
        num_people = num_people_across_workers(targets, outputs["pred_logits"].device, diverged)
        losses = {}
        for suffix, predictions in named:
            image_matches = matches[output_name(suffix)]
            for name, value in self.losses(predictions, targets, image_matches, num_people).items():
                losses[name + suffix] = value
        return losses

    def losses(
        self, predictions: Dict[str, Tensor], targets: List[Dict[str, Tensor]],
        matches: Matches, num_people: float,
    ) -> Dict[str, Tensor]:
        """Unsuffixed losses of one set of predictions given its matching."""
        logits = predictions["pred_logits"]
        batch_index, query_index = matched_queries(matches, logits.device)
        focal = focal_classification_loss(logits, batch_index, query_index, self.focal_alpha)
        matched = {key: matched_targets(targets, matches, key, logits.device)
                   for key in ("keypoints", "visible", "area")}
        pred = predictions["pred_keypoints"][batch_index, query_index]
        l1 = (pred - matched["keypoints"]).abs() * matched["visible"][..., None]
        oks = keypoint_similarity(
            pred, matched["keypoints"], matched["visible"], matched["area"],
            self.sigmas.to(pred.device),
        ).clamp(min=MIN_OKS)
        losses = {
            "loss_cls": focal / num_people,
            "loss_keypoints": l1.sum() / num_people,
            "loss_oks": (1 - oks).sum() / num_people,
        }
        if self.keypoint_confidence and CONFIDENCE_KEY in predictions:
            losses[CONFIDENCE_LOSS] = keypoint_confidence_loss(
                predictions[CONFIDENCE_KEY][batch_index, query_index],
                matched_targets(targets, matches, "confidence", logits.device), num_people,
            )
        return losses


def resolve_oks_sigmas(cfg: CfgNode) -> Tensor:
    """The (K,) training OKS sigmas: ``oks_sigmas`` of MODEL.GROUP_POSE.OKS_SIGMAS, else of
    DATASETS.TRAIN[0]'s, else of DATASETS.TEST[0]'s metadata, else the standard ones (see
    add_grouppose_config)."""
    first_datasets = [names[0] for names in (cfg.DATASETS.TRAIN, cfg.DATASETS.TEST) if len(names)]
    return as_sigmas(oks_sigmas(
        cfg.MODEL.GROUP_POSE.NUM_KEYPOINTS, cfg.MODEL.GROUP_POSE.OKS_SIGMAS, first_datasets,
        source="MODEL.GROUP_POSE.OKS_SIGMAS",
    ))


def build_criterion(cfg: CfgNode) -> SetCriterion:
    """``make_criterion`` of ``cfg.MODEL.GROUP_POSE``."""
    gp = cfg.MODEL.GROUP_POSE
    return make_criterion(
        sigmas=resolve_oks_sigmas(cfg), num_decoder_layers=gp.DEC_LAYERS, aux_loss=gp.AUX_LOSS,
        focal_alpha=gp.FOCAL_ALPHA, cls_weight=gp.CLS_WEIGHT, keypoint_weight=gp.KPT_L1_WEIGHT,
        oks_weight=gp.OKS_WEIGHT, cost_class=gp.COST_CLASS, cost_keypoints=gp.COST_KPT_L1,
        cost_oks=gp.COST_OKS, interm_loss_weight=gp.INTERM_LOSS_WEIGHT,
        keypoint_confidence_weight=gp.KPT_CONF_WEIGHT if gp.KEYPOINT_CONFIDENCE else None,
    )


def make_criterion(
    *,
    sigmas: Union[Tensor, Sequence[float]],
    num_decoder_layers: int,
    aux_loss: bool,
    focal_alpha: float,
    cls_weight: float,
    keypoint_weight: float,
    oks_weight: float,
    cost_class: float,
    cost_keypoints: float,
    cost_oks: float,
    interm_loss_weight: float,
    keypoint_confidence_weight: Optional[float] = None,
) -> SetCriterion:
    """The Group Pose losses and their Hungarian matcher; the arguments are the
    MODEL.GROUP_POSE keys FOCAL_ALPHA, CLS_WEIGHT, KPT_L1_WEIGHT, OKS_WEIGHT, COST_CLASS,
    COST_KPT_L1, COST_OKS, INTERM_LOSS_WEIGHT, DEC_LAYERS and AUX_LOSS (every decoder layer
    supervised), KPT_CONF_WEIGHT where KEYPOINT_CONFIDENCE is on (None: no confidence loss)
    and the (K,) OKS sigmas."""
    matcher = HungarianMatcher(
        cost_class=cost_class, cost_keypoints=cost_keypoints, cost_oks=cost_oks,
        focal_alpha=focal_alpha, sigmas=sigmas,
    )
    return SetCriterion(
        matcher=matcher, sigmas=sigmas, focal_alpha=focal_alpha,
        weight_dict={
            "loss_cls": cls_weight, "loss_keypoints": keypoint_weight, "loss_oks": oks_weight,
        },
        num_aux_outputs=num_decoder_layers - 1 if aux_loss else 0,
        interm_loss_weight=interm_loss_weight,
        keypoint_confidence_weight=keypoint_confidence_weight,
    )
