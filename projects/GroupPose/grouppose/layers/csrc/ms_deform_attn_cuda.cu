// CUDA kernels of ms_deform_attn.
//
// One warp per (n, q, m) head row; lane d handles channels d, d + 32, ... so that every
// access to value, grad_value, output and grad_output is coalesced. The sampling geometry of a
// point is the same for all lanes (computed redundantly, no divergence).
// Backward: the per-point dot products <grad_output, corner value> are reduced across the warp
// with shuffles; grad_value is accumulated with atomicAdd (a position is sampled by many
// queries), so its float rounding may vary from run to run (unlike the CPU kernel).
//
// Dtypes: the policy of ms_deform_attn.h; a kernel is instantiated for each value dtype and
// each dtype its sampling_locations and attention_weights may have, and computes in
// at::opmath_type of value's dtype. A half grad_value is accumulated in a float32 buffer, then
// converted once: atomicAdd on float16 / bfloat16 is a slow compare-and-swap loop, and would
// round at every addition (a position's sum grows over many queries, so most of the small
// late terms would be lost).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <type_traits>

#include "ms_deform_attn.h"

namespace grouppose {
namespace {

constexpr int kWarpSize = 32;
constexpr int kThreadsPerBlock = 256;
constexpr int kWarpsPerBlock = kThreadsPerBlock / kWarpSize;

// Level `level`'s (H, W) and first position; false when it does not fit in value (the
// contents of spatial_shapes are checked in Python, but a direct op call must not read out of
// bounds).
__device__ __forceinline__ bool level_geometry(const MSDeformAttnSizes& sizes,
                                               const int64_t* shapes, const int64_t* starts,
                                               int64_t level, int64_t& height, int64_t& width,
                                               int64_t& start) {
  height = shapes[2 * level];
  width = shapes[2 * level + 1];
  start = starts[level];
  return height > 0 && width > 0 && start >= 0 && start + height * width <= sizes.values;
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t x) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    x += __shfl_xor_sync(0xffffffff, x, offset);
  }
  return x;
}

// scalar_t: value's element type; location_t / weight_t: those of sampling_locations /
// attention_weights (scalar_t, or float for a half scalar_t).
template <typename scalar_t, typename location_t, typename weight_t>
__global__ void __launch_bounds__(kThreadsPerBlock)
    forward_kernel(const MSDeformAttnSizes sizes, const scalar_t* __restrict__ value,
                   const int64_t* __restrict__ shapes, const int64_t* __restrict__ starts,
                   const location_t* __restrict__ locations,
                   const weight_t* __restrict__ weights, scalar_t* __restrict__ output) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t head = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock +
                       threadIdx.x / kWarpSize;  // flat (n, q, m)
  if (head >= sizes.batch * sizes.queries * sizes.heads) {
    return;
  }
  const int lane = threadIdx.x % kWarpSize;
  const int64_t D = sizes.channels;
  const int64_t row_stride = sizes.heads * D;
  const int64_t n = head / (sizes.queries * sizes.heads);
  const int64_t m = head % sizes.heads;
  const int64_t points_per_head = sizes.levels * sizes.points;
  const weight_t* head_weights = weights + head * points_per_head;
  const location_t* head_locations = locations + head * points_per_head * 2;
  for (int64_t d = lane; d < D; d += kWarpSize) {
    acc_t sum = 0;
    for (int64_t level = 0; level < sizes.levels; ++level) {
      int64_t height, width, start;
      if (!level_geometry(sizes, shapes, starts, level, height, width, start)) {
        continue;
      }
      const scalar_t* level_value = value + (n * sizes.values + start) * row_stride + m * D + d;
      for (int64_t i = level * sizes.points; i < (level + 1) * sizes.points; ++i) {
        BilinearCorners<acc_t> corners;
        if (!bilinear_corners(static_cast<acc_t>(head_locations[2 * i]),
                              static_cast<acc_t>(head_locations[2 * i + 1]), height, width,
                              corners)) {
          continue;
        }
        acc_t sample = 0;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (corners.row[k] >= 0) {
            sample += corners.weight[k] *
                      static_cast<acc_t>(level_value[corners.row[k] * row_stride]);
          }
        }
        sum += static_cast<acc_t>(head_weights[i]) * sample;
      }
    }
    output[head * D + d] = static_cast<scalar_t>(sum);
  }
}

// grad_value has value's shape in acc_t: value's own tensor for float32 / float64, a float32
// buffer for the half types.
template <typename scalar_t, typename location_t, typename weight_t>
__global__ void __launch_bounds__(kThreadsPerBlock)
    backward_kernel(const MSDeformAttnSizes sizes, const scalar_t* __restrict__ grad_output,
                    const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
                    const int64_t* __restrict__ starts, const location_t* __restrict__ locations,
                    const weight_t* __restrict__ weights,
                    at::opmath_type<scalar_t>* __restrict__ grad_value,
                    location_t* __restrict__ grad_locations,
                    weight_t* __restrict__ grad_weights) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t head = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock +
                       threadIdx.x / kWarpSize;  // flat (n, q, m); uniform across the warp
  if (head >= sizes.batch * sizes.queries * sizes.heads) {
    return;
  }
  const int lane = threadIdx.x % kWarpSize;
  const int64_t D = sizes.channels;
  const int64_t row_stride = sizes.heads * D;
  const int64_t n = head / (sizes.queries * sizes.heads);
  const int64_t m = head % sizes.heads;
  const int64_t points_per_head = sizes.levels * sizes.points;
  const scalar_t* grad_out = grad_output + head * D;
  // Points that sample nothing keep the zero gradients their outputs were initialised with.
  for (int64_t level = 0; level < sizes.levels; ++level) {
    int64_t height, width, start;
    if (!level_geometry(sizes, shapes, starts, level, height, width, start)) {
      continue;
    }
    const int64_t level_offset = (n * sizes.values + start) * row_stride + m * D;
    const scalar_t* level_value = value + level_offset;
    acc_t* level_grad_value = grad_value + level_offset;
    for (int64_t i = head * points_per_head + level * sizes.points;
         i < head * points_per_head + (level + 1) * sizes.points; ++i) {
      BilinearCorners<acc_t> corners;
      if (!bilinear_corners(static_cast<acc_t>(locations[2 * i]),
                            static_cast<acc_t>(locations[2 * i + 1]), height, width, corners)) {
        continue;
      }
      const acc_t attention = static_cast<acc_t>(weights[i]);
      acc_t corner_dots[4] = {0, 0, 0, 0};
      for (int64_t d = lane; d < D; d += kWarpSize) {
        const acc_t grad = static_cast<acc_t>(grad_out[d]);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (corners.row[k] >= 0) {
            const int64_t offset = corners.row[k] * row_stride + d;
            corner_dots[k] += grad * static_cast<acc_t>(level_value[offset]);
            atomicAdd(level_grad_value + offset, attention * corners.weight[k] * grad);
          }
        }
      }
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        corner_dots[k] = warp_sum(corner_dots[k]);
      }
      if (lane == 0) {
        acc_t grad_weight = 0;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          grad_weight += corners.weight[k] * corner_dots[k];
        }
        acc_t grad_x, grad_y;
        bilinear_location_grad(corners, corner_dots, grad_x, grad_y);
        grad_weights[i] = static_cast<weight_t>(grad_weight);
        // x = loc_x * W - 0.5, y = loc_y * H - 0.5.
        grad_locations[2 * i] = static_cast<location_t>(attention * grad_x *
                                                        static_cast<acc_t>(width));
        grad_locations[2 * i + 1] = static_cast<location_t>(attention * grad_y *
                                                            static_cast<acc_t>(height));
      }
    }
  }
}

int64_t num_blocks(const MSDeformAttnSizes& sizes) {
  const int64_t heads = sizes.batch * sizes.queries * sizes.heads;
  return (heads + kWarpsPerBlock - 1) / kWarpsPerBlock;
}

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls launch(TypeTag<T>{}) with T the element type of `tensor`, one of sampling_locations /
// attention_weights: scalar_t, or float next to a half value. The shared input checks admit no
// other dtype; the assertion keeps a change there from making a kernel misread the memory.
template <typename scalar_t, typename Launch>
void dispatch_companion_type(const at::Tensor& tensor, const Launch& launch) {
  if constexpr (std::is_same_v<at::opmath_type<scalar_t>, float> &&
                !std::is_same_v<scalar_t, float>) {
    if (tensor.scalar_type() == at::kFloat) {
      launch(TypeTag<float>{});
      return;
    }
  }
  TORCH_INTERNAL_ASSERT(tensor.scalar_type() == c10::CppTypeToScalarType<scalar_t>::value,
                        "ms_deform_attn: unexpected dtype ", tensor.scalar_type());
  launch(TypeTag<scalar_t>{});
}

// Runs launch(scalar_t, location_t, weight_t tags) for the inputs' dtypes.
template <typename Launch>
void dispatch_types(const MSDeformAttnInputs& in, const Launch& launch) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.value.scalar_type(),
                                  "ms_deform_attn_cuda", [&] {
    dispatch_companion_type<scalar_t>(in.sampling_locations, [&](auto location_tag) {
      dispatch_companion_type<scalar_t>(in.attention_weights, [&](auto weight_tag) {
        launch(TypeTag<scalar_t>{}, location_tag, weight_tag);
      });
    });
  });
}

at::Tensor ms_deform_attn_cuda(const at::Tensor& value_in, const at::Tensor& spatial_shapes_in,
                               const at::Tensor& level_start_index_in,
                               const at::Tensor& sampling_locations_in,
                               const at::Tensor& attention_weights_in) {
  const MSDeformAttnInputs in =
      checked_contiguous_inputs(value_in, spatial_shapes_in, level_start_index_in,
                                sampling_locations_in, attention_weights_in);
  const MSDeformAttnSizes& sizes = in.sizes;
  const c10::cuda::CUDAGuard device_guard(value_in.device());
  at::Tensor output =
      at::empty({sizes.batch, sizes.queries, sizes.heads * sizes.channels}, in.value.options());
  if (output.numel() == 0) {
    return output;
  }
  dispatch_types(in, [&](auto scalar_tag, auto location_tag, auto weight_tag) {
    using scalar_t = typename decltype(scalar_tag)::type;
    using location_t = typename decltype(location_tag)::type;
    using weight_t = typename decltype(weight_tag)::type;
    forward_kernel<scalar_t, location_t, weight_t>
        <<<num_blocks(sizes), kThreadsPerBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
            sizes, in.value.const_data_ptr<scalar_t>(),
            in.spatial_shapes.const_data_ptr<int64_t>(),
            in.level_start_index.const_data_ptr<int64_t>(),
            in.sampling_locations.const_data_ptr<location_t>(),
            in.attention_weights.const_data_ptr<weight_t>(), output.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& grad_output_in, const at::Tensor& value_in,
    const at::Tensor& spatial_shapes_in, const at::Tensor& level_start_index_in,
    const at::Tensor& sampling_locations_in, const at::Tensor& attention_weights_in) {
  const MSDeformAttnInputs in =
      checked_contiguous_inputs(value_in, spatial_shapes_in, level_start_index_in,
                                sampling_locations_in, attention_weights_in);
  const MSDeformAttnSizes& sizes = in.sizes;
  check_grad_output(grad_output_in, value_in, sizes);
  const c10::cuda::CUDAGuard device_guard(value_in.device());
  const at::Tensor grad_output = grad_output_in.contiguous();
  const at::ScalarType value_type = in.value.scalar_type();
  // For float32 / float64 this is grad_value itself, and the final .to() returns it as is.
  at::Tensor grad_value_acc =
      at::zeros(in.value.sizes(), in.value.options().dtype(at::toOpMathType(value_type)));
  at::Tensor grad_locations = at::zeros_like(in.sampling_locations);
  at::Tensor grad_weights = at::zeros_like(in.attention_weights);
  if (grad_output.numel() > 0) {
    dispatch_types(in, [&](auto scalar_tag, auto location_tag, auto weight_tag) {
      using scalar_t = typename decltype(scalar_tag)::type;
      using location_t = typename decltype(location_tag)::type;
      using weight_t = typename decltype(weight_tag)::type;
      backward_kernel<scalar_t, location_t, weight_t>
          <<<num_blocks(sizes), kThreadsPerBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
              sizes, grad_output.const_data_ptr<scalar_t>(),
              in.value.const_data_ptr<scalar_t>(), in.spatial_shapes.const_data_ptr<int64_t>(),
              in.level_start_index.const_data_ptr<int64_t>(),
              in.sampling_locations.const_data_ptr<location_t>(),
              in.attention_weights.const_data_ptr<weight_t>(),
              grad_value_acc.data_ptr<at::opmath_type<scalar_t>>(),
              grad_locations.data_ptr<location_t>(), grad_weights.data_ptr<weight_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {grad_value_acc.to(value_type), grad_locations, grad_weights};
}

}  // namespace

TORCH_LIBRARY_IMPL(grouppose, CUDA, m) {
  m.impl("ms_deform_attn", &ms_deform_attn_cuda);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward_cuda);
}

}  // namespace grouppose
