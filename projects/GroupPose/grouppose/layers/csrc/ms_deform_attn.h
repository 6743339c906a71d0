// Multi-scale deformable attention: what the CPU and CUDA kernels share.
//
// Shapes: value (B, S, M, D), spatial_shapes (L, 2) int64 (H, W), level_start_index (L,) int64,
// sampling_locations (B, Lq, M, L, P, 2) (x, y) in [0, 1], attention_weights (B, Lq, M, L, P),
// output (B, Lq, M * D). All tensors contiguous.
//
// Dtypes: value is float32, float64, float16 or bfloat16; output, grad_output and grad_value
// have value's dtype. sampling_locations and attention_weights each have value's dtype, or
// float32 when value is float16 / bfloat16 (sampling positions need float32 precision: in
// bfloat16 a location on the 167-cell-wide first level of an 800x1333 image would be off by
// up to 0.16 of a cell); their gradients have their dtypes. Kernels compute, and sum, in
// at::opmath_type of value's dtype (float32 for the half types).
#pragma once

#include <ATen/core/Tensor.h>

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define GROUPPOSE_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define GROUPPOSE_HOST_DEVICE inline
#endif

namespace grouppose {

// Sizes of one ms_deform_attn call.
struct MSDeformAttnSizes {
  int64_t batch;     // B
  int64_t values;    // S
  int64_t heads;     // M
  int64_t channels;  // D
  int64_t queries;   // Lq
  int64_t levels;    // L
  int64_t points;    // P
};

// Checks ranks, sizes, dtypes and devices (not the contents of spatial_shapes /
// level_start_index, which may live on the GPU) and returns the sizes.
MSDeformAttnSizes check_ms_deform_attn_inputs(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights);

// The checked sizes and the five inputs, made contiguous (the kernels index raw pointers).
struct MSDeformAttnInputs {
  MSDeformAttnSizes sizes;
  at::Tensor value;
  at::Tensor spatial_shapes;
  at::Tensor level_start_index;
  at::Tensor sampling_locations;
  at::Tensor attention_weights;
};

// check_ms_deform_attn_inputs, then the inputs made contiguous.
MSDeformAttnInputs checked_contiguous_inputs(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights);

// Checks the backward's grad_output: (B, Lq, M * D), of value's dtype and device.
void check_grad_output(const at::Tensor& grad_output, const at::Tensor& value,
                       const MSDeformAttnSizes& sizes);

// The four neighbours of one sampling point on an H x W map, in the grid_sample
// (align_corners=False, zero padding) convention: pixel (i, j) has its center at
// ((j + 0.5) / W, (i + 0.5) / H). Corner k is (y0 + k / 2, x0 + k % 2).
template <typename scalar_t>
struct BilinearCorners {
  int64_t row[4];      // y * W + x of each corner within its level, or -1 outside the map
  scalar_t weight[4];  // bilinear weight of each corner
  scalar_t frac_x;     // position within the cell, needed for the location gradient
  scalar_t frac_y;
};

// Fills `corners` for the normalised location (loc_x, loc_y); returns false when no corner
// lies inside the map (the point samples zero). Non-finite locations sample zero too.
template <typename scalar_t>
GROUPPOSE_HOST_DEVICE bool bilinear_corners(
    scalar_t loc_x,
    scalar_t loc_y,
    int64_t height,
    int64_t width,
    BilinearCorners<scalar_t>& corners) {
  const scalar_t x = loc_x * static_cast<scalar_t>(width) - static_cast<scalar_t>(0.5);
  const scalar_t y = loc_y * static_cast<scalar_t>(height) - static_cast<scalar_t>(0.5);
  // Negated so that NaN also takes this branch, before any float -> int conversion.
  if (!(x > -1 && y > -1 && x < width && y < height)) {
    return false;
  }
  const scalar_t x_floor = std::floor(x);
  const scalar_t y_floor = std::floor(y);
  const int64_t x0 = static_cast<int64_t>(x_floor);
  const int64_t y0 = static_cast<int64_t>(y_floor);
  const scalar_t fx = x - x_floor;
  const scalar_t fy = y - y_floor;
  const bool x0_inside = x0 >= 0;
  const bool x1_inside = x0 + 1 < width;
  const bool y0_inside = y0 >= 0;
  const bool y1_inside = y0 + 1 < height;
  corners.row[0] = y0_inside && x0_inside ? y0 * width + x0 : -1;
  corners.row[1] = y0_inside && x1_inside ? y0 * width + x0 + 1 : -1;
  corners.row[2] = y1_inside && x0_inside ? (y0 + 1) * width + x0 : -1;
  corners.row[3] = y1_inside && x1_inside ? (y0 + 1) * width + x0 + 1 : -1;
  corners.weight[0] = (1 - fy) * (1 - fx);
  corners.weight[1] = (1 - fy) * fx;
  corners.weight[2] = fy * (1 - fx);
  corners.weight[3] = fy * fx;
  corners.frac_x = fx;
  corners.frac_y = fy;
  return true;
}

// Gradient of <grad_output, sample> w.r.t. the point's pixel coordinates x and y, given
// corner_dots[k] = <grad_output, value at corner k> (0 for corners outside the map).
template <typename scalar_t>
GROUPPOSE_HOST_DEVICE void bilinear_location_grad(
    const BilinearCorners<scalar_t>& corners,
    const scalar_t corner_dots[4],
    scalar_t& grad_x,
    scalar_t& grad_y) {
  const scalar_t fx = corners.frac_x;
  const scalar_t fy = corners.frac_y;
  grad_x = (1 - fy) * (corner_dots[1] - corner_dots[0]) + fy * (corner_dots[3] - corner_dots[2]);
  grad_y = (1 - fx) * (corner_dots[2] - corner_dots[0]) + fx * (corner_dots[3] - corner_dots[1]);
}

}  // namespace grouppose
