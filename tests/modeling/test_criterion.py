"""Group Pose losses (grouppose/modeling/criterion.py) against the official implementation's
numbers."""

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from grouppose.modeling.criterion import (
    NonFinitePredictionError,
    SetCriterion,
    build_targets,
    num_people_across_workers,
)
from grouppose.modeling.matcher import HungarianMatcher, NonFiniteCostError, optimal_assignment
from grouppose.modeling.oks import default_oks_sigmas

REL_TOL = 1e-4


def _official_name(name):
    """Official loss names call the classification loss `loss_ce`; ours `loss_cls`."""
    return name.replace("loss_cls", "loss_ce", 1)


def _official_predictions_to_ours(predictions, num_keypoints):
    """Official (B, N, 2) logits and (B, N, 3K or 2K) `[x1, y1, ..., v...]` -> our layout."""
    keypoints = predictions["pred_keypoints"][..., : 2 * num_keypoints]
    return {"pred_logits": predictions["pred_logits"][..., 1],
            "pred_keypoints": keypoints.reshape(*keypoints.shape[:2], num_keypoints, 2)}


def _official_outputs_to_ours(outputs, num_keypoints):
    ours = _official_predictions_to_ours(outputs, num_keypoints)
    ours["aux_outputs"] = [_official_predictions_to_ours(aux, num_keypoints)
                           for aux in outputs["aux_outputs"]]
    ours["interm_outputs"] = _official_predictions_to_ours(outputs["interm_outputs"],
                                                           num_keypoints)
    return ours


def _official_target_to_ours(target, num_keypoints):
    keypoints = target["keypoints"]
    return {"keypoints": keypoints[:, : 2 * num_keypoints].reshape(-1, num_keypoints, 2),
            "visible": keypoints[:, 2 * num_keypoints:] > 0,
            "area": target["area"]}


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


# The paper's loss weights, matching costs and focal alpha (MODEL.GROUP_POSE.*).
PAPER_WEIGHTS = {"loss_cls": 2.0, "loss_keypoints": 10.0, "loss_oks": 4.0}
PAPER_COSTS = {"cost_class": 2.0, "cost_keypoints": 10.0, "cost_oks": 4.0, "focal_alpha": 0.25}


def _set_criterion(sigmas, **arguments):
    """SetCriterion with the paper's settings but ``arguments``; its matcher's sigmas are
    ``arguments["matcher_sigmas"]`` if given, else ``sigmas``."""
    matcher = HungarianMatcher(**PAPER_COSTS, sigmas=arguments.pop("matcher_sigmas", sigmas))
    settings = {"focal_alpha": 0.25, "weight_dict": PAPER_WEIGHTS, "num_aux_outputs": 0,
                "interm_loss_weight": 1.0}
    return SetCriterion(matcher=matcher, sigmas=sigmas, **{**settings, **arguments})


def _criterion(num_keypoints, num_aux_outputs, sigmas=None):
    sigmas = default_oks_sigmas(num_keypoints) if sigmas is None else sigmas
    return _set_criterion(sigmas, num_aux_outputs=num_aux_outputs)


def _assert_losses_match_official(losses, official_losses):
    ours_as_official = {_official_name(name): value for name, value in losses.items()}
    assert set(ours_as_official) == {k for k in official_losses if k.startswith("loss_")}
    for name, value in ours_as_official.items():
        assert torch.isfinite(value)
        assert value.item() == pytest.approx(official_losses[name].item(), rel=REL_TOL), name


@pytest.fixture(scope="module")
def official_k17(reference_dir):
    outputs = _load(reference_dir / "outputs.pt")
    targets = _load(reference_dir / "targets.pt")
    reference = _load(reference_dir / "losses.pt")
    return (_official_outputs_to_ours(outputs, 17),
            [_official_target_to_ours(t, 17) for t in targets], targets, reference)


def test_losses_match_official_k17(official_k17):
    outputs, targets, _, reference = official_k17
    criterion = _criterion(17, num_aux_outputs=len(outputs["aux_outputs"]))
    _assert_losses_match_official(criterion(outputs, targets), reference["losses"])


def test_matches_equal_official_k17(official_k17):
    outputs, targets, _, reference = official_k17
    criterion = _criterion(17, num_aux_outputs=len(outputs["aux_outputs"]))
    official = {"": reference["matches"]["final"], "_interm": reference["matches"]["interm"]}
    official.update({f"_{i}": m for i, m in enumerate(reference["matches"]["aux"])})
    ours = {suffix: criterion.matcher(predictions, targets)
            for suffix, predictions in criterion.named_predictions(outputs)}
    assert set(ours) == set(official)
    for suffix, per_image in official.items():
        for (query_index, target_index), (their_query, their_target) in zip(ours[suffix],
                                                                             per_image):
            assert torch.equal(query_index, their_query.long()), suffix
            assert torch.equal(target_index, their_target.long()), suffix


def test_weighted_total_matches_official(official_k17):
    outputs, targets, _, reference = official_k17
    criterion = _criterion(17, num_aux_outputs=len(outputs["aux_outputs"]))
    losses = criterion(outputs, targets)
    assert set(criterion.weight_dict) == set(losses)
    total = sum(losses[name] * criterion.weight_dict[name] for name in losses)
    assert total.item() == pytest.approx(reference["weighted_total"].item(), rel=REL_TOL)
    for name, weight in criterion.weight_dict.items():
        assert weight == reference["weight_dict"][_official_name(name)]


def test_losses_match_official_k14_crowdpose(reference_dir):
    reference = _load(reference_dir / "criterion_k14.pt")
    outputs = _official_outputs_to_ours(reference["outputs"], 14)
    targets = [_official_target_to_ours(t, 14) for t in reference["targets"]]
    criterion = _criterion(14, num_aux_outputs=len(outputs["aux_outputs"]))
    _assert_losses_match_official(criterion(outputs, targets), reference["losses"])


def test_background_logit_adds_nothing(reference_dir):
    # The official model has a second (background) logit that is never a positive target; its
    # focal loss is part of the official loss_ce. With the background logit near -20 (trained
    # model, reference files) that part is exactly 0 in float32, so one logit reproduces loss_ce.
    from torchvision.ops import sigmoid_focal_loss

    for name in ("outputs.pt", "criterion_k14.pt"):
        outputs = _load(reference_dir / name)
        outputs = outputs.get("outputs", outputs)
        for predictions in (outputs, *outputs["aux_outputs"], outputs["interm_outputs"]):
            background = predictions["pred_logits"][..., 0]
            assert sigmoid_focal_loss(background, torch.zeros_like(background)).sum() == 0


def test_build_targets_matches_official_normalisation(official_k17):
    _, targets, official_targets, _ = official_k17
    for ours, official in zip(targets, official_targets):
        built = build_targets(official["keypoints_pixels_xyv"], official["area_pixels"],
                              tuple(official["size"].tolist()))
        torch.testing.assert_close(built["keypoints"], ours["keypoints"], rtol=0, atol=1e-6)
        assert torch.equal(built["visible"], ours["visible"])
        torch.testing.assert_close(built["area"], ours["area"], rtol=1e-6, atol=0)


def test_build_targets_maps_visibility_and_zeroes_unlabeled():
    keypoints = torch.tensor([[[10.0, 20.0, 2.0], [30.0, 40.0, 1.0], [50.0, 60.0, 0.0]]])
    built = build_targets(keypoints, torch.tensor([400.0]), (100, 200))
    assert built["visible"].tolist() == [[True, True, False]]
    torch.testing.assert_close(built["keypoints"],
                               torch.tensor([[[0.05, 0.2], [0.15, 0.4], [0.0, 0.0]]]))
    torch.testing.assert_close(built["area"], torch.tensor([400.0 / 20000.0]))
    with pytest.raises(ValueError, match="keypoints"):
        build_targets(keypoints[..., :2], torch.tensor([1.0]), (100, 200))
    with pytest.raises(ValueError, match="area"):
        build_targets(keypoints, torch.tensor([1.0, 2.0]), (100, 200))
    with pytest.raises(ValueError, match="image_size"):
        build_targets(keypoints, torch.tensor([1.0]), (0, 200))


def _random_outputs(generator, batch, queries, num_keypoints, num_aux):
    def predictions():
        return {"pred_logits": torch.randn(batch, queries, generator=generator),
                "pred_keypoints": torch.rand(batch, queries, num_keypoints, 2,
                                             generator=generator)}

    outputs = predictions()
    outputs["aux_outputs"] = [predictions() for _ in range(num_aux)]
    outputs["interm_outputs"] = predictions()
    return outputs


def test_custom_keypoints_exact_predictions_give_zero_keypoint_losses():
    generator = torch.Generator().manual_seed(0)
    num_keypoints, sigmas = 5, torch.tensor([0.03, 0.05, 0.07, 0.09, 0.11])
    outputs = _random_outputs(generator, batch=2, queries=6, num_keypoints=num_keypoints,
                              num_aux=2)
    targets = []
    for image, people in enumerate((2, 3)):
        keypoints = torch.rand(people, num_keypoints, 2, generator=generator)
        visible = torch.rand(people, num_keypoints, generator=generator) > 0.3
        visible[:, 0] = True
        targets.append({"keypoints": keypoints, "visible": visible,
                        "area": torch.rand(people, generator=generator) * 0.1 + 0.02})
        for predictions in (outputs, *outputs["aux_outputs"], outputs["interm_outputs"]):
            predictions["pred_keypoints"][image, 1:1 + people] = keypoints
    criterion = _criterion(num_keypoints, num_aux_outputs=2, sigmas=sigmas)
    losses = criterion(outputs, targets)
    assert len(losses) == 12 and set(losses) == set(criterion.weight_dict)
    assert all(torch.isfinite(value) for value in losses.values())
    for suffix in ("", "_0", "_1", "_interm"):
        assert losses["loss_keypoints" + suffix].item() == 0
        # 1 - n / (n + 1e-6) per person: OKS is 1 up to the official epsilon.
        assert 0 <= losses["loss_oks" + suffix].item() < 1e-5
        assert losses["loss_cls" + suffix].item() > 0


def test_classification_loss_formula():
    # Sum of sigmoid focal losses over all queries / number of people (the official
    # mean over queries * N), with matched queries as positives.
    outputs = {"pred_logits": torch.tensor([[2.0, -1.0, 0.5]]),
               "pred_keypoints": torch.tensor([[[[0.1, 0.1]], [[0.5, 0.5]], [[0.9, 0.9]]]])}
    targets = [{"keypoints": torch.tensor([[[0.5, 0.5]], [[0.9, 0.88]]]),
                "visible": torch.ones(2, 1, dtype=torch.bool), "area": torch.tensor([0.1, 0.1])}]
    losses = _criterion(1, 0, sigmas=[0.1])(outputs, targets)
    p = outputs["pred_logits"][0].sigmoid()
    is_person = torch.tensor([0.0, 1.0, 1.0])
    ce = -(is_person * p.log() + (1 - is_person) * (1 - p).log())
    p_t = p * is_person + (1 - p) * (1 - is_person)
    alpha_t = 0.25 * is_person + 0.75 * (1 - is_person)
    expected = (alpha_t * (1 - p_t) ** 2 * ce).sum() / 2
    assert losses["loss_cls"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert losses["loss_keypoints"].item() == pytest.approx(0.02 / 2, rel=1e-4)


@pytest.mark.parametrize("people", [(0, 2), (0, 0)])
def test_images_without_people_give_finite_losses(people):
    generator = torch.Generator().manual_seed(1)
    outputs = _random_outputs(generator, batch=2, queries=4, num_keypoints=3, num_aux=1)
    for predictions in (outputs, *outputs["aux_outputs"], outputs["interm_outputs"]):
        predictions["pred_logits"].requires_grad_(True)
        predictions["pred_keypoints"].requires_grad_(True)
    targets = [{"keypoints": torch.rand(n, 3, 2, generator=generator),
                "visible": torch.ones(n, 3, dtype=torch.bool),
                "area": torch.full((n,), 0.05)} for n in people]
    criterion = _criterion(3, num_aux_outputs=1, sigmas=[0.05, 0.06, 0.07])
    losses = criterion(outputs, targets)
    assert all(torch.isfinite(value) for value in losses.values())
    total = sum(losses[name] * criterion.weight_dict[name] for name in losses)
    total.backward()
    assert torch.isfinite(outputs["pred_logits"].grad).all()
    assert torch.isfinite(outputs["pred_keypoints"].grad).all()
    if sum(people) == 0:
        for suffix in ("", "_0", "_interm"):
            assert losses["loss_keypoints" + suffix].item() == 0
            assert losses["loss_oks" + suffix].item() == 0
            assert losses["loss_cls" + suffix].item() > 0
    else:
        # Image 0 contributes no keypoint loss: changing its predictions changes nothing.
        assert outputs["pred_keypoints"].grad[0].abs().sum() == 0


def test_constructor_and_output_checks():
    sigmas = [0.05, 0.06, 0.07]
    with pytest.raises(ValueError, match="matcher's sigmas"):
        _set_criterion([0.05, 0.06, 0.08], matcher_sigmas=sigmas)
    with pytest.raises(ValueError, match="weight_dict"):
        _set_criterion(sigmas, weight_dict={"loss_ce": 2.0})
    criterion = _set_criterion(
        sigmas, weight_dict={"loss_cls": 1.0, "loss_keypoints": 3.0, "loss_oks": 5.0},
        num_aux_outputs=1, interm_loss_weight=0.5,
    )
    assert criterion.weight_dict == {
        "loss_cls": 1.0, "loss_keypoints": 3.0, "loss_oks": 5.0,
        "loss_cls_0": 1.0, "loss_keypoints_0": 3.0, "loss_oks_0": 5.0,
        "loss_cls_interm": 0.5, "loss_keypoints_interm": 1.5, "loss_oks_interm": 2.5}
    assert "sigmas" not in criterion.state_dict() and "matcher.sigmas" not in criterion.state_dict()
    outputs = _random_outputs(torch.Generator().manual_seed(2), 1, 4, 3, num_aux=2)
    with pytest.raises(ValueError, match="aux_outputs"):
        criterion(outputs, [{"keypoints": torch.rand(1, 3, 2), "area": torch.ones(1),
                             "visible": torch.ones(1, 3, dtype=torch.bool)}])


# Per worker: people in its batch, for two successive batches. Expected normaliser for each batch:
# the mean over workers, clamped at 1.
PEOPLE_PER_WORKER = ((3, 1), (0, 0))
EXPECTED_NUM_PEOPLE = [1.5, 1.0]


def _count_people_on_worker(rank, folder):
    dist.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank,
                            world_size=len(PEOPLE_PER_WORKER))
    counts = [num_people_across_workers([{"keypoints": torch.zeros(n, 3, 2)}],
                                        torch.device("cpu"))
              for n in PEOPLE_PER_WORKER[rank]]
    dist.destroy_process_group()
    torch.save(counts, f"{folder}/rank{rank}.pt")


def test_num_people_is_averaged_across_workers_and_clamped(tmp_path):
    mp.spawn(_count_people_on_worker, args=(str(tmp_path),), nprocs=len(PEOPLE_PER_WORKER))
    for rank in range(len(PEOPLE_PER_WORKER)):
        assert torch.load(tmp_path / f"rank{rank}.pt") == EXPECTED_NUM_PEOPLE


# Worker 1's predictions diverged; worker 0's are fine: both must stop, each saying where.
def _stop_on_divergence_on_worker(rank, folder):
    dist.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank,
                            world_size=2)
    diverged = ["decoder aux_outputs[0] (pred_logits has 4 of 4 values NaN/inf)"] if rank else []
    try:
        num_people_across_workers([{"keypoints": torch.zeros(1, 3, 2)}], torch.device("cpu"),
                                  diverged)
        message = None
    except NonFinitePredictionError as e:
        message = str(e)
    dist.destroy_process_group()
    torch.save(message, f"{folder}/rank{rank}.pt")


def test_every_worker_stops_when_one_diverged(tmp_path):
    mp.spawn(_stop_on_divergence_on_worker, args=(str(tmp_path),), nprocs=2)
    assert "Non-finite predictions: on another worker" in torch.load(tmp_path / "rank0.pt")
    assert "aux_outputs[0] (pred_logits has 4 of 4" in torch.load(tmp_path / "rank1.pt")


def test_non_finite_predictions_are_named_instead_of_failing_in_scipy():
    generator = torch.Generator().manual_seed(3)
    targets = [{"keypoints": torch.rand(2, 3, 2, generator=generator), "area": torch.ones(2),
                "visible": torch.ones(2, 3, dtype=torch.bool)}]
    criterion = _criterion(3, num_aux_outputs=1, sigmas=[0.05, 0.06, 0.07])
    outputs = _random_outputs(generator, 1, 4, 3, num_aux=1)
    outputs["aux_outputs"][0]["pred_keypoints"][0, 1, 2, 0] = math.nan
    with pytest.raises(NonFinitePredictionError,
                       match=r"aux_outputs\[0\] \(pred_keypoints has 1 of 24 values NaN/inf\)"):
        criterion(outputs, targets)
    # Finite predictions whose costs overflow are still named.
    outputs = _random_outputs(generator, 1, 4, 3, num_aux=1)
    outputs["pred_keypoints"] = outputs["pred_keypoints"] * 3e38
    with pytest.raises(NonFinitePredictionError, match="last decoder layer.*but too large"):
        criterion(outputs, targets)


def test_optimal_assignment_refuses_non_finite_costs():
    rows, cols = optimal_assignment(torch.tensor([[3.0, 1.0], [0.0, 5.0], [2.0, 2.0]]))
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]
    with pytest.raises(NonFiniteCostError, match="1 of 4 matching costs"):
        optimal_assignment(torch.tensor([[1.0, math.inf], [0.0, 1.0]]))


def test_num_people_single_process_is_clamped():
    assert num_people_across_workers([{"keypoints": torch.zeros(0, 3, 2)}],
                                     torch.device("cpu")) == 1.0
    assert num_people_across_workers([{"keypoints": torch.zeros(4, 3, 2)}] * 2,
                                     torch.device("cpu")) == 8.0


def _to_device(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {key: _to_device(item, device) for key, item in value.items()}
    return [_to_device(item, device) for item in value]


@pytest.mark.cuda
def test_losses_on_cuda_match_official(official_k17):
    outputs, targets, _, reference = official_k17
    outputs, targets = _to_device(outputs, "cuda"), _to_device(targets, "cuda")
    outputs["pred_keypoints"].requires_grad_(True)
    criterion = _criterion(17, num_aux_outputs=len(outputs["aux_outputs"]))
    losses = criterion(outputs, targets)
    assert all(value.device.type == "cuda" for value in losses.values())
    _assert_losses_match_official({k: v.cpu() for k, v in losses.items()}, reference["losses"])
    sum(losses[name] * criterion.weight_dict[name] for name in losses).backward()
    assert torch.isfinite(outputs["pred_keypoints"].grad).all()
