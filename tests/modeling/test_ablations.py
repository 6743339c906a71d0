"""Ablation switches (paper Table 4, Appendix A.2, A.3): each does what it says, the configs set
them, bad values and combinations are refused, and every variant trains a step.

Dependency checks perturb one query and look at which outputs change: attention lets a query
influence exactly the queries it may attend to.
"""

from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from helpers import REPO_ROOT
from helpers.tiny_training import build, tiny_cfg, training_batch

from grouppose import add_grouppose_config
from grouppose.config import get_grouppose_cfg
from grouppose.modeling.decoder import GroupPoseDecoder, GroupPoseDecoderLayer, group_attention_mask
from grouppose.modeling.levels import flatten_levels
from grouppose.modeling.variants import PAPER_VARIANT, DecoderVariant

ABLATIONS = REPO_ROOT / "configs" / "Ablations"
DIM, HEADS, N, K = 16, 2, 4, 3
# Outputs closer than this are "unchanged" (float32 noise of a changed batch composition).
UNCHANGED_ATOL = 1e-6

# Config file -> the switches it sets (everything else at the paper's values).
EXPECTED_CONFIGS = {
    "self_attn_standard": {"SELF_ATTN": "standard"},
    "self_attn_standard_masked": {"SELF_ATTN": "standard_masked"},
    "group_attn_within_only": {"GROUP_ATTN": "within_only"},
    "group_attn_across_only": {"GROUP_ATTN": "across_only"},
    "group_attn_none": {"GROUP_ATTN": "none"},
    "across_instance_keypoint_only": {"ACROSS_INSTANCE": "keypoint_only"},
    "across_instance_instance_only": {"ACROSS_INSTANCE": "instance_only"},
    "share_group_attn": {"SHARE_GROUP_ATTN": True},
    "queries_keypoint_only": {"QUERIES": "keypoint_only", "SCORE_FROM": "mean_keypoint"},
    "queries_instance_only": {"QUERIES": "instance_only", "GROUP_ATTN": "across_only"},
    "score_from_mean_keypoint": {"SCORE_FROM": "mean_keypoint"},
    "num_instances_50": {"NUM_INSTANCES": 50},
    "num_instances_200": {"NUM_INSTANCES": 200},
    "detection_decoder": {"DETECTION_DECODER_LAYERS": 2, "DEC_LAYERS": 4},
}
SWITCHES = ("SELF_ATTN", "GROUP_ATTN", "ACROSS_INSTANCE", "SHARE_GROUP_ATTN", "QUERIES",
            "SCORE_FROM", "NUM_INSTANCES", "DETECTION_DECODER_LAYERS", "DEC_LAYERS")


def load_config(path: Path):
    cfg = get_grouppose_cfg(str(path))
    return cfg


def test_defaults_are_the_papers_model():
    cfg = get_cfg()
    add_grouppose_config(cfg)
    gp = cfg.MODEL.GROUP_POSE
    assert DecoderVariant.from_config(gp) == PAPER_VARIANT
    assert (gp.SELF_ATTN, gp.GROUP_ATTN, gp.ACROSS_INSTANCE, gp.SHARE_GROUP_ATTN, gp.QUERIES,
            gp.SCORE_FROM) == ("group", "both", "both", False, "instance_and_keypoint",
                               "instance")
    assert (gp.NUM_INSTANCES, gp.DETECTION_DECODER_LAYERS, gp.DEC_LAYERS) == (100, 0, 6)


def test_every_ablation_config_sets_exactly_its_switches():
    assert {p.stem for p in ABLATIONS.glob("*.yaml")} == set(EXPECTED_CONFIGS)
    paper = load_config(ABLATIONS.parents[0] / "COCO-Keypoints" / "grouppose_R50_60e.yaml")
    for name, switches in EXPECTED_CONFIGS.items():
        cfg = load_config(ABLATIONS / f"{name}.yaml")
        for key in SWITCHES:
            expected = switches.get(key, paper.MODEL.GROUP_POSE[key])
            assert cfg.MODEL.GROUP_POSE[key] == expected, (name, key)
        DecoderVariant.from_config(cfg.MODEL.GROUP_POSE)  # a valid combination
        assert cfg.DATASETS.TRAIN == paper.DATASETS.TRAIN and cfg.SOLVER == paper.SOLVER
        assert f"output/ablations/{name}" == cfg.OUTPUT_DIR


@pytest.mark.parametrize("key, value, message", [
    ("SELF_ATTN", "groups", "MODEL.GROUP_POSE.SELF_ATTN='groups' is not one of"),
    ("GROUP_ATTN", "within", "MODEL.GROUP_POSE.GROUP_ATTN='within' is not one of"),
    ("ACROSS_INSTANCE", "kpt", "MODEL.GROUP_POSE.ACROSS_INSTANCE='kpt' is not one of"),
    ("QUERIES", "both", "MODEL.GROUP_POSE.QUERIES='both' is not one of"),
    ("SCORE_FROM", "keypoint", "MODEL.GROUP_POSE.SCORE_FROM='keypoint' is not one of"),
    ("SHARE_GROUP_ATTN", "yes", "MODEL.GROUP_POSE.SHARE_GROUP_ATTN must be True or False"),
])
def test_invalid_values_name_the_key(key, value, message):
    cfg = tiny_cfg()
    cfg.MODEL.GROUP_POSE[key] = value
    with pytest.raises(ValueError, match=message):
        build(cfg)


@pytest.mark.parametrize("switches, message", [
    ({"self_attn": "standard", "group_attn": "within_only"},
     "SELF_ATTN='standard' has no group self-attentions; MODEL.GROUP_POSE.GROUP_ATTN"),
    ({"self_attn": "standard_masked", "share_group_attn": True}, "SHARE_GROUP_ATTN only apply"),
    ({"share_group_attn": True, "group_attn": "across_only"}, "SHARE_GROUP_ATTN=True needs both"),
    ({"across_instance": "keypoint_only", "group_attn": "within_only"},
     "ACROSS_INSTANCE='keypoint_only' needs an across-instance attention"),
    ({"queries": "keypoint_only"}, "no instance query to score the pose"),
    ({"queries": "instance_only", "score_from": "mean_keypoint", "group_attn": "none"},
     "'instance_only' has no keypoint queries"),
    ({"queries": "instance_only"}, "within-instance attention has nothing to attend to"),
    ({"queries": "keypoint_only", "score_from": "mean_keypoint",
      "across_instance": "instance_only"}, "needs both query types"),
])
def test_invalid_combinations_are_refused(switches, message):
    with pytest.raises(ValueError, match=message):
        DecoderVariant(**switches)


def test_invalid_detection_layers_name_the_key():
    cfg = tiny_cfg(DETECTION_DECODER_LAYERS=-1)
    with pytest.raises(ValueError, match="MODEL.GROUP_POSE.DETECTION_DECODER_LAYERS must be"):
        build(cfg)


def test_fig3b_mask_blocks_exactly_the_different_type_across_instance_pairs():
    groups, size = 3, 4
    mask = group_attention_mask(groups, size)
    assert mask.shape == (groups * size, groups * size) and mask.dtype == torch.bool
    for query in range(groups * size):
        for key in range(groups * size):
            same_person = query // size == key // size
            same_type = query % size == key % size
            assert mask[query, key].item() == (not same_person and not same_type), (query, key)


def layer(seed=0, **switches) -> GroupPoseDecoderLayer:
    torch.manual_seed(seed)
    return GroupPoseDecoderLayer(
        dim=DIM, num_heads=HEADS, ffn_dim=32, dropout=0.0, num_levels=1, num_points=2,
        variant=DecoderVariant(**switches),
    ).eval()


def influence(fn, queries: torch.Tensor, person: int, query_type: int) -> torch.Tensor:
    """(N, G) bool: which outputs of ``fn`` change when query (person, query_type) changes."""
    perturbed = queries.clone()
    perturbed[0, person, query_type] += torch.randn(DIM)
    with torch.no_grad():
        changed = (fn(perturbed) - fn(queries)).abs().amax(dim=-1)[0]
    return changed > UNCHANGED_ATOL


def random_queries(group_size=K + 1) -> torch.Tensor:
    return torch.randn(1, N, group_size, DIM, generator=torch.Generator().manual_seed(5))


def test_standard_self_attention_mixes_every_query_and_the_masked_one_follows_fig3b():
    queries = random_queries()
    standard = layer(self_attn="standard")
    assert influence(standard.self_attention, queries, 1, 2).all()
    masked = layer(self_attn="standard_masked")
    for person, query_type in [(0, 0), (1, 2), (3, 3)]:
        changed = influence(masked.self_attention, queries, person, query_type)
        expected = torch.zeros(N, K + 1, dtype=torch.bool)
        expected[person, :] = True  # its own person's queries
        expected[:, query_type] = True  # the same type in other persons
        assert torch.equal(changed, expected), (person, query_type)
    # One attention module, no group attentions.
    names = {n.split(".")[0] for n, _ in masked.named_parameters()}
    assert "self_attn" in names and not names & {"within_instance_attn", "across_instance_attn"}


def test_group_attention_variants_mix_what_they_say():
    queries = random_queries()
    within = layer(group_attn="within_only")
    expected = torch.zeros(N, K + 1, dtype=torch.bool)
    expected[2] = True
    assert torch.equal(influence(within.self_attention, queries, 2, 1), expected)
    across = layer(group_attn="across_only")
    expected = torch.zeros(N, K + 1, dtype=torch.bool)
    expected[:, 1] = True
    assert torch.equal(influence(across.self_attention, queries, 2, 1), expected)
    none = layer(group_attn="none")
    assert torch.equal(none.self_attention(queries), queries)
    assert not any("instance" in n for n, _ in none.named_parameters())
    # Both (the paper): within then across, so one query reaches every query in two hops.
    assert influence(layer().self_attention, queries, 2, 1).all()


def test_across_instance_types():
    queries = random_queries()
    keypoints_only = layer(across_instance="keypoint_only")
    out = keypoints_only.across_instance_attention(queries)
    assert torch.equal(out[:, :, 0], queries[:, :, 0])  # instance queries skip the step
    changed = influence(keypoints_only.across_instance_attention, queries, 1, 2)
    assert changed[:, 2].all() and changed.sum() == N
    instances_only = layer(across_instance="instance_only")
    out = instances_only.across_instance_attention(queries)
    assert torch.equal(out[:, :, 1:], queries[:, :, 1:])  # keypoint queries skip the step
    changed = influence(instances_only.across_instance_attention, queries, 1, 0)
    assert changed[:, 0].all() and changed.sum() == N


def test_shared_group_attention_uses_one_module_for_both_steps():
    shared = layer(share_group_attn=True)
    assert not hasattr(shared, "across_instance_attn")
    unshared = layer()
    attention_params = sum(p.numel() for p in unshared.within_instance_attn.parameters())
    assert (sum(p.numel() for p in unshared.parameters())
            - sum(p.numel() for p in shared.parameters())) == attention_params
    # The across step runs the within module: changing its weights changes the across output.
    assert shared.self_attention_steps == (shared.within_instance_attention,
                                           shared.shared_across_instance_attention)
    queries = random_queries()
    before = shared.shared_across_instance_attention(queries).detach()
    with torch.no_grad():
        shared.within_instance_attn.out_proj.bias.add_(1.0)
    assert not torch.allclose(shared.shared_across_instance_attention(queries), before)


def decoder_inputs(levels: int = 1, seed: int = 0):
    """Random (memory, flattened levels) of one 6 x 5 map and (B=1, N, K, 2) keypoints."""
    generator = torch.Generator().manual_seed(seed)
    feature = torch.randn(1, DIM, 6, 5, generator=generator)
    mask = torch.zeros(1, 6, 5, dtype=torch.bool)
    flattened = flatten_levels([feature], [mask], [torch.zeros_like(feature)])
    keypoints = torch.rand(1, N, K, 2, generator=generator) * 0.8 + 0.1
    return flattened.features, flattened, keypoints


def decoder(seed=0, num_layers=2, **switches) -> GroupPoseDecoder:
    torch.manual_seed(seed)
    variant = DecoderVariant(**switches)
    model = GroupPoseDecoder(
        num_layers=num_layers, dim=DIM, num_heads=HEADS, ffn_dim=32, dropout=0.0, num_levels=1,
        num_points=2, num_keypoints=K, variant=variant,
    ).eval()
    for head in model.keypoint_heads:  # non-zero offsets, so that references move
        torch.nn.init.normal_(head.layers[-1].weight, std=0.1)
    return model


def test_within_only_decoder_never_mixes_instances():
    model = decoder(group_attn="within_only")
    memory, levels, keypoints = decoder_inputs()
    queries = random_queries()
    perturbed_queries, perturbed_keypoints = queries.clone(), keypoints.clone()
    perturbed_queries[0, 1] += 1.0
    perturbed_keypoints[0, 1] = 1 - perturbed_keypoints[0, 1]
    with torch.no_grad():
        base = model(queries, keypoints, memory, levels)
        moved = model(perturbed_queries, perturbed_keypoints, memory, levels)
    others = [0, 2, 3]
    for layer_index in range(2):
        assert torch.allclose(moved.logits[layer_index][:, others],
                              base.logits[layer_index][:, others], atol=UNCHANGED_ATOL)
        assert torch.allclose(moved.keypoints[layer_index][:, others],
                              base.keypoints[layer_index][:, others], atol=UNCHANGED_ATOL)
        assert not torch.allclose(moved.keypoints[layer_index][:, 1],
                                  base.keypoints[layer_index][:, 1])
    # The paper's decoder does mix them (across-instance attention).
    paper = decoder()
    with torch.no_grad():
        base = paper(queries, keypoints, memory, levels)
        moved = paper(perturbed_queries, perturbed_keypoints, memory, levels)
    assert not torch.allclose(moved.logits[-1][:, others], base.logits[-1][:, others])


def test_score_from_mean_keypoint_and_keypoint_only_queries():
    memory, levels, keypoints = decoder_inputs()
    for switches, group_size in (({"score_from": "mean_keypoint"}, K + 1),
                                 ({"queries": "keypoint_only", "score_from": "mean_keypoint"}, K)):
        model = decoder(**switches)
        with torch.no_grad():
            output = model(random_queries(group_size), keypoints, memory, levels)
        for layer_index, hidden in enumerate(output.hidden):
            assert hidden.shape == (1, N, group_size, DIM)
            keypoint_hidden = hidden[:, :, group_size - K:]
            expected = model.class_heads[layer_index](keypoint_hidden.mean(2)).squeeze(-1)
            assert torch.allclose(output.logits[layer_index], expected, atol=1e-6), switches
    # The paper's model reads the instance query.
    model = decoder()
    with torch.no_grad():
        output = model(random_queries(), keypoints, memory, levels)
    expected = model.class_heads[-1](output.hidden[-1][:, :, 0]).squeeze(-1)
    assert torch.allclose(output.logits[-1], expected, atol=1e-6)


def test_instance_only_query_regresses_all_keypoints_from_its_center():
    model = decoder(queries="instance_only", group_attn="across_only", num_layers=1)
    assert model.keypoint_heads[0].layers[-1].out_features == 2 * K
    memory, levels, keypoints = decoder_inputs()
    captured = {}

    def capture(module, args, out):
        captured["reference_points"] = args[1]

    model.layers[0].cross_attn.register_forward_hook(capture)
    with torch.no_grad():
        output = model(random_queries(1), keypoints, memory, levels)
    # One query per person, sampling around the person center.
    assert captured["reference_points"].shape == (1, N, 1, 2)
    assert torch.allclose(captured["reference_points"][:, :, 0], keypoints.mean(2), atol=1e-6)
    hidden = output.hidden[0]
    assert hidden.shape == (1, N, 1, DIM)
    offsets = model.keypoint_heads[0](hidden[:, :, 0]).view(1, N, K, 2)
    keypoint_logit = (keypoints / (1 - keypoints)).log()
    assert torch.allclose(output.keypoints[0], (keypoint_logit + offsets).sigmoid(), atol=1e-5)


VARIANTS = [
    {},
    {"SELF_ATTN": "standard"},
    {"SELF_ATTN": "standard_masked"},
    {"GROUP_ATTN": "within_only"},
    {"GROUP_ATTN": "across_only"},
    {"GROUP_ATTN": "none"},
    {"ACROSS_INSTANCE": "keypoint_only"},
    {"ACROSS_INSTANCE": "instance_only"},
    {"SHARE_GROUP_ATTN": True},
    {"QUERIES": "keypoint_only", "SCORE_FROM": "mean_keypoint"},
    {"QUERIES": "instance_only", "GROUP_ATTN": "across_only"},
    {"SCORE_FROM": "mean_keypoint"},
    {"NUM_INSTANCES": 3},
]


@pytest.mark.parametrize("switches", VARIANTS, ids=lambda s: "-".join(map(str, s.values())))
def test_every_variant_trains_a_step_and_uses_every_parameter(switches):
    model = build(tiny_cfg(**switches))
    model.train()
    losses = model(training_batch([((64, 64), 2)]))
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    # Every trainable parameter takes part (as DistributedDataParallel requires by default).
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []
    queries = model.queries(torch.zeros(1, model.query_selection.num_instances, 64))
    group_size = {"keypoint_only": 17, "instance_only": 1}.get(switches.get("QUERIES"), 18)
    assert queries.shape == (1, switches.get("NUM_INSTANCES", 6), group_size, 64)
    model.eval()
    with torch.no_grad():
        (result,) = model([{"image": torch.zeros(3, 48, 48, dtype=torch.uint8)}])
    assert result["instances"].pred_keypoints.shape[1:] == (17, 3)
