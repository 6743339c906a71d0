// Schemas of torch.ops.grouppose.ms_deform_attn{,_backward} and the input checks shared by
// their CPU and CUDA kernels. Fake kernels and autograd are registered from Python
// (grouppose/layers/ms_deform_attn.py).
#include <torch/library.h>

#include "ms_deform_attn.h"

namespace grouppose {

MSDeformAttnSizes check_ms_deform_attn_inputs(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  TORCH_CHECK(value.dim() == 4, "ms_deform_attn: value must have shape (N, S, M, D), got ",
              value.sizes());
  const MSDeformAttnSizes sizes{
      value.size(0),
      value.size(1),
      value.size(2),
      value.size(3),
      sampling_locations.dim() == 6 ? sampling_locations.size(1) : 0,
      spatial_shapes.dim() == 2 ? spatial_shapes.size(0) : 0,
      sampling_locations.dim() == 6 ? sampling_locations.size(4) : 0,
  };
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2,
              "ms_deform_attn: spatial_shapes must have shape (L, 2), got ",
              spatial_shapes.sizes());
  TORCH_CHECK(level_start_index.dim() == 1 && level_start_index.size(0) == sizes.levels,
              "ms_deform_attn: level_start_index must have shape (", sizes.levels, ",), got ",
              level_start_index.sizes());
  TORCH_CHECK(sampling_locations.sizes() ==
                  at::IntArrayRef({sizes.batch, sizes.queries, sizes.heads, sizes.levels,
                                   sizes.points, 2}),
              "ms_deform_attn: sampling_locations must have shape (N, Lq, M, L, P, 2) with N=",
              sizes.batch, " M=", sizes.heads, " L=", sizes.levels, ", got ",
              sampling_locations.sizes());
  TORCH_CHECK(attention_weights.sizes() ==
                  at::IntArrayRef({sizes.batch, sizes.queries, sizes.heads, sizes.levels,
                                   sizes.points}),
              "ms_deform_attn: attention_weights must have shape (N, Lq, M, L, P) = (",
              sizes.batch, ", ", sizes.queries, ", ", sizes.heads, ", ", sizes.levels, ", ",
              sizes.points, "), got ", attention_weights.sizes());
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong &&
                  level_start_index.scalar_type() == at::kLong,
              "ms_deform_attn: spatial_shapes and level_start_index must be int64");
  // The dtype policy of ms_deform_attn.h.
  const at::ScalarType value_type = value.scalar_type();
  const bool half_value = value_type == at::kHalf || value_type == at::kBFloat16;
  TORCH_CHECK(half_value || value_type == at::kFloat || value_type == at::kDouble,
              "ms_deform_attn: value must be float32, float64, float16 or bfloat16, got ",
              value_type);
  const auto check_dtype = [&](const char* name, const at::Tensor& tensor) {
    TORCH_CHECK(tensor.scalar_type() == value_type ||
                    (half_value && tensor.scalar_type() == at::kFloat),
                "ms_deform_attn: ", name, " must have value's dtype ", value_type,
                half_value ? " or float32" : "", ", got ", tensor.scalar_type());
  };
  check_dtype("sampling_locations", sampling_locations);
  check_dtype("attention_weights", attention_weights);
  for (const at::Tensor* tensor :
       {&spatial_shapes, &level_start_index, &sampling_locations, &attention_weights}) {
    TORCH_CHECK(tensor->device() == value.device(),
                "ms_deform_attn: all inputs must be on value's device ", value.device());
  }
  return sizes;
}

MSDeformAttnInputs checked_contiguous_inputs(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  return {check_ms_deform_attn_inputs(value, spatial_shapes, level_start_index,
                                      sampling_locations, attention_weights),
          value.contiguous(), spatial_shapes.contiguous(), level_start_index.contiguous(),
          sampling_locations.contiguous(), attention_weights.contiguous()};
}

void check_grad_output(const at::Tensor& grad_output, const at::Tensor& value,
                       const MSDeformAttnSizes& sizes) {
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef({sizes.batch, sizes.queries,
                                                       sizes.heads * sizes.channels}) &&
                  grad_output.scalar_type() == value.scalar_type() &&
                  grad_output.device() == value.device(),
              "ms_deform_attn_backward: grad_output must be (N, Lq, M * D) of value's dtype "
              "and device, got ", grad_output.sizes(), " ", grad_output.scalar_type(), " ",
              grad_output.device());
}

}  // namespace grouppose

TORCH_LIBRARY(grouppose, m) {
  m.def(
      "ms_deform_attn(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights) -> Tensor");
  m.def(
      "ms_deform_attn_backward(Tensor grad_output, Tensor value, Tensor spatial_shapes, "
      "Tensor level_start_index, Tensor sampling_locations, Tensor attention_weights) "
      "-> (Tensor, Tensor, Tensor)");
}
