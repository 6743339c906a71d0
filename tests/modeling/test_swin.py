"""Swin backbone: the Swin-for-detection numerics on any input size, the registry, configs and
checkpoint conversion (official Group Pose layout and ImageNet weights).

The reference here (``reference_swin``) is written independently of
grouppose.modeling.backbone.swin from the Swin-for-detection definition, in the reference
parameter names, with explicit loops: every window is gathered token by token from the
cyclically shifted padded map, the relative position bias is looked up pair by pair and the
shifted-window mask comes from each token's region. It runs on an official-layout state dict
built here with random values.
"""

import math
from typing import Dict, Sequence

import pytest
import torch
import torch.nn.functional as F
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone, build_model
from helpers import REPO_ROOT
from helpers.checkpointer_warnings import MISSING, UNEXPECTED, WRONG_SHAPE, load_with_warnings
from helpers.reference import reference_cfg

from grouppose.checkpoint import convert_imagenet_swin, convert_official_checkpoint
from grouppose.checkpoint.official import load_official_state_dict
from grouppose.config import get_grouppose_cfg
from grouppose.modeling.backbone.swin import SwinTransformer
from tools import convert_imagenet_swin as converter_tool

# A tiny Swin: 4 stages, window 3 (shift 1), so that small inputs exercise padding in every block,
# windows larger than the map in the last stages, odd sizes in patch merging and shifted masks.
TINY = {"embed_dim": 8, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 2, 4), "window_size": 3}
ATOL = 1e-5


def official_swin_state_dict(
    embed_dim: int, depths: Sequence[int], num_heads: Sequence[int], window_size: int,
    out_stages=(1, 2, 3), seed: int = 0,
) -> Dict[str, torch.Tensor]:
    """Random weights in the reference Swin-for-detection names (no prefix), with the
    relative_position_index buffers, built from the shapes alone."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.2):
        return torch.randn(*shape, generator=generator) * scale

    def norm(prefix, dim):
        return {f"{prefix}.weight": 1 + rand(dim), f"{prefix}.bias": rand(dim)}

    index = torch.zeros(window_size**2, window_size**2, dtype=torch.long)
    for t1 in range(window_size**2):
        for t2 in range(window_size**2):
            dy = t1 // window_size - t2 // window_size + window_size - 1
            dx = t1 % window_size - t2 % window_size + window_size - 1
            index[t1, t2] = dy * (2 * window_size - 1) + dx
    sd = {"patch_embed.proj.weight": rand(embed_dim, 3, 4, 4),
          "patch_embed.proj.bias": rand(embed_dim), **norm("patch_embed.norm", embed_dim)}
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
        dim = embed_dim * 2**i
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            sd.update(norm(p + "norm1", dim))
            sd[p + "attn.relative_position_bias_table"] = rand((2 * window_size - 1) ** 2, heads)
            sd[p + "attn.relative_position_index"] = index.clone()
            sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"] = rand(3 * dim, dim), rand(3 * dim)
            sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"] = rand(dim, dim), rand(dim)
            sd.update(norm(p + "norm2", dim))
            sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"] = rand(4 * dim, dim), rand(4 * dim)
            sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"] = rand(dim, 4 * dim), rand(dim)
        if i < len(depths) - 1:
            sd.update(norm(f"layers.{i}.downsample.norm", 4 * dim))
            sd[f"layers.{i}.downsample.reduction.weight"] = rand(2 * dim, 4 * dim)
        if i in out_stages:
            sd.update(norm(f"norm{i}", dim))
    return sd


def _layer_norm(sd, prefix, x):
    return F.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"], sd[prefix + ".bias"])


def _linear(sd, prefix, x):
    return F.linear(x, sd[prefix + ".weight"], sd.get(prefix + ".bias"))


def _region(coordinate: int, size: int, window_size: int, shift: int) -> int:
    """Region of a coordinate of the shifted padded map along one axis."""
    if coordinate < size - window_size:
        return 0
    return 1 if coordinate < size - shift else 2


def reference_block(sd, p, grid, num_heads, window_size, shift):
    """One Swin block on a (H, W, C) token grid, window by window."""
    H, W, C = grid.shape
    Hp, Wp = math.ceil(H / window_size) * window_size, math.ceil(W / window_size) * window_size
    padded = torch.zeros(Hp, Wp, C)
    padded[:H, :W] = _layer_norm(sd, p + "norm1", grid)
    head_dim = C // num_heads
    table = sd[p + "attn.relative_position_bias_table"]
    out = torch.zeros_like(padded)
    for wy in range(Hp // window_size):
        for wx in range(Wp // window_size):
            # Window cells in the shifted map (row-major) and where they come from.
            cells = [(wy * window_size + a, wx * window_size + b)
                     for a in range(window_size) for b in range(window_size)]
            sources = [((r + shift) % Hp, (c + shift) % Wp) for r, c in cells]
            tokens = torch.stack([padded[r, c] for r, c in sources])
            q, k, v = _linear(sd, p + "attn.qkv", tokens).split(C, dim=-1)
            logits = torch.zeros(num_heads, len(cells), len(cells))
            for h in range(num_heads):
                part = slice(h * head_dim, (h + 1) * head_dim)
                logits[h] = (q[:, part] * head_dim**-0.5) @ k[:, part].T
            for t1, (r1, c1) in enumerate(cells):
                for t2, (r2, c2) in enumerate(cells):
                    row = (r1 - r2 + window_size - 1) * (2 * window_size - 1) + (
                        c1 - c2 + window_size - 1)
                    logits[:, t1, t2] += table[row]
                    same = (_region(r1, Hp, window_size, shift), _region(c1, Wp, window_size, shift)
                            ) == (_region(r2, Hp, window_size, shift),
                                  _region(c2, Wp, window_size, shift))
                    if shift and not same:
                        logits[:, t1, t2] -= 100.0
            weights = logits.softmax(-1)
            mixed = torch.cat([weights[h] @ v[:, h * head_dim:(h + 1) * head_dim]
                               for h in range(num_heads)], dim=-1)
            mixed = _linear(sd, p + "attn.proj", mixed)
            for t, (r, c) in enumerate(sources):
                out[r, c] = mixed[t]
    x = grid + out[:H, :W]
    hidden = F.gelu(_linear(sd, p + "mlp.fc1", _layer_norm(sd, p + "norm2", x)))
    return x + _linear(sd, p + "mlp.fc2", hidden)


def reference_merge(sd, p, grid):
    """Patch merging of a (H, W, C) grid: (ceil(H/2), ceil(W/2), 2C)."""
    H, W, C = grid.shape
    padded = torch.zeros(H + H % 2, W + W % 2, C)
    padded[:H, :W] = grid
    rows = []
    for i in range(padded.shape[0] // 2):
        rows.append(torch.stack([
            torch.cat([padded[2 * i, 2 * j], padded[2 * i + 1, 2 * j],
                       padded[2 * i, 2 * j + 1], padded[2 * i + 1, 2 * j + 1]])
            for j in range(padded.shape[1] // 2)
        ]))
    merged = _layer_norm(sd, p + "norm", torch.stack(rows))
    return _linear(sd, p + "reduction", merged)


def reference_swin(sd, image, num_heads, window_size, out_stages=(1, 2, 3)):
    """(3, H, W) image -> {stage: (C_i, H_i, W_i)} normalised outputs of ``out_stages``."""
    _, H, W = image.shape
    image = F.pad(image, (0, (-W) % 4, 0, (-H) % 4))
    x = F.conv2d(image[None], sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"],
                 stride=4)[0]
    grid = _layer_norm(sd, "patch_embed.norm", x.permute(1, 2, 0))
    outputs = {}
    for i, heads in enumerate(num_heads):
        depth = sum(k.startswith(f"layers.{i}.blocks.") and k.endswith("qkv.weight") for k in sd)
        for j in range(depth):
            shift = 0 if j % 2 == 0 else window_size // 2
            grid = reference_block(sd, f"layers.{i}.blocks.{j}.", grid, heads, window_size, shift)
        if i in out_stages:
            outputs[i] = _layer_norm(sd, f"norm{i}", grid).permute(2, 0, 1)
        if i < len(num_heads) - 1:
            grid = reference_merge(sd, f"layers.{i}.downsample.", grid)
    return outputs


def tiny_swin(**kwargs) -> SwinTransformer:
    return SwinTransformer(**{**TINY, "drop_path_rate": 0.0, **kwargs})


def load_reference_names(model: SwinTransformer, official: Dict[str, torch.Tensor]) -> None:
    """Our names are the reference names; the index buffers are derived, not loaded."""
    weights = {k: v for k, v in official.items() if not k.endswith("relative_position_index")}
    model.load_state_dict(weights, strict=True)


@pytest.mark.parametrize("size", [(61, 45), (12, 12), (97, 30)])
def test_matches_independent_reference_on_any_size(size):
    official = official_swin_state_dict(**TINY)
    model = tiny_swin().eval()
    load_reference_names(model, official)
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(images)
    for index, image in enumerate(images):
        expected = reference_swin(official, image, TINY["num_heads"], TINY["window_size"])
        for stage, name in zip((1, 2, 3), ("res3", "res4", "res5")):
            assert ours[name][index].shape == expected[stage].shape, name
            diff = (ours[name][index] - expected[stage]).abs().max().item()
            assert diff < ATOL, f"{size} {name}: max diff {diff:.2e}"


def test_output_shapes_strides_and_any_stage():
    model = tiny_swin(out_features=("res2", "res3", "res4", "res5")).eval()
    shapes = model.output_shape()
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {
        "res2": (8, 4), "res3": (16, 8), "res4": (32, 16), "res5": (64, 32)}
    with torch.no_grad():
        out = model(torch.randn(1, 3, 33, 70))
    assert {k: tuple(v.shape[1:]) for k, v in out.items()} == {
        "res2": (8, 9, 18), "res3": (16, 5, 9), "res4": (32, 3, 5), "res5": (64, 2, 3)}
    assert {k for k in model.state_dict() if k.startswith("norm")} == {
        f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias")}


def test_registry_and_config_build_swin_t_and_swin_l():
    assert BACKBONE_REGISTRY.get("build_swin_backbone") is not None
    for config, channels, window, params in (
        ("COCO-Keypoints/grouppose_SwinT_60e.yaml", (192, 384, 768), 7, 27_520_506),
        ("COCO-Keypoints/grouppose_SwinL_60e.yaml", (384, 768, 1536), 12, 195_200_820),
        ("CrowdPose/grouppose_SwinL_80e.yaml", (384, 768, 1536), 12, 195_200_820),
    ):
        cfg = get_grouppose_cfg(str(REPO_ROOT / "configs" / config))
        assert cfg.MODEL.BACKBONE.NAME == "build_swin_backbone"
        assert window == cfg.MODEL.SWIN.WINDOW_SIZE
        assert cfg.MODEL.GROUP_POSE.IN_FEATURES == ["res3", "res4", "res5"]
        with torch.device("meta"):  # shapes only: no memory, no time
            backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        assert [shapes[f].channels for f in ("res3", "res4", "res5")] == list(channels)
        assert [shapes[f].stride for f in ("res3", "res4", "res5")] == [8, 16, 32]
        # Swin-T: 28,288,354 parameters with the ImageNet head (768 x 1000 + 1000) and final
        # norm (2 x 768), which we replace by the three output norms; Swin-L (window 12):
        # 196,735,516 with head and norm.
        assert sum(p.numel() for p in backbone.parameters()) == params, config


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="OUT_FEATURES"):
        tiny_swin(out_features=("res6",))
    with pytest.raises(ValueError, match="FREEZE_AT"):
        tiny_swin(freeze_at=6)
    with pytest.raises(ValueError, match="DEPTHS and NUM_HEADS"):
        tiny_swin(depths=(2, 2, 2))
    with pytest.raises(ValueError, match="not divisible by 3 heads"):
        tiny_swin(num_heads=(3, 2, 2, 4))


def test_freeze_at_freezes_patch_embedding_and_stages():
    model = tiny_swin(freeze_at=3, drop_path_rate=0.5)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters()
                      if n.startswith(("patch_embed.", "layers.0.", "layers.1."))}
    model.train()
    assert not model.patch_embed.training and not model.layers[1].training
    assert model.layers[2].training
    assert all(p.requires_grad for p in tiny_swin(freeze_at=0).parameters())


def test_drop_path_is_linear_over_blocks_and_off_in_eval():
    model = tiny_swin(drop_path_rate=0.7)
    rates = [block.drop_path.p for stage in model.layers for block in stage.blocks]
    assert rates == pytest.approx([0.1 * i for i in range(8)])
    model.eval()
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        first, second = model(x), model(x)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_activation_checkpointing_gives_the_same_outputs_and_gradients():
    x = torch.randn(2, 3, 37, 50)
    results = []
    for use_checkpoint in (False, True):
        torch.manual_seed(0)
        model = tiny_swin(use_checkpoint=use_checkpoint).train()
        out = model(x)
        sum((v * torch.arange(v.numel()).view_as(v).sin()).sum() for v in out.values()).backward()
        results.append(({k: v.detach() for k, v in out.items()},
                        {n: p.grad.clone() for n, p in model.named_parameters()}))
    (out_a, grad_a), (out_b, grad_b) = results
    assert all(torch.allclose(out_a[k], out_b[k], atol=1e-6) for k in out_a)
    assert all(torch.allclose(grad_a[n], grad_b[n], atol=1e-6) for n in grad_a)


def swin_cfg(**overrides):
    """The reference fixtures' transformer (2 + 2 layers, N = 20) on the tiny Swin; overrides of
    MODEL.SWIN or MODEL.GROUP_POSE keys."""
    cfg = reference_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_swin_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.SWIN.EMBED_DIM = TINY["embed_dim"]
    cfg.MODEL.SWIN.DEPTHS = list(TINY["depths"])
    cfg.MODEL.SWIN.NUM_HEADS = list(TINY["num_heads"])
    cfg.MODEL.SWIN.WINDOW_SIZE = TINY["window_size"]
    for key, value in overrides.items():
        node = cfg.MODEL.SWIN if key in cfg.MODEL.SWIN else cfg.MODEL.GROUP_POSE
        node[key] = value
    return cfg


@pytest.fixture(scope="module")
def official_swin_grouppose(reference_dir):
    """An official Group Pose state dict with a tiny Swin backbone: the reference checkpoint's
    transformer (its ResNet and the input projections replaced by Swin-sized random ones)."""
    official = load_official_state_dict(str(reference_dir / "weights_official.pt"))
    swin = official_swin_state_dict(**TINY)
    state_dict = {k: v for k, v in official.items() if not k.startswith("backbone.0.body.")}
    state_dict.update({"backbone.0." + k: v for k, v in swin.items()})
    generator = torch.Generator().manual_seed(2)
    for level, channels in enumerate((16, 32, 64)):
        state_dict[f"input_proj.{level}.0.weight"] = torch.randn(
            256, channels, 1, 1, generator=generator) * 0.05
    state_dict["input_proj.3.0.weight"] = torch.randn(256, 64, 3, 3, generator=generator) * 0.05
    return state_dict, swin


def test_official_swin_checkpoint_converts_and_loads_strictly(official_swin_grouppose):
    official, swin = official_swin_grouppose
    cfg = swin_cfg()
    converted, report = convert_official_checkpoint(official, cfg)
    assert report.backbone == "Swin (embed 8, depths [2, 2, 2, 2]), window 3"
    index_keys = [k for k in official if k.endswith("relative_position_index")]
    assert len(index_keys) == 8
    assert report.dropped["Swin relative_position_index buffers (derived from the window size)"] \
        == index_keys
    assert report.key_map["backbone.0.layers.2.blocks.1.attn.qkv.weight"] == (
        "backbone.layers.2.blocks.1.attn.qkv.weight")
    assert report.key_map["backbone.0.norm3.bias"] == "backbone.norm3.bias"
    assert report.key_map["backbone.0.layers.0.downsample.reduction.weight"] == (
        "backbone.layers.0.downsample.reduction.weight")

    model = build_model(cfg)
    model.load_state_dict(converted, strict=True)
    model.eval()
    # The converted backbone computes what the reference computes from the official weights,
    # and equals a Swin loaded with the reference names directly (the mapping is the identity
    # on names under the prefixes).
    image = torch.randn(3, 50, 41, generator=torch.Generator().manual_seed(3))
    direct = tiny_swin().eval()
    load_reference_names(direct, swin)
    with torch.no_grad():
        features = model.backbone(image[None])
        direct_features = direct(image[None])
    expected = reference_swin(swin, image, TINY["num_heads"], TINY["window_size"])
    for stage, name in zip((1, 2, 3), ("res3", "res4", "res5")):
        assert torch.equal(features[name], direct_features[name])
        assert (features[name][0] - expected[stage]).abs().max() < ATOL
    with torch.no_grad():
        (result,) = model([{"image": (image * 40 + 128).clamp(0, 255)}])
    assert torch.isfinite(result["instances"].pred_keypoints).all()


def test_official_swin_checkpoint_refusals(official_swin_grouppose):
    official, _ = official_swin_grouppose
    with pytest.raises(ValueError, match="MODEL.SWIN.WINDOW_SIZE=7 but the checkpoint has 3"):
        convert_official_checkpoint(official, swin_cfg(WINDOW_SIZE=7))
    with pytest.raises(ValueError, match=r"MODEL.SWIN.DEPTHS=\[2, 2, 6, 2\] but the checkpoint "
                                         r"has \[2, 2, 2, 2\]"):
        convert_official_checkpoint(official, swin_cfg(DEPTHS=[2, 2, 6, 2]))
    with pytest.raises(ValueError, match="MODEL.BACKBONE.NAME=build_resnet_backbone but the "
                                         "checkpoint's backbone is a Swin"):
        convert_official_checkpoint(official, reference_cfg())
    with pytest.raises(ValueError, match="MODEL.GROUP_POSE.SELF_ATTN='standard' but official "
                                         "checkpoints are of the paper's model"):
        convert_official_checkpoint(official, swin_cfg(SELF_ATTN="standard"))
    wrong_index = dict(official)
    key = "backbone.0.layers.1.blocks.0.attn.relative_position_index"
    wrong_index[key] = wrong_index[key].flip(0)
    with pytest.raises(ValueError, match="not the relative position index of window size 3"):
        convert_official_checkpoint(wrong_index)
    unknown = {**official, "backbone.0.layers.0.blocks.0.attn.mystery": torch.zeros(1)}
    with pytest.raises(ValueError, match="'backbone.0.layers.0.blocks.0.attn.mystery': not a "
                                         "Swin parameter name"):
        convert_official_checkpoint(unknown)


def _opts(cfg):
    swin = cfg.MODEL.SWIN
    return ["MODEL.BACKBONE.NAME", "build_swin_backbone",
            "MODEL.SWIN.EMBED_DIM", str(swin.EMBED_DIM), "MODEL.SWIN.DEPTHS", str(swin.DEPTHS),
            "MODEL.SWIN.NUM_HEADS", str(swin.NUM_HEADS),
            "MODEL.SWIN.WINDOW_SIZE", str(swin.WINDOW_SIZE)]


def test_imagenet_swin_weights_load_into_the_backbone(tmp_path, capsys):
    swin = official_swin_state_dict(**TINY, out_stages=())
    # The classification checkpoint's extras: final norm, head, shifted-window masks.
    imagenet = {**swin, "norm.weight": torch.ones(64), "norm.bias": torch.zeros(64),
                "head.weight": torch.zeros(10, 64), "head.bias": torch.zeros(10),
                "layers.0.blocks.1.attn_mask": torch.zeros(4, 9, 9)}
    source = tmp_path / "swin_imagenet.pth"
    torch.save({"model": imagenet}, source)
    output = tmp_path / "swin_d2.pth"
    tool = converter_tool
    assert tool.main([str(source), str(output), *_opts(swin_cfg())]) == 0
    out = capsys.readouterr().out
    assert "117 keys mapped, dropped 13" in out and "5 classification head" in out

    cfg = swin_cfg()
    model = build_model(cfg)
    _, warnings = load_with_warnings(DetectionCheckpointer(model), str(output))
    assert not [w for w in warnings if UNEXPECTED in w or WRONG_SHAPE in w], warnings
    assert [w for w in warnings if MISSING in w]  # the decoder and the output norms
    # The checkpoint's keys: all loaded, so the missing backbone keys are these.
    checkpoint_keys = set(torch.load(output, weights_only=True)["model"])
    missing_backbone = {k for k in model.state_dict()
                        if k.startswith("backbone.") and k not in checkpoint_keys}
    assert missing_backbone == {f"backbone.norm{i}.{p}" for i in (1, 2, 3)
                                for p in ("weight", "bias")}
    for key, value in swin.items():
        if not key.endswith("relative_position_index"):
            assert torch.equal(model.state_dict()["backbone." + key], value), key

    with pytest.raises(SystemExit) as stop:  # a user error: one line, status 2
        tool.main([str(source), str(output), *_opts(swin_cfg(NUM_HEADS=[2, 2, 2, 4]))])
    assert stop.value.code == 2
    assert "MODEL.SWIN.NUM_HEADS=[2, 2, 2, 4] but the checkpoint has [1, 2, 2, 4]" in (
        capsys.readouterr().err)
    with pytest.raises(ValueError, match="not a Swin parameter name"):
        convert_imagenet_swin({**swin, "absolute_pos_embed": torch.zeros(1)})
    with pytest.raises(ValueError, match="no 'patch_embed.proj.weight'"):
        convert_imagenet_swin({"conv1.weight": torch.zeros(1)})


def test_build_swin_backbone_from_cfg_reads_every_key():
    cfg = swin_cfg(DROP_PATH_RATE=0.3, USE_CHECKPOINT=True, OUT_FEATURES=["res4", "res5"])
    cfg.MODEL.BACKBONE.FREEZE_AT = 1
    backbone = BACKBONE_REGISTRY.get("build_swin_backbone")(cfg, ShapeSpec(channels=3))
    assert list(backbone.output_shape()) == ["res4", "res5"]
    assert backbone.layers[3].blocks[1].drop_path.p == pytest.approx(0.3)
    assert backbone.layers[0].use_checkpoint
    assert not any(p.requires_grad for p in backbone.patch_embed.parameters())
    assert all(p.requires_grad for p in backbone.layers.parameters())
