"""Hungarian matching of predicted poses to people (grouppose/modeling/matcher.py)."""

import math

import pytest
import torch

from grouppose.modeling.matcher import HungarianMatcher, focal_class_cost
from grouppose.modeling.oks import keypoint_similarity

K = 4
SIGMAS = torch.tensor([0.05, 0.06, 0.07, 0.08])
# The paper's costs and focal alpha (MODEL.GROUP_POSE.COST_*, FOCAL_ALPHA).
COSTS = {"cost_class": 2.0, "cost_keypoints": 10.0, "cost_oks": 4.0, "focal_alpha": 0.25}


def _matcher():
    return HungarianMatcher(**COSTS, sigmas=SIGMAS)


def _target(keypoints, visible=None, area=None):
    keypoints = torch.as_tensor(keypoints, dtype=torch.float32)
    n = keypoints.shape[0]
    return {
        "keypoints": keypoints,
        "visible": torch.ones(n, K, dtype=torch.bool) if visible is None else visible,
        "area": torch.full((n,), 0.05) if area is None else area,
    }


def test_focal_class_cost_formula():
    logit = torch.tensor([0.7])
    p = 1 / (1 + math.exp(-0.7))
    expected = (0.25 * (1 - p) ** 2 * -math.log(p + 1e-8)
                - 0.75 * p**2 * -math.log(1 - p + 1e-8))
    assert focal_class_cost(logit, alpha=0.25).item() == pytest.approx(expected, rel=1e-6)


def test_picks_obvious_assignment():
    generator = torch.Generator().manual_seed(0)
    people = torch.rand(2, K, 2, generator=generator)
    pred = torch.rand(1, 5, K, 2, generator=generator)
    pred[0, 4] = people[0] + 0.002
    pred[0, 1] = people[1] - 0.002
    outputs = {"pred_logits": torch.zeros(1, 5), "pred_keypoints": pred}
    (query_index, target_index), = _matcher()(outputs, [_target(people)])
    # Sorted by query index, as the official (linear_sum_assignment row order).
    assert query_index.tolist() == [1, 4] and target_index.tolist() == [1, 0]
    assert query_index.dtype == target_index.dtype == torch.int64


def test_class_cost_breaks_keypoint_tie():
    people = torch.rand(1, K, 2)
    pred = people.expand(3, K, 2).clone()[None]
    outputs = {"pred_logits": torch.tensor([[-2.0, 3.0, 0.0]]), "pred_keypoints": pred}
    (query_index, _), = _matcher()(outputs, [_target(people)])
    assert query_index.tolist() == [1]


def test_unlabeled_keypoints_do_not_count():
    people = torch.tensor([[[0.2, 0.2], [0.3, 0.3], [0.4, 0.4], [0.5, 0.5]]])
    visible = torch.tensor([[True, True, True, False]])
    pred = people.expand(2, K, 2).clone()[None]
    pred[0, 0, 3] = 0.95  # query 0 is wrong only on the unlabeled keypoint
    pred[0, 1, 0] += 0.05  # query 1 is off on a labeled one
    outputs = {"pred_logits": torch.zeros(1, 2), "pred_keypoints": pred}
    (query_index, _), = _matcher()(outputs, [_target(people, visible)])
    assert query_index.tolist() == [0]


def test_cost_matrix_formula():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(6, generator=generator)
    pred = torch.rand(6, K, 2, generator=generator)
    target = _target(torch.rand(3, K, 2, generator=generator),
                     torch.rand(3, K, generator=generator) > 0.3,
                     torch.rand(3, generator=generator) * 0.1 + 0.01)
    matcher = _matcher()
    cost = matcher.cost_matrix(logits, pred, target)
    for q in range(6):
        for g in range(3):
            l1 = ((pred[q] - target["keypoints"][g]).abs()
                  * target["visible"][g, :, None]).sum()
            oks = keypoint_similarity(pred[q:q + 1], target["keypoints"][g:g + 1],
                                      target["visible"][g:g + 1], target["area"][g:g + 1], SIGMAS)
            expected = (2 * focal_class_cost(logits[q:q + 1], 0.25) + 10 * l1
                        + 4 * (1 - oks.clamp(min=1e-6)))
            assert cost[q, g].item() == pytest.approx(expected.item(), rel=1e-5)


def test_image_without_people_and_more_people_than_queries():
    outputs = {"pred_logits": torch.zeros(2, 3), "pred_keypoints": torch.rand(2, 3, K, 2)}
    targets = [_target(torch.zeros(0, K, 2)), _target(torch.rand(5, K, 2))]
    (empty_q, empty_t), (query_index, target_index) = _matcher()(
        outputs, targets)
    assert empty_q.numel() == empty_t.numel() == 0 and empty_q.dtype == torch.int64
    assert query_index.tolist() == [0, 1, 2] and len(set(target_index.tolist())) == 3


def test_rejects_mismatched_inputs():
    matcher = _matcher()
    outputs = {"pred_logits": torch.zeros(1, 3), "pred_keypoints": torch.rand(1, 3, K + 1, 2)}
    with pytest.raises(ValueError, match="keypoints"):
        matcher(outputs, [_target(torch.rand(1, K, 2))])
    outputs = {"pred_logits": torch.zeros(2, 3), "pred_keypoints": torch.rand(2, 3, K, 2)}
    with pytest.raises(ValueError, match="images"):
        matcher(outputs, [_target(torch.rand(1, K, 2))])
