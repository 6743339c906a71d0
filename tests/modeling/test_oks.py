"""OKS similarity as the official Group Pose matcher and loss compute it
(grouppose/modeling/oks.py)."""

import math

import pytest
import torch

from grouppose.modeling.oks import (
    COCO_OKS_SIGMAS,
    CROWDPOSE_OKS_SIGMAS,
    as_sigmas,
    default_oks_sigmas,
    keypoint_similarity,
    pairwise_keypoint_similarity,
)


def _random_people(generator, n, num_keypoints=5):
    keypoints = torch.rand(n, num_keypoints, 2, generator=generator)
    visible = torch.rand(n, num_keypoints, generator=generator) > 0.3
    area = torch.rand(n, generator=generator) * 0.2 + 0.01
    return keypoints, visible, area


def test_default_sigmas():
    assert default_oks_sigmas(17).tolist() == pytest.approx([s / 10 for s in (
        .26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89)])
    assert default_oks_sigmas(14).tolist() == pytest.approx([s / 10 for s in (
        .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89, .79, .79)])
    assert len(COCO_OKS_SIGMAS) == 17 and len(CROWDPOSE_OKS_SIGMAS) == 14
    with pytest.raises(ValueError, match="num_keypoints=5"):
        default_oks_sigmas(5)


def test_as_sigmas_rejects_bad_input():
    with pytest.raises(ValueError, match="1-d"):
        as_sigmas([[0.1, 0.2]])
    with pytest.raises(ValueError, match="> 0"):
        as_sigmas([0.1, 0.0])


def test_identical_points_give_one():
    generator = torch.Generator().manual_seed(0)
    keypoints, visible, area = _random_people(generator, 4)
    visible[:, 0] = True
    oks = keypoint_similarity(keypoints, keypoints, visible, area, torch.full((5,), 0.05))
    # n / (n + 1e-6), the official epsilon on the labeled count.
    expected = visible.sum(-1) / (visible.sum(-1) + 1e-6)
    torch.testing.assert_close(oks, expected.float())
    assert torch.allclose(oks, torch.ones(4), atol=1e-6)


def test_single_keypoint_formula():
    # One labeled keypoint at distance d: OKS = exp(-d^2 / (2 * area * (2 sigma)^2)) / (1 + 1e-6).
    pred = torch.tensor([[[0.5, 0.5], [0.9, 0.9]]])
    target = torch.tensor([[[0.53, 0.46], [0.1, 0.1]]])
    visible = torch.tensor([[True, False]])
    area, sigma = 0.04, 0.079
    oks = keypoint_similarity(pred, target, visible, torch.tensor([area]),
                              torch.tensor([sigma, 1.0]))
    expected = math.exp(-(0.03**2 + 0.04**2) / (2 * area * (2 * sigma) ** 2)) / (1 + 1e-6)
    assert oks.item() == pytest.approx(expected, rel=1e-5)


def test_unlabeled_keypoints_are_ignored():
    generator = torch.Generator().manual_seed(1)
    pred, visible, area = _random_people(generator, 3)
    target = torch.rand(3, 5, 2, generator=generator)
    visible[:, 0] = True
    visible[:, 1] = False
    sigmas = torch.full((5,), 0.07)
    moved = target.clone()
    moved[:, 1] += 0.4  # only the unlabeled keypoint moves
    torch.testing.assert_close(keypoint_similarity(pred, target, visible, area, sigmas),
                               keypoint_similarity(pred, moved, visible, area, sigmas))
    moved[:, 0] += 0.4  # a labeled keypoint moves: the similarity must change
    assert not torch.allclose(keypoint_similarity(pred, target, visible, area, sigmas),
                              keypoint_similarity(pred, moved, visible, area, sigmas))


def test_no_labeled_keypoint_gives_zero():
    pred = torch.rand(2, 5, 2)
    oks = keypoint_similarity(pred, pred + 0.1, torch.zeros(2, 5, dtype=torch.bool),
                              torch.tensor([0.1, 0.2]), torch.full((5,), 0.07))
    assert torch.equal(oks, torch.zeros(2))


def test_zero_area_stays_finite():
    pred = torch.tensor([[[0.5, 0.5], [0.2, 0.2]]])
    target = torch.tensor([[[0.5, 0.5], [0.3, 0.2]]])
    oks = keypoint_similarity(pred, target, torch.ones(1, 2, dtype=torch.bool), torch.zeros(1),
                              torch.full((2,), 0.07))
    assert torch.isfinite(oks).all()
    assert oks.item() == pytest.approx(0.5, rel=1e-5)  # the exact hit counts, the miss does not


def test_anisotropic_on_non_square_images():
    # A 40-pixel offset on a 400 (W) x 200 (H) image: 0.1 of the width but 0.2 of the height,
    # so the official normalised OKS punishes the vertical offset more.
    width, height = 400.0, 200.0
    area = torch.tensor([60.0 * 80.0 / (width * height)])
    sigmas = torch.tensor([0.079])
    visible = torch.ones(1, 1, dtype=torch.bool)
    target = torch.tensor([[[0.5, 0.5]]])
    horizontal = keypoint_similarity(target + torch.tensor([40 / width, 0.0]), target, visible,
                                     area, sigmas)
    vertical = keypoint_similarity(target + torch.tensor([0.0, 40 / height]), target, visible,
                                   area, sigmas)
    variance = 2 * area.item() * (2 * 0.079) ** 2
    assert horizontal.item() == pytest.approx(math.exp(-(40 / width) ** 2 / variance), rel=1e-5)
    assert vertical.item() == pytest.approx(math.exp(-(40 / height) ** 2 / variance), rel=1e-5)
    assert vertical.item() < horizontal.item()


def test_pairwise_matches_elementwise():
    generator = torch.Generator().manual_seed(2)
    pred = torch.rand(6, 5, 2, generator=generator)
    target, visible, area = _random_people(generator, 3)
    sigmas = torch.rand(5, generator=generator) * 0.1 + 0.02
    pairwise = pairwise_keypoint_similarity(pred, target, visible, area, sigmas)
    assert pairwise.shape == (6, 3)
    for g in range(3):
        elementwise = keypoint_similarity(pred, target[g].expand(6, 5, 2),
                                          visible[g].expand(6, 5), area[g].expand(6), sigmas)
        torch.testing.assert_close(pairwise[:, g], elementwise)
