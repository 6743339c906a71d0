"""The CPU inference fast paths compute what the plain (training) paths compute: oneDNN linear
with fused ReLU / residual, autocast casts kept between calls, FrozenBN folded into convolutions,
the FFN by row blocks, channels-last backbone input. Each is compared with the path that
gradients take, and its caches are checked to follow weight changes."""

import pytest
import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling import build_model
from helpers.tiny_grouppose import tiny_config
from torch import nn

from grouppose.layers import Linear, plain_inference
from grouppose.layers.linear import linear, runs_onednn
from grouppose.modeling.backbone.frozen_batch_norm import (
    FrozenBNConv2d,
    use_affine_frozen_batch_norm,
)
from grouppose.modeling.blocks import FeedForward
from grouppose.modeling.meta_arch import _backbone_layout

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(),
    reason="the fast paths need oneDNN (torch.backends.mkldnn)",
)


def plain_and_fast(function, *inputs):
    """``function(*inputs)`` with gradients recorded (the plain path) and without (fast)."""
    with torch.enable_grad():
        plain = function(*inputs).detach()
    with torch.no_grad():
        fast = function(*inputs)
    return plain, fast


@pytest.fixture
def layer():
    torch.manual_seed(0)
    return Linear(64, 48)


def test_linear_fast_path_runs_only_at_cpu_inference():
    x = torch.zeros(3, 4)
    assert not runs_onednn(x)  # gradients are recorded by default
    with torch.no_grad():
        assert runs_onednn(x)


@pytest.mark.parametrize("method", ["forward", "forward_relu", "forward_add"])
def test_linear_fused_paths_match_the_plain_path(layer, method):
    x, residual = torch.randn(2, 37, 64), torch.randn(2, 37, 48)
    expected = {
        "forward": lambda: nn.functional.linear(x, layer.weight, layer.bias),
        "forward_relu": lambda: nn.functional.linear(x, layer.weight, layer.bias).relu(),
        "forward_add": lambda: nn.functional.linear(x, layer.weight, layer.bias) + residual,
    }[method]().detach()
    args = (x, residual) if method == "forward_add" else (x,)
    plain, fast = plain_and_fast(getattr(layer, method), *args)
    torch.testing.assert_close(plain, expected)
    torch.testing.assert_close(fast, expected, rtol=1e-5, atol=1e-5)


def test_linear_refuses_relu_and_residual_together(layer):
    with pytest.raises(ValueError, match="relu and residual"):
        linear(torch.zeros(1, 64), layer.weight, layer.bias, relu=True,
               residual=torch.zeros(1, 48))


def test_linear_under_bf16_autocast_keeps_the_cast_weights_until_they_change(layer):
    x = torch.randn(5, 64)

    def not_cached():
        raise AssertionError("the cast weights were not kept")

    def run_and_compare():
        with torch.no_grad():
            expected = nn.functional.linear(x, layer.weight, layer.bias)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                output = layer(x)
        assert output.dtype == torch.bfloat16
        torch.testing.assert_close(output.float(), expected, rtol=2e-2, atol=2e-2)

    run_and_compare()
    weight, _ = layer._cast_parameters.get((layer.weight, layer.bias), not_cached,
                                           variant=torch.bfloat16)
    assert weight.dtype == torch.bfloat16
    with torch.no_grad():
        layer.weight.mul_(2)  # an in-place update (an optimizer step) must be seen
    run_and_compare()


def frozen_bn_conv() -> FrozenBNConv2d:
    torch.manual_seed(0)
    norm = FrozenBatchNorm2d(8)
    norm.weight.uniform_(0.5, 2)
    norm.bias.normal_()
    norm.running_mean.normal_()
    norm.running_var.uniform_(0.5, 2)
    module = nn.Sequential(Conv2d(3, 8, 3, padding=1, bias=False, norm=norm,
                                  activation=torch.relu))
    conv = use_affine_frozen_batch_norm(module)[0]
    assert type(conv) is FrozenBNConv2d
    return conv


def test_frozen_bn_conv_folded_at_inference_matches_conv_then_norm():
    conv = frozen_bn_conv()
    x = torch.randn(2, 3, 11, 13)
    plain, fast = plain_and_fast(conv, x)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    # The fold follows a new checkpoint: loading weights updates the tensors in place.
    state = {k: v * 1.5 if k.endswith("weight") else v for k, v in conv.state_dict().items()}
    conv.load_state_dict(state)
    plain, fast = plain_and_fast(conv, x)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)


def test_frozen_bn_conv_under_bf16_autocast_matches_float32():
    conv = frozen_bn_conv()
    x = torch.randn(2, 3, 11, 13)
    with torch.no_grad():
        expected = conv(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            folded = conv(x)
    assert folded.dtype == torch.bfloat16
    torch.testing.assert_close(folded.float(), expected, rtol=3e-2, atol=3e-2)


def test_feed_forward_by_row_blocks_matches_the_plain_path():
    torch.manual_seed(0)
    ffn = FeedForward(32, 64).eval()
    # More rows than one block, and a last block that is not full.
    x = torch.randn(2, FeedForward.INFERENCE_BLOCK_ROWS + 77, 32)
    plain, fast = plain_and_fast(ffn, x)
    assert fast.shape == x.shape
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)


def test_feed_forward_keeps_the_plain_path_in_training_mode():
    torch.manual_seed(0)
    ffn = FeedForward(32, 64, dropout=0.5).train()
    x = torch.randn(4, 32)
    with torch.no_grad():
        torch.manual_seed(1)
        first = ffn(x)
        torch.manual_seed(1)
        assert torch.equal(first, ffn(x))  # dropout is applied: not the inference blocks
        ffn.eval()
        assert not torch.allclose(first, ffn(x))


def test_plain_inference_turns_every_fast_path_off():
    conv = frozen_bn_conv()
    x = torch.randn(1, 3, 9, 9)
    with torch.enable_grad():
        training_path = conv(x).detach()
    with torch.no_grad(), plain_inference():
        assert not runs_onednn(x)
        assert torch.equal(conv(x), training_path)  # conv then norm, not folded
        assert _backbone_layout(x) is x
    with torch.no_grad():
        assert runs_onednn(x)
        assert _backbone_layout(x).is_contiguous(memory_format=torch.channels_last)


def test_fast_and_plain_inference_give_the_same_poses():
    cfg = tiny_config()
    cfg.MODEL.WEIGHTS = ""
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    inputs = [{"image": torch.rand(3, 70, 100) * 255}]

    def poses():
        (output,) = model(inputs)
        return torch.cat([output["instances"].pred_keypoints.flatten(1),
                          output["instances"].scores[:, None]], dim=1)

    with torch.no_grad():
        fast = poses()
        with plain_inference():
            plain = poses()
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-4)
