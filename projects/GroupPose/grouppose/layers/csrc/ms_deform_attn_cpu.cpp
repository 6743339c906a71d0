// CPU kernels of ms_deform_attn: fused forward and backward that never materialise the
// per-point sampled values.
//
// Forward: parallel over (batch, head, query); each (n, q, m) output row is the weighted sum
// of the four corner rows of every sampling point.
// Backward: parallel over (batch, head, level) triples. The corners of a point on level l of
// head m of image n lie in grad_value[n, level l rows, m, :], so each triple owns a disjoint
// slice of grad_value (and of the location/weight gradients) and accumulates into it in a
// fixed order: no shared writes, bit-identical results for any thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>

#include "ms_deform_attn.h"

namespace grouppose {
namespace {

template <typename scalar_t>
inline void axpy(int64_t n, scalar_t alpha, const scalar_t* __restrict__ x,
                 scalar_t* __restrict__ y) {
  for (int64_t i = 0; i < n; ++i) {
    y[i] += alpha * x[i];
  }
}

template <typename scalar_t>
inline scalar_t dot(int64_t n, const scalar_t* __restrict__ x, const scalar_t* __restrict__ y) {
  scalar_t sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    sum += x[i] * y[i];
  }
  return sum;
}

// spatial_shapes / level_start_index are on the CPU here: check that every level is a
// non-empty slice of value, so that the kernels never read outside it.
void check_levels(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                  const MSDeformAttnSizes& sizes) {
  const int64_t* shapes = spatial_shapes.const_data_ptr<int64_t>();
  const int64_t* starts = level_start_index.const_data_ptr<int64_t>();
  for (int64_t level = 0; level < sizes.levels; ++level) {
    const int64_t height = shapes[2 * level];
    const int64_t width = shapes[2 * level + 1];
    TORCH_CHECK(height > 0 && width > 0 && starts[level] >= 0 &&
                    starts[level] + height * width <= sizes.values,
                "ms_deform_attn: level ", level, " (H=", height, ", W=", width, ", start ",
                starts[level], ") does not fit in value's ", sizes.values, " positions");
  }
}

template <typename scalar_t>
void forward_kernel(const MSDeformAttnSizes& sizes, const scalar_t* value, const int64_t* shapes,
                    const int64_t* starts, const scalar_t* locations, const scalar_t* weights,
                    scalar_t* output) {
  const int64_t D = sizes.channels;
  const int64_t row_stride = sizes.heads * D;  // between consecutive positions of value
  const int64_t points_per_head = sizes.levels * sizes.points;
  // Ordered (n, m, q) so that each thread works through one head's slice of value (S * D
  // values) at a time, which stays in cache far better than all heads' values. One (n, m, q)
  // costs L * P * 4 * D multiply-adds.
  constexpr int64_t grain_size = 64;
  at::parallel_for(0, sizes.batch * sizes.heads * sizes.queries, grain_size, [&](int64_t begin,
                                                                                 int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t q = task % sizes.queries;
      const int64_t m = task / sizes.queries % sizes.heads;
      const int64_t n = task / (sizes.queries * sizes.heads);
      const int64_t head = (n * sizes.queries + q) * sizes.heads + m;  // flat (n, q, m)
      scalar_t* out = output + head * D;
      std::fill(out, out + D, scalar_t(0));
      const scalar_t* head_weights = weights + head * points_per_head;
      const scalar_t* head_locations = locations + head * points_per_head * 2;
      for (int64_t level = 0; level < sizes.levels; ++level) {
        const int64_t height = shapes[2 * level];
        const int64_t width = shapes[2 * level + 1];
        const scalar_t* level_value = value + (n * sizes.values + starts[level]) * row_stride +
                                      m * D;
        for (int64_t i = level * sizes.points; i < (level + 1) * sizes.points; ++i) {
          BilinearCorners<scalar_t> corners;
          if (!bilinear_corners(head_locations[2 * i], head_locations[2 * i + 1], height, width,
                                corners)) {
            continue;
          }
          for (int k = 0; k < 4; ++k) {
            if (corners.row[k] >= 0) {
              axpy(D, head_weights[i] * corners.weight[k],
                   level_value + corners.row[k] * row_stride, out);
            }
          }
        }
      }
    }
  });
}

template <typename scalar_t>
void backward_kernel(const MSDeformAttnSizes& sizes, const scalar_t* grad_output,
                     const scalar_t* value, const int64_t* shapes, const int64_t* starts,
                     const scalar_t* locations, const scalar_t* weights, scalar_t* grad_value,
                     scalar_t* grad_locations, scalar_t* grad_weights) {
  const int64_t D = sizes.channels;
  const int64_t row_stride = sizes.heads * D;
  const int64_t points_per_head = sizes.levels * sizes.points;
  // Each (n, m, l) processes Lq * P points: large, equal tasks.
  at::parallel_for(0, sizes.batch * sizes.heads * sizes.levels, 1, [&](int64_t begin,
                                                                        int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t level = task % sizes.levels;
      const int64_t m = task / sizes.levels % sizes.heads;
      const int64_t n = task / (sizes.levels * sizes.heads);
      const int64_t height = shapes[2 * level];
      const int64_t width = shapes[2 * level + 1];
      const int64_t level_offset = (n * sizes.values + starts[level]) * row_stride + m * D;
      const scalar_t* level_value = value + level_offset;
      scalar_t* level_grad_value = grad_value + level_offset;
      for (int64_t q = 0; q < sizes.queries; ++q) {
        const int64_t head = (n * sizes.queries + q) * sizes.heads + m;  // flat (n, q, m)
        const scalar_t* grad_out = grad_output + head * D;
        const int64_t first_point = head * points_per_head + level * sizes.points;
        for (int64_t i = first_point; i < first_point + sizes.points; ++i) {
          BilinearCorners<scalar_t> corners;
          if (!bilinear_corners(locations[2 * i], locations[2 * i + 1], height, width,
                                corners)) {
            grad_weights[i] = 0;
            grad_locations[2 * i] = 0;
            grad_locations[2 * i + 1] = 0;
            continue;
          }
          const scalar_t attention = weights[i];
          scalar_t corner_dots[4] = {0, 0, 0, 0};
          scalar_t grad_weight = 0;
          for (int k = 0; k < 4; ++k) {
            if (corners.row[k] >= 0) {
              const int64_t offset = corners.row[k] * row_stride;
              corner_dots[k] = dot(D, grad_out, level_value + offset);
              grad_weight += corners.weight[k] * corner_dots[k];
              axpy(D, attention * corners.weight[k], grad_out, level_grad_value + offset);
            }
          }
          scalar_t grad_x;
          scalar_t grad_y;
          bilinear_location_grad(corners, corner_dots, grad_x, grad_y);
          grad_weights[i] = grad_weight;
          // x = loc_x * W - 0.5, y = loc_y * H - 0.5.
          grad_locations[2 * i] = attention * grad_x * static_cast<scalar_t>(width);
          grad_locations[2 * i + 1] = attention * grad_y * static_cast<scalar_t>(height);
        }
      }
    }
  });
}

at::Tensor ms_deform_attn_cpu(const at::Tensor& value_in, const at::Tensor& spatial_shapes_in,
                              const at::Tensor& level_start_index_in,
                              const at::Tensor& sampling_locations_in,
                              const at::Tensor& attention_weights_in) {
  const MSDeformAttnInputs in =
      checked_contiguous_inputs(value_in, spatial_shapes_in, level_start_index_in,
                                sampling_locations_in, attention_weights_in);
  const MSDeformAttnSizes& sizes = in.sizes;
  check_levels(in.spatial_shapes, in.level_start_index, sizes);
  at::Tensor output =
      at::empty({sizes.batch, sizes.queries, sizes.heads * sizes.channels}, in.value.options());
  AT_DISPATCH_FLOATING_TYPES(in.value.scalar_type(), "ms_deform_attn_cpu", [&] {
    forward_kernel<scalar_t>(sizes, in.value.const_data_ptr<scalar_t>(),
                             in.spatial_shapes.const_data_ptr<int64_t>(),
                             in.level_start_index.const_data_ptr<int64_t>(),
                             in.sampling_locations.const_data_ptr<scalar_t>(),
                             in.attention_weights.const_data_ptr<scalar_t>(),
                             output.data_ptr<scalar_t>());
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& grad_output_in, const at::Tensor& value_in,
    const at::Tensor& spatial_shapes_in, const at::Tensor& level_start_index_in,
    const at::Tensor& sampling_locations_in, const at::Tensor& attention_weights_in) {
  const MSDeformAttnInputs in =
      checked_contiguous_inputs(value_in, spatial_shapes_in, level_start_index_in,
                                sampling_locations_in, attention_weights_in);
  const MSDeformAttnSizes& sizes = in.sizes;
  check_grad_output(grad_output_in, value_in, sizes);
  const at::Tensor grad_output = grad_output_in.contiguous();
  check_levels(in.spatial_shapes, in.level_start_index, sizes);
  // Positions that no point samples keep a zero gradient; the other two are fully written.
  at::Tensor grad_value = at::zeros_like(in.value);
  at::Tensor grad_locations = at::empty_like(in.sampling_locations);
  at::Tensor grad_weights = at::empty_like(in.attention_weights);
  AT_DISPATCH_FLOATING_TYPES(in.value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
    backward_kernel<scalar_t>(sizes, grad_output.const_data_ptr<scalar_t>(),
                              in.value.const_data_ptr<scalar_t>(),
                              in.spatial_shapes.const_data_ptr<int64_t>(),
                              in.level_start_index.const_data_ptr<int64_t>(),
                              in.sampling_locations.const_data_ptr<scalar_t>(),
                              in.attention_weights.const_data_ptr<scalar_t>(),
                              grad_value.data_ptr<scalar_t>(), grad_locations.data_ptr<scalar_t>(),
                              grad_weights.data_ptr<scalar_t>());
  });
  return {grad_value, grad_locations, grad_weights};
}

}  // namespace

TORCH_LIBRARY_IMPL(grouppose, CPU, m) {
  m.impl("ms_deform_attn", &ms_deform_attn_cpu);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward_cpu);
}

}  // namespace grouppose
