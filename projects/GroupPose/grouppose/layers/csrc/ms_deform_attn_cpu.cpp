// CPU kernels of ms_deform_attn: fused forward and backward that never materialise the
// per-point sampled values.
//
// Forward: parallel over (batch, head, query) rows. Each (n, q, m) output row is the weighted
// sum of the four corner rows of each of its L * P sampling points. A row is computed in two
// passes: the corners of all its points in one branch-free loop over the points, which
// vectorises across them (it needs -fno-trapping-math, see setup.py), then up to 4 * L * P
// weighted row additions, in the order of the points and corners, into D accumulators that
// stay in registers (D = 32, Group Pose's d_model / heads, has this fixed-size path; other D
// accumulate in memory).
// Backward: parallel over (batch, head, level) triples. The corners of a point on level l of
// head m of image n lie in grad_value[n, level l rows, m, :], so each triple owns a disjoint
// slice of grad_value (and of the location/weight gradients) and accumulates into it in a
// fixed order: no shared writes, bit-identical results for any thread count.
//
// Dtypes (the policy of ms_deform_attn.h): value of float32, float64, float16 or bfloat16;
// everything else (locations, attention weights, sums) in opmath_t = at::opmath_type of value's
// dtype. Half locations / weights, which the input checks admit next to a half value, are
// converted to float32 before the kernels and their gradients converted back. A half
// grad_value is accumulated in a float32 buffer and converted once at the end.
//
// Vectorisation: the extension is built for baseline x86-64 (SSE2) so that one binary runs
// on any x86-64 CPU. The per-chunk kernel functions are compiled three times with GCC
// function multi-versioning (x86-64-v4 = AVX-512, v3 = AVX2 + FMA, baseline) and the dynamic
// loader picks the best clone the CPU supports. Their helpers are force-inlined so that they
// are compiled for the clone's target too. Results may differ across CPUs in float rounding
// (FMA contraction, vector width), never across runs or thread counts on one machine.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <vector>

#include "ms_deform_attn.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define GROUPPOSE_CPU_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define GROUPPOSE_CPU_CLONES
#endif
#if defined(__GNUC__)
#define GROUPPOSE_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define GROUPPOSE_ALWAYS_INLINE inline
#endif

namespace grouppose {
namespace {

// Channels of the forward's fixed-size path: d_model 256 over 8 heads.
constexpr int64_t kFixedChannels = 32;

// How many queries ahead the kernels prefetch their per-query inputs and outputs.
constexpr int64_t kPrefetchQueries = 8;

// Software prefetch of `count` elements at `data` (kWrite: about to be written). Both kernels
// walk the per-query rows of one head (of locations, weights, output / grad_output), M rows
// apart (1 KB for Group Pose's shapes): a stride that the hardware prefetchers do not follow
// across pages. Measured: the backward takes half the time, the forward about 5% less.
template <int kWrite, typename T>
GROUPPOSE_ALWAYS_INLINE void prefetch(const T* data, int64_t count) {
  constexpr uintptr_t kCacheLine = 64;
  const uintptr_t end = reinterpret_cast<uintptr_t>(data + count);
  for (uintptr_t line = reinterpret_cast<uintptr_t>(data) & ~(kCacheLine - 1); line < end;
       line += kCacheLine) {
    __builtin_prefetch(reinterpret_cast<const void*>(line), kWrite);
  }
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
    // The forward computes positions within a level, and one row past it, in 32-bit integers.
    TORCH_CHECK((height + 1) * width <= std::numeric_limits<int32_t>::max(),
                "ms_deform_attn: level ", level, " (H=", height, ", W=", width,
                ") is too large for the CPU kernel's 32-bit positions");
  }
}

// The level geometry of each of a head's L * P points (point i lies on level i / P), so that
// the forward's corner loop runs over points without a nested level loop.
template <typename opmath_t>
struct PointLevels {
  std::vector<opmath_t> width;         // (L * P,) W of the point's level
  std::vector<opmath_t> height;        // (L * P,) H
  std::vector<int32_t> width_int;      // (L * P,) W
  std::vector<int32_t> height_int;     // (L * P,) H
  std::vector<int64_t> start_offset;   // (L * P,) level start * M * D: the level's offset in value

  PointLevels(const MSDeformAttnSizes& sizes, const int64_t* shapes, const int64_t* starts) {
    for (int64_t i = 0; i < sizes.levels * sizes.points; ++i) {
      const int64_t level = i / sizes.points;
      height.push_back(static_cast<opmath_t>(shapes[2 * level]));
      width.push_back(static_cast<opmath_t>(shapes[2 * level + 1]));
      height_int.push_back(static_cast<int32_t>(shapes[2 * level]));
      width_int.push_back(static_cast<int32_t>(shapes[2 * level + 1]));
      start_offset.push_back(starts[level] * sizes.heads * sizes.channels);
    }
  }
};

// The corners of one row's L * P points, corner-major: position[k][i] is the position within
// its level (y * W + x) of corner k of point i, or -1 when that corner or the whole point is
// off the map; weight[k][i] is its bilinear weight times the point's attention weight.
// Corner k is (y0 + k / 2, x0 + k % 2), as in BilinearCorners.
template <typename opmath_t>
struct RowCorners {
  std::vector<int32_t> position[4];
  std::vector<opmath_t> weight[4];

  explicit RowCorners(int64_t points) {
    for (int k = 0; k < 4; ++k) {
      position[k].resize(points);
      weight[k].resize(points);
    }
  }
};

template <typename scalar_t>
struct ForwardArgs {
  using opmath_t = at::opmath_type<scalar_t>;
  MSDeformAttnSizes sizes;
  const scalar_t* value;       // (B, S, M, D)
  const opmath_t* locations;   // (B, Lq, M, L, P, 2)
  const opmath_t* weights;     // (B, Lq, M, L, P)
  const PointLevels<opmath_t>* levels;
  scalar_t* output;            // (B, Lq, M * D)
};

// The bilinear_corners arithmetic for the LP points of a row at `locations` / `attention`,
// written without branches (`&` of comparisons, selects, floor from truncation) so that the
// loop vectorises across points. Each output array is its own restrict pointer: the
// vectoriser would otherwise check at run time that they do not overlap.
template <typename opmath_t>
GROUPPOSE_ALWAYS_INLINE void row_corners(
    int64_t LP, const opmath_t* __restrict__ locations, const opmath_t* __restrict__ attention,
    const opmath_t* __restrict__ widths, const opmath_t* __restrict__ heights,
    const int32_t* __restrict__ widths_int, const int32_t* __restrict__ heights_int,
    int32_t* __restrict__ position0, int32_t* __restrict__ position1,
    int32_t* __restrict__ position2, int32_t* __restrict__ position3,
    opmath_t* __restrict__ weight0, opmath_t* __restrict__ weight1,
    opmath_t* __restrict__ weight2, opmath_t* __restrict__ weight3) {
  for (int64_t i = 0; i < LP; ++i) {
    const opmath_t x = locations[2 * i] * widths[i] - static_cast<opmath_t>(0.5);
    const opmath_t y = locations[2 * i + 1] * heights[i] - static_cast<opmath_t>(0.5);
    // NaN fails every comparison, so it is outside too.
    const bool inside = (x > -1) & (y > -1) & (x < widths[i]) & (y < heights[i]);
    // Points off the map are moved to (0, 0) before the float -> int conversions, which are
    // undefined for NaN and huge values; all their corners are dropped below.
    const opmath_t x_in = inside ? x : opmath_t(0);
    const opmath_t y_in = inside ? y : opmath_t(0);
    // floor() on (-1, W): truncation, one less on (-1, 0).
    const int32_t x_trunc = static_cast<int32_t>(x_in);
    const int32_t y_trunc = static_cast<int32_t>(y_in);
    const int32_t x0 = x_trunc - (static_cast<opmath_t>(x_trunc) > x_in);
    const int32_t y0 = y_trunc - (static_cast<opmath_t>(y_trunc) > y_in);
    const opmath_t fx = x - static_cast<opmath_t>(x0);
    const opmath_t fy = y - static_cast<opmath_t>(y0);
    const bool x0_inside = inside & (x0 >= 0);
    const bool x1_inside = inside & (x0 + 1 < widths_int[i]);
    const bool y0_inside = y0 >= 0;
    const bool y1_inside = y0 + 1 < heights_int[i];
    const int32_t corner0 = y0 * widths_int[i] + x0;
    position0[i] = y0_inside & x0_inside ? corner0 : -1;
    position1[i] = y0_inside & x1_inside ? corner0 + 1 : -1;
    position2[i] = y1_inside & x0_inside ? corner0 + widths_int[i] : -1;
    position3[i] = y1_inside & x1_inside ? corner0 + widths_int[i] + 1 : -1;
    const opmath_t a = attention[i];
    weight0[i] = a * ((1 - fy) * (1 - fx));
    weight1[i] = a * ((1 - fy) * fx);
    weight2[i] = a * (fy * (1 - fx));
    weight3[i] = a * (fy * fx);
  }
}

// sum[0:D] += weight * value row for each corner of a row on the map, point by point and
// corner by corner.
template <typename scalar_t, typename opmath_t>
GROUPPOSE_ALWAYS_INLINE void add_corner_rows(int64_t LP, int64_t D,
                                             const scalar_t* __restrict__ head_value,
                                             int64_t row_stride,
                                             const PointLevels<opmath_t>& levels,
                                             const RowCorners<opmath_t>& corners,
                                             opmath_t* __restrict__ sum) {
  for (int64_t i = 0; i < LP; ++i) {
    const scalar_t* level_value = head_value + levels.start_offset[i];
    for (int k = 0; k < 4; ++k) {
      const int64_t position = corners.position[k][i];
      if (position < 0) {
        continue;
      }
      const scalar_t* __restrict__ row = level_value + position * row_stride;
      const opmath_t w = corners.weight[k][i];
      for (int64_t d = 0; d < D; ++d) {
        sum[d] += w * static_cast<opmath_t>(row[d]);
      }
    }
  }
}

// Output rows [begin, end) of the forward, in (n, m, q) order: each thread works through one
// head's slice of value (S * D values) at a time, which stays in cache far better than all
// heads' values. kChannels is D, or 0 for a D known only at run time.
template <int64_t kChannels, typename scalar_t>
GROUPPOSE_CPU_CLONES void forward_rows(const ForwardArgs<scalar_t>& args, int64_t begin,
                                       int64_t end) {
  using opmath_t = at::opmath_type<scalar_t>;
  const MSDeformAttnSizes& sizes = args.sizes;
  const PointLevels<opmath_t>& levels = *args.levels;
  const int64_t D = kChannels > 0 ? kChannels : sizes.channels;
  const int64_t row_stride = sizes.heads * D;  // between consecutive positions of value
  const int64_t LP = sizes.levels * sizes.points;
  RowCorners<opmath_t> corners(LP);
  std::vector<opmath_t> runtime_sum(kChannels > 0 ? 0 : D);
  // task = (n * M + m) * Lq + q, stepped rather than divided out for every row.
  int64_t q = begin % sizes.queries;
  int64_t m = begin / sizes.queries % sizes.heads;
  int64_t n = begin / (sizes.queries * sizes.heads);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t head = (n * sizes.queries + q) * sizes.heads + m;  // flat (n, q, m)
    if (q + kPrefetchQueries < sizes.queries) {
      const int64_t ahead = head + kPrefetchQueries * sizes.heads;
      prefetch<0>(args.locations + ahead * LP * 2, LP * 2);
      prefetch<0>(args.weights + ahead * LP, LP);
      prefetch<1>(args.output + ahead * D, D);
    }
    row_corners(LP, args.locations + head * LP * 2, args.weights + head * LP,
                levels.width.data(), levels.height.data(), levels.width_int.data(),
                levels.height_int.data(), corners.position[0].data(),
                corners.position[1].data(), corners.position[2].data(),
                corners.position[3].data(), corners.weight[0].data(), corners.weight[1].data(),
                corners.weight[2].data(), corners.weight[3].data());
    const scalar_t* head_value = args.value + n * sizes.values * row_stride + m * D;
    scalar_t* out = args.output + head * D;
    if constexpr (kChannels > 0) {
      opmath_t sum[kChannels] = {};
      add_corner_rows(LP, kChannels, head_value, row_stride, levels, corners, sum);
      for (int64_t d = 0; d < kChannels; ++d) {
        out[d] = static_cast<scalar_t>(sum[d]);
      }
    } else {
      opmath_t* sum = runtime_sum.data();
      std::fill(sum, sum + D, opmath_t(0));
      add_corner_rows(LP, D, head_value, row_stride, levels, corners, sum);
      for (int64_t d = 0; d < D; ++d) {
        out[d] = static_cast<scalar_t>(sum[d]);
      }
    }
    if (++q == sizes.queries) {
      q = 0;
      if (++m == sizes.heads) {
        m = 0;
        ++n;
      }
    }
  }
}

template <typename scalar_t>
void forward_kernel(const ForwardArgs<scalar_t>& args) {
  const MSDeformAttnSizes& sizes = args.sizes;
  // One row costs L * P * 4 * D multiply-adds.
  constexpr int64_t grain_size = 64;
  at::parallel_for(0, sizes.batch * sizes.heads * sizes.queries, grain_size,
                   [&](int64_t begin, int64_t end) {
                     if (sizes.channels == kFixedChannels) {
                       forward_rows<kFixedChannels>(args, begin, end);
                     } else {
                       forward_rows<0>(args, begin, end);
                     }
                   });
}

// <x, y> over D channels with a fixed number of independent partial sums, so that the loop
// vectorises without reassociating additions (which the compiler may not do for floats).
template <typename scalar_t, typename opmath_t>
GROUPPOSE_ALWAYS_INLINE opmath_t dot(int64_t D, const opmath_t* __restrict__ x,
                                     const scalar_t* __restrict__ y) {
  constexpr int64_t kLanes = 64 / sizeof(opmath_t);
  opmath_t partial[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= D; d += kLanes) {
    for (int64_t lane = 0; lane < kLanes; ++lane) {
      partial[lane] += x[d + lane] * static_cast<opmath_t>(y[d + lane]);
    }
  }
  for (int64_t lane = 0; d + lane < D; ++lane) {
    partial[lane] += x[d + lane] * static_cast<opmath_t>(y[d + lane]);
  }
  opmath_t sum = 0;
  for (int64_t lane = 0; lane < kLanes; ++lane) {
    sum += partial[lane];
  }
  return sum;
}

template <typename scalar_t>
struct BackwardArgs {
  using opmath_t = at::opmath_type<scalar_t>;
  MSDeformAttnSizes sizes;
  const scalar_t* grad_output;  // (B, Lq, M * D)
  const scalar_t* value;        // (B, S, M, D)
  const int64_t* shapes;
  const int64_t* starts;
  const opmath_t* locations;    // (B, Lq, M, L, P, 2)
  const opmath_t* weights;      // (B, Lq, M, L, P)
  opmath_t* grad_value;         // (B, S, M, D), zero-initialised
  opmath_t* grad_locations;     // (B, Lq, M, L, P, 2)
  opmath_t* grad_weights;       // (B, Lq, M, L, P)
};

// Backward tasks [begin, end) of the flat (n, m, level) range.
template <typename scalar_t>
GROUPPOSE_CPU_CLONES void backward_tasks(const BackwardArgs<scalar_t>& args, int64_t begin,
                                         int64_t end) {
  using opmath_t = at::opmath_type<scalar_t>;
  const MSDeformAttnSizes& sizes = args.sizes;
  const int64_t D = sizes.channels;
  const int64_t row_stride = sizes.heads * D;
  const int64_t points_per_head = sizes.levels * sizes.points;
  // grad_output's row of the current (n, q, m) in opmath_t, converted once for its points.
  std::vector<opmath_t> grad_out(D);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t level = task % sizes.levels;
    const int64_t m = task / sizes.levels % sizes.heads;
    const int64_t n = task / (sizes.levels * sizes.heads);
    const int64_t height = args.shapes[2 * level];
    const int64_t width = args.shapes[2 * level + 1];
    const int64_t level_offset = (n * sizes.values + args.starts[level]) * row_stride + m * D;
    const scalar_t* level_value = args.value + level_offset;
    opmath_t* level_grad_value = args.grad_value + level_offset;
    for (int64_t q = 0; q < sizes.queries; ++q) {
      const int64_t head = (n * sizes.queries + q) * sizes.heads + m;  // flat (n, q, m)
      if (q + kPrefetchQueries < sizes.queries) {
        const int64_t ahead = head + kPrefetchQueries * sizes.heads;
        const int64_t ahead_point = ahead * points_per_head + level * sizes.points;
        prefetch<0>(args.grad_output + ahead * D, D);
        prefetch<0>(args.locations + 2 * ahead_point, 2 * sizes.points);
        prefetch<0>(args.weights + ahead_point, sizes.points);
        prefetch<1>(args.grad_locations + 2 * ahead_point, 2 * sizes.points);
        prefetch<1>(args.grad_weights + ahead_point, sizes.points);
      }
      for (int64_t d = 0; d < D; ++d) {
        grad_out[d] = static_cast<opmath_t>(args.grad_output[head * D + d]);
      }
      const int64_t first_point = head * points_per_head + level * sizes.points;
      for (int64_t i = first_point; i < first_point + sizes.points; ++i) {
        BilinearCorners<opmath_t> corners;
        if (!bilinear_corners(args.locations[2 * i], args.locations[2 * i + 1], height, width,
                              corners)) {
          args.grad_weights[i] = 0;
          args.grad_locations[2 * i] = 0;
          args.grad_locations[2 * i + 1] = 0;
          continue;
        }
        const opmath_t attention = args.weights[i];
        opmath_t corner_dots[4] = {0, 0, 0, 0};
        opmath_t grad_weight = 0;
        for (int k = 0; k < 4; ++k) {
          if (corners.row[k] >= 0) {
            const int64_t offset = corners.row[k] * row_stride;
            corner_dots[k] = dot(D, grad_out.data(), level_value + offset);
            grad_weight += corners.weight[k] * corner_dots[k];
            const opmath_t scale = attention * corners.weight[k];
            opmath_t* __restrict__ grad_row = level_grad_value + offset;
            for (int64_t d = 0; d < D; ++d) {
              grad_row[d] += scale * grad_out[d];
            }
          }
        }
        opmath_t grad_x;
        opmath_t grad_y;
        bilinear_location_grad(corners, corner_dots, grad_x, grad_y);
        args.grad_weights[i] = grad_weight;
        // x = loc_x * W - 0.5, y = loc_y * H - 0.5.
        args.grad_locations[2 * i] = attention * grad_x * static_cast<opmath_t>(width);
        args.grad_locations[2 * i + 1] = attention * grad_y * static_cast<opmath_t>(height);
      }
    }
  }
}

template <typename scalar_t>
void backward_kernel(const BackwardArgs<scalar_t>& args) {
  const MSDeformAttnSizes& sizes = args.sizes;
  // Each (n, m, l) processes Lq * P points: large, equal tasks.
  at::parallel_for(0, sizes.batch * sizes.heads * sizes.levels, 1,
                   [&](int64_t begin, int64_t end) { backward_tasks(args, begin, end); });
}

// `tensor` in `dtype` (no copy when it already is), contiguous.
at::Tensor contiguous_as(const at::Tensor& tensor, at::ScalarType dtype) {
  return tensor.to(dtype).contiguous();
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
  const at::ScalarType opmath_type = at::toOpMathType(in.value.scalar_type());
  const at::Tensor locations = contiguous_as(in.sampling_locations, opmath_type);
  const at::Tensor weights = contiguous_as(in.attention_weights, opmath_type);
  at::Tensor output =
      at::empty({sizes.batch, sizes.queries, sizes.heads * sizes.channels}, in.value.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, in.value.scalar_type(), "ms_deform_attn_cpu", [&] {
        using opmath_t = at::opmath_type<scalar_t>;
        const PointLevels<opmath_t> levels(sizes, in.spatial_shapes.const_data_ptr<int64_t>(),
                                           in.level_start_index.const_data_ptr<int64_t>());
        forward_kernel<scalar_t>({sizes, in.value.const_data_ptr<scalar_t>(),
                                  locations.const_data_ptr<opmath_t>(),
                                  weights.const_data_ptr<opmath_t>(), &levels,
                                  output.data_ptr<scalar_t>()});
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
  const at::ScalarType value_type = in.value.scalar_type();
  const at::ScalarType opmath_type = at::toOpMathType(value_type);
  const at::Tensor locations = contiguous_as(in.sampling_locations, opmath_type);
  const at::Tensor weights = contiguous_as(in.attention_weights, opmath_type);
  // Positions that no point samples keep a zero gradient; the other two are fully written.
  // For float32 / float64 values the buffer is grad_value itself (.to() returns it as is).
  at::Tensor grad_value = at::zeros(in.value.sizes(), in.value.options().dtype(opmath_type));
  at::Tensor grad_locations = at::empty_like(locations);
  at::Tensor grad_weights = at::empty_like(weights);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value_type, "ms_deform_attn_backward_cpu", [&] {
        using opmath_t = at::opmath_type<scalar_t>;
        backward_kernel<scalar_t>(
            {sizes, grad_output.const_data_ptr<scalar_t>(), in.value.const_data_ptr<scalar_t>(),
             in.spatial_shapes.const_data_ptr<int64_t>(),
             in.level_start_index.const_data_ptr<int64_t>(),
             locations.const_data_ptr<opmath_t>(), weights.const_data_ptr<opmath_t>(),
             grad_value.data_ptr<opmath_t>(), grad_locations.data_ptr<opmath_t>(),
             grad_weights.data_ptr<opmath_t>()});
      });
  return {grad_value.to(value_type), grad_locations.to(in.sampling_locations.scalar_type()),
          grad_weights.to(in.attention_weights.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(grouppose, CPU, m) {
  m.impl("ms_deform_attn", &ms_deform_attn_cpu);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward_cpu);
}

}  // namespace grouppose
