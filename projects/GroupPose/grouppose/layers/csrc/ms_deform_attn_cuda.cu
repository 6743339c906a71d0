// CUDA kernels of ms_deform_attn.
//
// One warp per (n, q, m) head row; lane d handles channels d, d + 32, ... so that every
// access to value, grad_value, output and grad_output is coalesced. The sampling geometry of a
// point is the same for all lanes (computed redundantly, no divergence).
// Backward: the per-point dot products <grad_output, corner value> are reduced across the warp
// with shuffles; grad_value is accumulated with atomicAdd (a position is sampled by many
// queries), so its float rounding may vary from run to run (unlike the CPU kernel).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

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

template <typename scalar_t>
__device__ __forceinline__ scalar_t warp_sum(scalar_t x) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    x += __shfl_xor_sync(0xffffffff, x, offset);
  }
  return x;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreadsPerBlock)
    forward_kernel(const MSDeformAttnSizes sizes, const scalar_t* __restrict__ value,
                   const int64_t* __restrict__ shapes, const int64_t* __restrict__ starts,
                   const scalar_t* __restrict__ locations, const scalar_t* __restrict__ weights,
                   scalar_t* __restrict__ output) {
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
  const scalar_t* head_weights = weights + head * points_per_head;
  const scalar_t* head_locations = locations + head * points_per_head * 2;
  for (int64_t d = lane; d < D; d += kWarpSize) {
    scalar_t sum = 0;
    for (int64_t level = 0; level < sizes.levels; ++level) {
      int64_t height, width, start;
      if (!level_geometry(sizes, shapes, starts, level, height, width, start)) {
        continue;
      }
      const scalar_t* level_value = value + (n * sizes.values + start) * row_stride + m * D + d;
      for (int64_t i = level * sizes.points; i < (level + 1) * sizes.points; ++i) {
        BilinearCorners<scalar_t> corners;
        if (!bilinear_corners(head_locations[2 * i], head_locations[2 * i + 1], height, width,
                              corners)) {
          continue;
        }
        scalar_t sample = 0;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (corners.row[k] >= 0) {
            sample += corners.weight[k] * level_value[corners.row[k] * row_stride];
          }
        }
        sum += head_weights[i] * sample;
      }
    }
    output[head * D + d] = sum;
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreadsPerBlock)
    backward_kernel(const MSDeformAttnSizes sizes, const scalar_t* __restrict__ grad_output,
                    const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
                    const int64_t* __restrict__ starts, const scalar_t* __restrict__ locations,
                    const scalar_t* __restrict__ weights, scalar_t* __restrict__ grad_value,
                    scalar_t* __restrict__ grad_locations, scalar_t* __restrict__ grad_weights) {
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
    scalar_t* level_grad_value = grad_value + level_offset;
    for (int64_t i = head * points_per_head + level * sizes.points;
         i < head * points_per_head + (level + 1) * sizes.points; ++i) {
      BilinearCorners<scalar_t> corners;
      if (!bilinear_corners(locations[2 * i], locations[2 * i + 1], height, width, corners)) {
        continue;
      }
      const scalar_t attention = weights[i];
      scalar_t corner_dots[4] = {0, 0, 0, 0};
      for (int64_t d = lane; d < D; d += kWarpSize) {
        const scalar_t grad = grad_out[d];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (corners.row[k] >= 0) {
            const int64_t offset = corners.row[k] * row_stride + d;
            corner_dots[k] += grad * level_value[offset];
            atomicAdd(level_grad_value + offset, attention * corners.weight[k] * grad);
          }
        }
      }
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        corner_dots[k] = warp_sum(corner_dots[k]);
      }
      if (lane == 0) {
        scalar_t grad_weight = 0;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          grad_weight += corners.weight[k] * corner_dots[k];
        }
        scalar_t grad_x, grad_y;
        bilinear_location_grad(corners, corner_dots, grad_x, grad_y);
        grad_weights[i] = grad_weight;
        // x = loc_x * W - 0.5, y = loc_y * H - 0.5.
        grad_locations[2 * i] = attention * grad_x * static_cast<scalar_t>(width);
        grad_locations[2 * i + 1] = attention * grad_y * static_cast<scalar_t>(height);
      }
    }
  }
}

int64_t num_blocks(const MSDeformAttnSizes& sizes) {
  const int64_t heads = sizes.batch * sizes.queries * sizes.heads;
  return (heads + kWarpsPerBlock - 1) / kWarpsPerBlock;
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
  AT_DISPATCH_FLOATING_TYPES(in.value.scalar_type(), "ms_deform_attn_cuda", [&] {
    forward_kernel<scalar_t><<<num_blocks(sizes), kThreadsPerBlock, 0,
                               c10::cuda::getCurrentCUDAStream()>>>(
        sizes, in.value.const_data_ptr<scalar_t>(), in.spatial_shapes.const_data_ptr<int64_t>(),
        in.level_start_index.const_data_ptr<int64_t>(),
        in.sampling_locations.const_data_ptr<scalar_t>(),
        in.attention_weights.const_data_ptr<scalar_t>(), output.data_ptr<scalar_t>());
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
  at::Tensor grad_value = at::zeros_like(in.value);
  at::Tensor grad_locations = at::zeros_like(in.sampling_locations);
  at::Tensor grad_weights = at::zeros_like(in.attention_weights);
  if (grad_output.numel() == 0) {
    return {grad_value, grad_locations, grad_weights};
  }
  AT_DISPATCH_FLOATING_TYPES(in.value.scalar_type(), "ms_deform_attn_backward_cuda", [&] {
    backward_kernel<scalar_t><<<num_blocks(sizes), kThreadsPerBlock, 0,
                                c10::cuda::getCurrentCUDAStream()>>>(
        sizes, grad_output.const_data_ptr<scalar_t>(), in.value.const_data_ptr<scalar_t>(),
        in.spatial_shapes.const_data_ptr<int64_t>(),
        in.level_start_index.const_data_ptr<int64_t>(),
        in.sampling_locations.const_data_ptr<scalar_t>(),
        in.attention_weights.const_data_ptr<scalar_t>(), grad_value.data_ptr<scalar_t>(),
        grad_locations.data_ptr<scalar_t>(), grad_weights.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_value, grad_locations, grad_weights};
}

}  // namespace

TORCH_LIBRARY_IMPL(grouppose, CUDA, m) {
  m.impl("ms_deform_attn", &ms_deform_attn_cuda);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward_cuda);
}

}  // namespace grouppose
