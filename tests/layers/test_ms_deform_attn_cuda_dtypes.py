"""The CUDA kernels of ms_deform_attn on float16 / bfloat16 values, forward and backward.

Dtype policy: value float16 or bfloat16, sampling_locations and attention_weights each of
value's dtype or float32; the output and grad_value come in value's dtype, the location and
weight gradients in their inputs' dtypes; everything is computed in float32. So each result is
compared with the float64 reference on the same (already rounded) inputs: what remains is the
single rounding of each result to its dtype.

These call the op itself (not the Python wrapper), so that they test the kernels. All need a GPU
(tools/gpu_check.py runs them on one).
"""

import itertools

import pytest
import torch

from grouppose.layers import ms_deform_attn_op as op_module
from grouppose.layers import ms_deform_attn_reference

pytestmark = pytest.mark.cuda

HALF_TYPES = (torch.float16, torch.bfloat16)
# Bound on ||result - float64 reference|| / ||reference|| for results rounded to each dtype: a
# few times the RMS rounding error (unit roundoffs 2^-11, 2^-8 and 2^-24).
RELATIVE_ERROR = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float32: 1e-5}
# (value, sampling_locations, attention_weights) dtypes the policy allows with half values.
DTYPE_CASES = [
    (value, location, weight)
    for value in HALF_TYPES
    for location, weight in itertools.product((value, torch.float32), repeat=2)
]


@pytest.fixture(scope="module")
def cuda_op():
    """The compiled op with its CUDA kernels: on a GPU machine a build without them fails."""
    assert op_module._EXTENSION_ERROR is None, op_module._EXTENSION_ERROR
    assert "cuda" in op_module._KERNEL_DEVICE_TYPES, "grouppose._C has no CUDA kernels: " \
        "rebuild it with FORCE_CUDA=1"
    return torch.ops.grouppose


def make_inputs(B, Lq, M, D, level_shapes, P, dtypes, seed=0):
    """Random CUDA inputs of the given (value, locations, weights) dtypes; locations in
    [-0.1, 1.1] so that some points fall off the map."""
    generator = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(level_shapes, dtype=torch.int64)
    areas = spatial_shapes.prod(dim=1)
    level_start_index = torch.cumsum(areas, dim=0) - areas
    L, S = len(level_shapes), int(areas.sum())
    value = torch.randn(B, S, M, D, generator=generator)
    locations = torch.rand(B, Lq, M, L, P, 2, generator=generator) * 1.2 - 0.1
    weights = torch.rand(B, Lq, M, L, P, generator=generator)
    value, locations, weights = (
        tensor.to(dtype) for tensor, dtype in zip((value, locations, weights), dtypes)
    )
    return [t.cuda() for t in (value, spatial_shapes, level_start_index, locations, weights)]


def reference_output_and_grads(inputs, grad_output):
    """The float64 reference's output and gradients (value, locations, weights) on the CPU."""
    inputs = [t.detach().cpu() for t in inputs]
    for i in (0, 3, 4):
        inputs[i] = inputs[i].double().requires_grad_()
    output = ms_deform_attn_reference(*inputs)
    output.backward(grad_output.double().cpu())
    return [output.detach()] + [inputs[i].grad for i in (0, 3, 4)]


def relative_error(actual, expected):
    return ((actual.double().cpu() - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("dtypes", DTYPE_CASES, ids=lambda d: str(d).replace("torch.", ""))
def test_half_kernels_match_float64_reference(dtypes, cuda_op):
    # D = 40: more channels than a warp has lanes, and not a multiple of them.
    inputs = make_inputs(2, 30, 2, 40, [(6, 7), (3, 4), (1, 2)], 3, dtypes)
    value, _, _, locations, weights = inputs
    output = cuda_op.ms_deform_attn(*inputs)
    grad_output = torch.randn(output.shape, generator=torch.Generator().manual_seed(1))
    grad_output = grad_output.to(value.dtype).cuda()
    grads = cuda_op.ms_deform_attn_backward(grad_output, *inputs)
    expected = reference_output_and_grads(inputs, grad_output)

    results = [output, *grads]
    expected_dtypes = [value.dtype, value.dtype, locations.dtype, weights.dtype]
    names = ["output", "grad_value", "grad_sampling_locations", "grad_attention_weights"]
    for result, reference, dtype, name in zip(results, expected, expected_dtypes, names):
        assert result.dtype == dtype and result.is_cuda, (name, result.dtype, result.device)
        assert torch.isfinite(result).all(), name
        error = relative_error(result, reference)
        assert error < RELATIVE_ERROR[dtype], (name, error)


@pytest.mark.parametrize("dtype", HALF_TYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_autograd_returns_gradients_of_each_input_dtype(dtype, cuda_op):
    """Through the registered autograd formula, with autocast's mix (float32 companions)."""
    inputs = make_inputs(1, 5, 2, 8, [(4, 3)], 2, (dtype, torch.float32, torch.float32))
    for i in (0, 3, 4):
        inputs[i].requires_grad_()
    output = cuda_op.ms_deform_attn(*inputs)
    assert output.dtype == dtype
    grad_output = torch.ones_like(output)
    output.backward(grad_output)
    direct = cuda_op.ms_deform_attn_backward(grad_output, *[t.detach() for t in inputs])
    for i, expected in zip((0, 3, 4), direct):
        assert inputs[i].grad.dtype == inputs[i].dtype
        assert torch.equal(inputs[i].grad, expected)


@pytest.mark.parametrize("dtype", HALF_TYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_grad_value_accumulates_in_float32(dtype, cuda_op):
    """4096 queries sample the center of one pixel with positive weights and gradients: its
    grad_value sums 4096 terms of 0.25 on average to about 1000, where a float16 accumulator
    would drop most of them (its spacing there is 0.5 to 1, bfloat16's 4 to 8). Accumulated in
    float32 and rounded once, the sum is within the dtype's rounding."""
    value, spatial_shapes, level_start_index, locations, weights = make_inputs(
        1, 4096, 1, 32, [(4, 4)], 1, (dtype, torch.float32, torch.float32)
    )
    locations.fill_(1.5 / 4)  # pixel (1, 1)'s center: all of a point's weight on that pixel
    grad_output = torch.rand(1, 4096, 32, generator=torch.Generator().manual_seed(1))
    grad_output = grad_output.to(dtype).cuda()
    grad_value = cuda_op.ms_deform_attn_backward(
        grad_output, value, spatial_shapes, level_start_index, locations, weights
    )[0]
    expected = (weights.double().view(4096, 1) * grad_output.double().view(4096, 32)).sum(0)
    unit_roundoff = 2.0**-11 if dtype == torch.float16 else 2.0**-8
    torch.testing.assert_close(grad_value[0, 5, 0].double(), expected,
                               rtol=2 * unit_roundoff, atol=0)
    assert not grad_value[0, torch.arange(16) != 5].any()


def test_half_forward_and_backward_do_not_synchronize(cuda_op):
    inputs = make_inputs(2, 4, 3, 4, [(4, 5), (2, 3)], 2,
                         (torch.float16, torch.float32, torch.float32))
    for i in (0, 3, 4):
        inputs[i].requires_grad_()
    torch.cuda.set_sync_debug_mode("error")
    try:
        cuda_op.ms_deform_attn(*inputs).float().sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
