"""Multi-scale deformable attention: the compiled op (CPU and CUDA) against the pure-PyTorch
reference and the official implementation's tensors, its gradients, half precision,
torch.compile / torch.export, input validation and the MSDeformAttn module."""

import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from grouppose.layers import (
    MSDeformAttn,
    ms_deform_attn,
    ms_deform_attn_reference,
    reference_op,
    reference_op_enabled,
)
from grouppose.layers import ms_deform_attn_op as op_module

ARGUMENT_NAMES = (
    "value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights"
)
DIFFERENTIABLE = (0, 3, 4)  # value, sampling_locations, attention_weights


@pytest.fixture(scope="module")
def compiled_op():
    """Require grouppose._C: skip without it (fail in CI), so that no test silently compares
    the reference fallback with itself."""
    error = op_module._EXTENSION_ERROR
    if error is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(error)
        pytest.skip(error)
    return torch.ops.grouppose.ms_deform_attn


def make_inputs(B, Lq, M, D, level_shapes, P, dtype=torch.float32, seed=0):
    """Random op inputs; locations in [-0.1, 1.1] so that some points fall off the map."""
    generator = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(level_shapes, dtype=torch.int64)
    areas = spatial_shapes.prod(dim=1)
    level_start_index = torch.cumsum(areas, dim=0) - areas
    L = len(level_shapes)
    S = int(areas.sum())
    value = torch.randn(B, S, M, D, generator=generator, dtype=dtype)
    locations = torch.rand(B, Lq, M, L, P, 2, generator=generator, dtype=dtype) * 1.2 - 0.1
    weights = torch.rand(B, Lq, M, L, P, generator=generator, dtype=dtype)
    return value, spatial_shapes, level_start_index, locations, weights


def output_and_grads(fn, inputs, cotangent=None):
    """fn(*inputs) and the gradients of <output, cotangent> w.r.t. the differentiable inputs."""
    inputs = [t.detach().clone() for t in inputs]
    for i in DIFFERENTIABLE:
        inputs[i].requires_grad_()
    output = fn(*inputs)
    if cotangent is None:
        cotangent = torch.randn(output.shape, generator=torch.Generator().manual_seed(1),
                                dtype=output.dtype).to(output.device)
    (output * cotangent).sum().backward()
    return [output.detach()] + [inputs[i].grad for i in DIFFERENTIABLE]


def assert_close_to_magnitude(actual, expected, tolerance):
    """|actual - expected| <= tolerance * max(1, max|expected|) elementwise: an absolute
    tolerance for O(1) tensors that scales with large ones (location gradients reach ~W)."""
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=0, atol=tolerance * scale)


# Shapes (B, Lq, M, D, level_shapes, P): unequal levels, B > 1, large Lq, P = 1, L = 1.
SHAPES = [
    (2, 7, 2, 4, [(6, 5), (3, 3), (1, 2)], 3),
    (1, 2000, 4, 8, [(16, 20), (8, 10)], 2),
    (3, 10, 2, 16, [(5, 7), (2, 3)], 1),
    (2, 30, 1, 32, [(9, 4)], 4),
]


def test_reference_matches_official(reference_dir):
    data = torch.load(reference_dir / "ms_deform_attn.pt")
    inputs = [data[name] for name in ARGUMENT_NAMES]
    results = output_and_grads(ms_deform_attn_reference, inputs, data["cotangent"])
    expected_names = ("output", "grad_value", "grad_sampling_locations", "grad_attention_weights")
    for result, name in zip(results, expected_names):
        torch.testing.assert_close(result, data[name], rtol=0, atol=1e-5, msg=name)


def test_op_matches_official(reference_dir, compiled_op):
    """Output and value gradient to 1e-5. The location gradient reaches 184 (weight gradient
    21), where a float32 ulp is 1.5e-5: the official float32 result itself is 1.8e-4 away from
    the float64 one, so these two are compared to 1e-5 of their largest magnitude."""
    data = torch.load(reference_dir / "ms_deform_attn.pt")
    inputs = [data[name] for name in ARGUMENT_NAMES]
    results = output_and_grads(ms_deform_attn, inputs, data["cotangent"])
    expected_names = ("output", "grad_value", "grad_sampling_locations", "grad_attention_weights")
    for result, name in zip(results, expected_names):
        assert_close_to_magnitude(result, data[name], 1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_op_matches_reference(shape, compiled_op):
    inputs = make_inputs(*shape)
    actual = output_and_grads(ms_deform_attn, inputs)
    expected = output_and_grads(ms_deform_attn_reference, inputs)
    torch.testing.assert_close(actual[0], expected[0], rtol=0, atol=1e-5)
    for actual_grad, expected_grad in zip(actual[1:], expected[1:]):
        assert_close_to_magnitude(actual_grad, expected_grad, 1e-5)


# D = 32 takes the CPU forward's fixed-size channel path, D = 3 the generic one.
@pytest.mark.parametrize("channels", [3, 32])
def test_gradcheck_borders_and_outside(channels, compiled_op):
    value, spatial_shapes, level_start_index, locations, weights = make_inputs(
        2, 4, 2, channels, [(3, 4), (2, 1), (1, 3)], 3, dtype=torch.float64
    )
    # Exactly on the map's borders (pixel coordinate -0.5 or size - 0.5: smooth points of the
    # bilinear interpolation), partly and completely outside the map.
    locations[0, 0, :, :, 0] = torch.tensor([0.0, 0.3], dtype=torch.float64)
    locations[0, 0, :, :, 1] = torch.tensor([1.0, 1.0], dtype=torch.float64)
    locations[0, 1, :, :, 0] = torch.tensor([0.4, 0.0], dtype=torch.float64)
    locations[0, 1, :, :, 1] = torch.tensor([-0.05, 1.07], dtype=torch.float64)
    locations[1, 0, :, :, 0] = torch.tensor([-0.7, 0.5], dtype=torch.float64)
    locations[1, 0, :, :, 1] = torch.tensor([1.2, 1.9], dtype=torch.float64)
    for tensor in (value, locations, weights):
        tensor.requires_grad_()
    assert torch.autograd.gradcheck(
        ms_deform_attn, (value, spatial_shapes, level_start_index, locations, weights)
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_is_deterministic_across_thread_counts(dtype, compiled_op):
    inputs = list(make_inputs(1, 500, 2, 8, [(4, 4), (2, 2)], 4))  # many points per position
    inputs[0] = inputs[0].to(dtype)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single_threaded = output_and_grads(ms_deform_attn, inputs)
        torch.set_num_threads(max(2, threads))
        multi_threaded = output_and_grads(ms_deform_attn, inputs)
    finally:
        torch.set_num_threads(threads)
    for single, multi in zip(single_threaded, multi_threaded):
        assert torch.equal(single, multi)


def test_non_contiguous_inputs(compiled_op):
    inputs = make_inputs(2, 5, 3, 4, [(4, 3), (2, 2)], 2)
    non_contiguous = [
        inputs[0].transpose(0, 1).contiguous().transpose(0, 1),
        torch.stack([inputs[1], inputs[1]], dim=-1)[..., 0],
        torch.stack([inputs[2], inputs[2]], dim=-1)[..., 1],
        inputs[3].transpose(1, 2).contiguous().transpose(1, 2),
        inputs[4].permute(4, 3, 2, 1, 0).contiguous().permute(4, 3, 2, 1, 0),
    ]
    assert not any(tensor.is_contiguous() for tensor in non_contiguous)
    for actual, expected in zip(
        output_and_grads(ms_deform_attn, non_contiguous), output_and_grads(ms_deform_attn, inputs)
    ):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)


HALF_DTYPES = [torch.bfloat16, torch.float16]


def half_precision_inputs(dtype, shape=(2, 40, 3, 32, [(6, 5), (3, 3)], 4)):
    """make_inputs with value rounded to `dtype` (locations and weights stay float32), and the
    same inputs in float32 for the float32 kernel."""
    inputs = list(make_inputs(*shape))
    inputs[0] = inputs[0].to(dtype)
    float_inputs = list(inputs)
    float_inputs[0] = inputs[0].float()
    return inputs, float_inputs


@pytest.mark.parametrize("channels", [8, 32])
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_precision_matches_float32_kernel(dtype, channels, compiled_op):
    """Half value (float32 locations and weights, as under autocast) against the float32 kernel
    on the same rounded values: the kernels compute in float32, so the half output and value
    gradient are the float32 ones rounded once (within one half-precision ulp), and the
    float32 location and weight gradients are the float32 kernel's."""
    inputs, float_inputs = half_precision_inputs(dtype, (2, 40, 3, channels, [(6, 5), (3, 3)], 4))
    cotangent = torch.randn(2, 40, 3 * channels, generator=torch.Generator().manual_seed(1))
    actual = output_and_grads(ms_deform_attn, inputs, cotangent.to(dtype))
    expected = output_and_grads(ms_deform_attn, float_inputs, cotangent.to(dtype).float())
    assert [t.dtype for t in actual] == [dtype, dtype, torch.float32, torch.float32]
    eps = torch.finfo(dtype).eps
    for name, index in (("output", 0), ("grad_value", 1)):
        torch.testing.assert_close(actual[index].float(), expected[index], rtol=eps, atol=1e-5,
                                   msg=name)
    for index in (2, 3):  # grad_sampling_locations, grad_attention_weights
        assert_close_to_magnitude(actual[index], expected[index], 1e-5)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_locations_and_weights_are_cast_to_float32(dtype, compiled_op):
    """All-half inputs: locations and weights are cast to float32 (exactly), and their
    gradients come back in their dtype."""
    inputs, _ = half_precision_inputs(dtype)
    for index in (3, 4):
        inputs[index] = inputs[index].to(dtype)
    actual = output_and_grads(ms_deform_attn, inputs)
    cast = list(inputs)
    cast[3], cast[4] = inputs[3].float(), inputs[4].float()
    expected = output_and_grads(ms_deform_attn, cast)
    assert [t.dtype for t in actual] == [dtype] * 4
    assert torch.equal(actual[0], expected[0]) and torch.equal(actual[1], expected[1])
    assert torch.equal(actual[2], expected[2].to(dtype))
    assert torch.equal(actual[3], expected[3].to(dtype))


def test_reference_computes_half_values_in_float32():
    inputs, float_inputs = half_precision_inputs(torch.bfloat16)
    output = ms_deform_attn_reference(*inputs)
    assert output.dtype == torch.bfloat16
    assert torch.equal(output, ms_deform_attn_reference(*float_inputs).to(torch.bfloat16))


class RecordOps(TorchDispatchMode):
    """Records the ATen / custom ops that run, with their tensor arguments."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((func, [a for a in args if isinstance(a, torch.Tensor)]))
        return func(*args, **(kwargs or {}))


def test_autocast_calls_the_half_kernel_without_copying_value(compiled_op):
    """Under CPU autocast value comes from a bfloat16 linear layer and the locations stay
    float32: the op gets value as it is (no float32 copy) and returns bfloat16."""
    inputs = list(make_inputs(2, 40, 3, 32, [(6, 5), (3, 3)], 4))
    features = inputs[0].flatten(2)  # (B, S, M * D)
    projection = torch.nn.Linear(96, 96)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = projection(features).view(inputs[0].shape)
        assert value.dtype == torch.bfloat16
        with RecordOps() as recorded:
            output = ms_deform_attn(value, *inputs[1:])
    assert output.dtype == torch.bfloat16
    op_calls = [args for func, args in recorded.calls
                if func == torch.ops.grouppose.ms_deform_attn.default]
    assert len(op_calls) == 1 and op_calls[0][0].dtype == torch.bfloat16
    copies = [func for func, args in recorded.calls if args and args[0].shape == value.shape]
    assert copies == [torch.ops.grouppose.ms_deform_attn.default], copies
    expected = ms_deform_attn(value.float(), *inputs[1:])
    torch.testing.assert_close(output.float(), expected, rtol=torch.finfo(torch.bfloat16).eps,
                               atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_meta_tensors_give_the_output_shape_and_dtype(dtype, compiled_op):
    inputs = [t.to("meta") for t in make_inputs(2, 5, 3, 4, [(4, 3), (2, 2)], 2)]
    inputs[0] = inputs[0].to(dtype)
    output = ms_deform_attn(*inputs)
    assert output.device.type == "meta" and output.shape == (2, 5, 12)
    assert output.dtype == dtype


# float64, and autocast's mix: a bfloat16 value with float32 locations and weights.
@pytest.mark.parametrize("value_dtype", [torch.float64, torch.bfloat16])
def test_opcheck(value_dtype, compiled_op):
    """Schema, fake kernel, autograd registration and AOT dispatch of the registered op."""
    dtype = torch.float64 if value_dtype == torch.float64 else torch.float32
    inputs = list(make_inputs(2, 6, 2, 4, [(3, 4), (2, 2)], 2, dtype=dtype))
    inputs[0] = inputs[0].to(value_dtype)
    for i in DIFFERENTIABLE:
        inputs[i].requires_grad_()
    torch.library.opcheck(compiled_op.default, tuple(inputs))


# aot_eager traces through Dynamo, the fake kernel and AOT autograd in a second; inductor
# also generates and compiles C++ (about a minute on 2 cores).
@pytest.mark.parametrize(("backend", "value_dtype"), [
    ("aot_eager", torch.float32),
    ("aot_eager", torch.bfloat16),
    pytest.param("inductor", torch.float32, marks=pytest.mark.slow),
])
def test_torch_compile_fullgraph(backend, value_dtype, compiled_op):
    def attend_and_scale(*inputs):
        return ms_deform_attn(*inputs).relu() * 2

    inputs = list(make_inputs(2, 9, 2, 8, [(5, 6), (3, 3)], 2))
    inputs[0] = inputs[0].to(value_dtype)
    compiled = torch.compile(attend_and_scale, fullgraph=True, backend=backend)
    actual = output_and_grads(compiled, inputs)
    assert actual[0].dtype == actual[1].dtype == value_dtype  # the fake kernel's dtype
    for actual_tensor, expected in zip(actual, output_and_grads(attend_and_scale, inputs)):
        torch.testing.assert_close(actual_tensor, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("reference_dim", [2, 4])
def test_torch_export_module(reference_dim, compiled_op):
    torch.manual_seed(0)
    module = MSDeformAttn(dim=32, num_heads=4, num_levels=2, num_points=2).eval()
    args = module_inputs(module, B=2, Lq=5, level_shapes=[(6, 5), (3, 3)],
                         reference_dim=reference_dim)
    exported = torch.export.export(module, args)
    targets = [node.target for node in exported.graph.nodes]
    assert torch.ops.grouppose.ms_deform_attn.default in targets
    torch.testing.assert_close(exported.module()(*args), module(*args), rtol=0, atol=1e-6)


BAD_INPUTS = [
    # (argument index, replacement maker, message fragment)
    (0, lambda t: t[0], r"value must have shape \(B, S, M, D\)"),
    (0, lambda t: t.to(torch.int32), "value must be float32, float64, float16 or bfloat16"),
    (0, lambda t: t.to(torch.float8_e4m3fn), "value must be float32, float64, float16 or bf"),
    (1, lambda t: t[:, :1], r"spatial_shapes must have shape \(L, 2\)"),
    (1, lambda t: t.float(), "spatial_shapes must be int64"),
    (1, lambda t: t + 1, "spatial_shapes must hold positive"),
    (2, lambda t: t[:1], r"level_start_index must have shape \(L,\) = \(2,\)"),
    (2, lambda t: t + 1, r"level_start_index must be \[0, 20\]"),
    (3, lambda t: t[..., :1], r"sampling_locations must have shape \(B, Lq, M, L, P, 2\)"),
    (3, lambda t: t[:, :, :1], r"sampling_locations must have shape .* = \(2, Lq, 3, 2, P, 2\)"),
    (3, lambda t: t.double(),
     r"sampling_locations must have value's dtype torch.float32, got torch.float64"),
    (4, lambda t: t.half(),
     r"attention_weights must have value's dtype torch.float32, got torch.float16"),
    (4, lambda t: t[..., :1], r"attention_weights must have shape \(B, Lq, M, L, P\)"),
    (4, lambda t: t.to("meta"), "attention_weights is on meta"),
]


@pytest.mark.parametrize(("index", "make_bad", "message"), BAD_INPUTS)
def test_validation_errors(index, make_bad, message):
    inputs = list(make_inputs(2, 4, 3, 4, [(4, 5), (2, 3)], 2))
    inputs[index] = make_bad(inputs[index])
    with pytest.raises(ValueError, match=message):
        ms_deform_attn(*inputs)


# With a half value, sampling_locations / attention_weights may have its dtype or float32.
HALF_VALUE_BAD_DTYPES = [
    (torch.bfloat16, torch.float64, torch.float32,
     r"sampling_locations must have value's dtype torch.bfloat16 or float32, got torch.float64"),
    (torch.bfloat16, torch.float32, torch.float16,
     r"attention_weights must have value's dtype torch.bfloat16 or float32, got torch.float16"),
    (torch.float16, torch.bfloat16, torch.float32,
     r"sampling_locations must have value's dtype torch.float16 or float32, got torch.bfloat16"),
]


@pytest.mark.parametrize(("value_dtype", "locations_dtype", "weights_dtype", "message"),
                         HALF_VALUE_BAD_DTYPES)
def test_half_value_dtype_errors(value_dtype, locations_dtype, weights_dtype, message):
    inputs = list(make_inputs(2, 4, 3, 4, [(4, 5), (2, 3)], 2))
    for index, dtype in ((0, value_dtype), (3, locations_dtype), (4, weights_dtype)):
        inputs[index] = inputs[index].to(dtype)
    with pytest.raises(ValueError, match=message):
        ms_deform_attn(*inputs)


# The compiled op's own checks (shared by its CPU and CUDA kernels), for direct calls.
OP_BAD_DTYPES = [
    (torch.int32, torch.float32, torch.float32,
     "value must be float32, float64, float16 or bfloat16, got Int"),
    (torch.float32, torch.float64, torch.float32,
     "sampling_locations must have value's dtype Float, got Double"),
    (torch.float64, torch.float64, torch.float32,
     "attention_weights must have value's dtype Double, got Float"),
    (torch.bfloat16, torch.float16, torch.float32,
     "sampling_locations must have value's dtype BFloat16 or float32, got Half"),
    (torch.float16, torch.float32, torch.float64,
     "attention_weights must have value's dtype Half or float32, got Double"),
]


@pytest.mark.parametrize(("value_dtype", "locations_dtype", "weights_dtype", "message"),
                         OP_BAD_DTYPES)
def test_op_dtype_errors(value_dtype, locations_dtype, weights_dtype, message, compiled_op):
    inputs = list(make_inputs(2, 4, 3, 4, [(4, 5), (2, 3)], 2))
    for index, dtype in ((0, value_dtype), (3, locations_dtype), (4, weights_dtype)):
        inputs[index] = inputs[index].to(dtype)
    with pytest.raises(RuntimeError, match=message):
        compiled_op(*inputs)


@pytest.mark.parametrize("value_dtype", [torch.float16, torch.bfloat16])
def test_op_accepts_half_locations_and_weights(value_dtype, compiled_op):
    """Direct calls may pass value's half dtype for locations and weights (the wrapper passes
    float32): same results as with them in float32, gradients in their dtypes."""
    inputs, _ = half_precision_inputs(value_dtype)
    for index in (3, 4):
        inputs[index] = inputs[index].to(value_dtype)
    cast = list(inputs)
    cast[3], cast[4] = inputs[3].float(), inputs[4].float()
    grad_output = torch.randn(2, 40, 96).to(value_dtype)
    assert torch.equal(compiled_op(*inputs), compiled_op(*cast))
    actual = torch.ops.grouppose.ms_deform_attn_backward(grad_output, *inputs)
    expected = torch.ops.grouppose.ms_deform_attn_backward(grad_output, *cast)
    assert [t.dtype for t in actual] == [value_dtype] * 3
    for actual_tensor, expected_tensor in zip(actual, expected):
        assert torch.equal(actual_tensor, expected_tensor.to(value_dtype))


@pytest.mark.parametrize(("index", "make_bad"), [(1, lambda t: t + 1), (2, lambda t: t + 1)])
def test_device_side_level_check(index, make_bad):
    # On accelerators the level checks run as an asynchronous device assertion (no host sync);
    # on CPU tensors torch._assert_async raises at once, which exercises the same expression.
    inputs = list(make_inputs(2, 4, 3, 4, [(4, 5), (2, 3)], 2))
    S = inputs[0].shape[1]
    op_module._assert_levels_on_device(inputs[1], inputs[2], S)
    inputs[index] = make_bad(inputs[index])
    with pytest.raises(RuntimeError, match="level_start_index must be their running sum"):
        op_module._assert_levels_on_device(inputs[1], inputs[2], S)


@pytest.mark.cuda
def test_cuda_forward_and_backward_do_not_synchronize(compiled_op):
    inputs = [t.cuda() for t in make_inputs(2, 4, 3, 4, [(4, 5), (2, 3)], 2)]
    for i in DIFFERENTIABLE:
        inputs[i].requires_grad_()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ms_deform_attn(*inputs).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_fallback_warns_once_and_uses_reference(monkeypatch):
    monkeypatch.setattr(op_module, "_EXTENSION_ERROR", "grouppose._C is missing (test)")
    monkeypatch.setattr(op_module, "_warned_reasons", set())
    inputs = make_inputs(2, 4, 3, 4, [(4, 5), (2, 3)], 2)
    with pytest.warns(UserWarning, match=r"reference: grouppose._C is missing \(test\)") as caught:
        first = ms_deform_attn(*inputs)
        second = ms_deform_attn(*inputs)
    assert len(caught) == 1
    expected = ms_deform_attn_reference(*inputs)
    assert torch.equal(first, expected) and torch.equal(second, expected)


def compiled_op_calls(recorded: RecordOps) -> int:
    return sum(func == torch.ops.grouppose.ms_deform_attn.default for func, _ in recorded.calls)


def test_reference_op_runs_the_reference_inside_its_block(compiled_op):
    inputs = make_inputs(2, 4, 3, 4, [(4, 5), (2, 3)], 2)
    with RecordOps() as recorded:
        compiled = ms_deform_attn(*inputs)
    assert compiled_op_calls(recorded) == 1 and not reference_op_enabled()
    with reference_op(), RecordOps() as recorded:
        assert reference_op_enabled()
        inside = ms_deform_attn(*inputs)
    assert compiled_op_calls(recorded) == 0
    assert torch.equal(inside, ms_deform_attn_reference(*inputs))
    assert_close_to_magnitude(inside, compiled, 1e-5)
    assert not reference_op_enabled()


def test_reference_op_switches_the_module_and_restores_on_error(compiled_op):
    """MSDeformAttn goes through ms_deform_attn, so the switch reaches the model; nested blocks
    and an exception leave it as it was."""
    torch.manual_seed(0)
    module = MSDeformAttn(dim=16, num_heads=2, num_levels=2, num_points=2).eval()
    args = module_inputs(module, B=1, Lq=5, level_shapes=[(4, 4), (2, 2)], reference_dim=2)
    with torch.no_grad():
        with reference_op(), RecordOps() as recorded:
            with reference_op():
                pass
            assert reference_op_enabled()  # still on after the inner block
            reference = module(*args)
        assert compiled_op_calls(recorded) == 0
        with RecordOps() as recorded:
            compiled = module(*args)
        assert compiled_op_calls(recorded) == 1
    torch.testing.assert_close(compiled, reference, rtol=0, atol=1e-5)
    with pytest.raises(RuntimeError, match="inside"), reference_op():
        raise RuntimeError("inside")
    assert not reference_op_enabled()


def module_inputs(module, B, Lq, level_shapes, reference_dim, seed=0):
    """Random MSDeformAttn.forward arguments (no padding mask)."""
    generator = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(level_shapes, dtype=torch.int64)
    areas = spatial_shapes.prod(dim=1)
    level_start_index = torch.cumsum(areas, dim=0) - areas
    S = int(areas.sum())
    query = torch.randn(B, Lq, module.dim, generator=generator)
    reference_points = torch.rand(B, Lq, module.num_levels, reference_dim, generator=generator)
    input_flatten = torch.randn(B, S, module.dim, generator=generator)
    return query, reference_points, input_flatten, spatial_shapes, level_start_index


def test_module_initialisation():
    module = MSDeformAttn(dim=64, num_heads=8, num_levels=3, num_points=2)
    assert not module.sampling_offsets.weight.any()
    offsets = module.sampling_offsets.bias.view(8, 3, 2, 2)
    # Head 0 points along +x, head 2 along +y, head 1 on the diagonal; point p at ring p + 1.
    torch.testing.assert_close(offsets[0, :, 1], torch.tensor([[2.0, 0.0]] * 3))
    torch.testing.assert_close(offsets[2, :, 0], torch.tensor([[0.0, 1.0]] * 3), atol=1e-6,
                               rtol=0)
    torch.testing.assert_close(offsets[1, 0, 1], torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(offsets[:, :, 1], offsets[:, :, 0] * 2)
    assert not module.attention_weights.weight.any() and not module.attention_weights.bias.any()
    assert not module.value_proj.bias.any() and not module.output_proj.bias.any()
    assert module.value_proj.weight.abs().max() <= (6 / (64 + 64)) ** 0.5


@pytest.mark.parametrize("reference_dim", [2, 4])
def test_module_sampling_locations(reference_dim):
    """The module samples where the agreed interface says: ref + offset / (W_l, H_l) for
    points, ref_xy + offset / num_points * ref_wh / 2 for boxes."""
    torch.manual_seed(0)
    module = MSDeformAttn(dim=16, num_heads=2, num_levels=2, num_points=3)
    for parameter in module.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    args = module_inputs(module, B=2, Lq=4, level_shapes=[(5, 6), (2, 3)],
                         reference_dim=reference_dim)
    query, reference_points, input_flatten, spatial_shapes, level_start_index = args
    B, Lq, _ = query.shape
    offsets = module.sampling_offsets(query).view(B, Lq, 2, 2, 3, 2)
    references = reference_points[:, :, None, :, None, :]
    if reference_dim == 2:
        locations = references + offsets / torch.tensor([[6.0, 5.0], [3.0, 2.0]])[:, None, :]
    else:
        locations = references[..., :2] + offsets / 3 * references[..., 2:] / 2
    weights = module.attention_weights(query).view(B, Lq, 2, 6).softmax(-1).view(B, Lq, 2, 2, 3)
    value = module.value_proj(input_flatten).view(B, -1, 2, 8)
    expected = module.output_proj(ms_deform_attn_reference(
        value, spatial_shapes, level_start_index, locations, weights
    ))
    torch.testing.assert_close(module(*args), expected, rtol=0, atol=1e-5)


def test_module_padding_mask_hides_padded_values():
    torch.manual_seed(0)
    module = MSDeformAttn(dim=16, num_heads=2, num_levels=2, num_points=4)
    torch.nn.init.normal_(module.sampling_offsets.weight, std=1.0)
    args = list(module_inputs(module, B=2, Lq=6, level_shapes=[(4, 4), (2, 2)], reference_dim=2))
    padding_mask = torch.zeros(2, 20, dtype=torch.bool)
    padding_mask[0, 12:16] = padding_mask[1, 3:20:4] = True
    changed = args.copy()
    changed[2] = args[2] + 100 * padding_mask[..., None]
    with torch.no_grad():
        torch.testing.assert_close(module(*changed, padding_mask), module(*args, padding_mask))
        assert not torch.allclose(module(*changed), module(*args))


def test_module_rejects_bad_reference_points():
    module = MSDeformAttn(dim=16, num_heads=2, num_levels=2, num_points=1)
    args = list(module_inputs(module, B=2, Lq=3, level_shapes=[(2, 2), (1, 1)], reference_dim=2))
    args[1] = args[1][..., :1]
    with pytest.raises(ValueError, match=r"reference_points must have shape \(B, Lq, L, 2 or 4\)"):
        module(*args)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_cuda_matches_cpu(shape, dtype, compiled_op):
    inputs = make_inputs(*shape, dtype=dtype)
    expected = output_and_grads(ms_deform_attn, inputs)
    actual = output_and_grads(ms_deform_attn, [t.cuda() for t in inputs])
    tolerance = 1e-5 if dtype == torch.float32 else 1e-10
    for actual_tensor, expected_tensor in zip(actual, expected):
        assert actual_tensor.is_cuda
        assert_close_to_magnitude(actual_tensor.cpu(), expected_tensor, tolerance)


@pytest.mark.cuda
def test_cuda_gradcheck(compiled_op):
    # D = 35: more channels than a warp has lanes.
    inputs = [t.cuda() for t in make_inputs(2, 3, 2, 35, [(3, 4), (2, 1)], 2, torch.float64)]
    for i in DIFFERENTIABLE:
        inputs[i].requires_grad_()
    assert torch.autograd.gradcheck(ms_deform_attn, tuple(inputs))


@pytest.mark.parametrize("channels", [4, 32])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_non_finite_and_huge_locations_sample_zero(device, channels, compiled_op):
    inputs = make_inputs(1, 3, 2, channels, [(3, 4)], 1)  # one point per query and head
    inputs[3][0, :, 0, 0, 0] = torch.tensor(
        [[float("nan"), 0.5], [0.5, float("inf")], [-1e30, 1e30]]
    )
    output = ms_deform_attn(*[t.to(device) for t in inputs])
    assert torch.equal(output[..., :channels].cpu(), torch.zeros(1, 3, channels))  # head 0
    assert output[..., channels:].abs().sum() > 0  # head 1
