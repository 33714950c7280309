// Ternary dequantizer for the CPU: W_hat = (Q * s).to(dtype), per group.
//
// Memory: one read of the int8 codes and one write of W_hat. The scale of a
// group is converted once, so each element is a select between +s, 0 and -s.
#include "kernels.h"
#include "simd.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

namespace bitcpm {
namespace {

template <typename Out>
BITCPM_INLINE void dequantize_group(const int8_t* codes, int64_t n, float scale, Out* out) {
  TernaryValues<Out> values = ternary_values<Out>(scale);
  for (int64_t i = 0; i < n; ++i) {
    out[i] = codes[i] > 0 ? values.positive : (codes[i] < 0 ? values.negative : values.zero);
  }
}

template <typename Out>
BITCPM_TARGET_AVX2 void dequantize_groups_avx2(const int8_t* codes, int64_t group_len,
                                                int64_t begin, int64_t end, const float* scales,
                                                int64_t scale_step, Out* out) {
  for (int64_t g = begin; g < end; ++g) {
    dequantize_group(codes + g * group_len, group_len, scales[g * scale_step],
                     out + g * group_len);
  }
}

template <typename Out>
void dequantize_groups_generic(const int8_t* codes, int64_t group_len, int64_t begin,
                               int64_t end, const float* scales, int64_t scale_step, Out* out) {
  for (int64_t g = begin; g < end; ++g) {
    dequantize_group(codes + g * group_len, group_len, scales[g * scale_step],
                     out + g * group_len);
  }
}

}  // namespace

at::Tensor ternary_dequantize(const at::Tensor& codes_in, const at::Tensor& scales_in,
                              int64_t group_size, at::ScalarType dtype) {
  TORCH_CHECK(codes_in.device().is_cpu() && scales_in.device().is_cpu(),
              "the CPU kernel got tensors on ", codes_in.device(), " and ", scales_in.device());
  TORCH_CHECK_TYPE(codes_in.scalar_type() == at::kChar && codes_in.dim() == 2,
                   "codes must be a 2-D int8 tensor, got ", codes_in.scalar_type(), " with shape ",
                   codes_in.sizes());
  TORCH_CHECK_TYPE(scales_in.scalar_type() == at::kFloat, "scales must be float32, got ",
                   scales_in.scalar_type());
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
                   "dtype must be float32, bfloat16 or float16, got ", dtype);

  const at::Tensor codes = codes_in.contiguous();
  const at::Tensor scales = scales_in.contiguous();
  const int64_t n = codes.size(0);
  const int64_t k = codes.size(1);
  TORCH_CHECK_VALUE(group_size >= -1 && (group_size <= 0 || k % group_size == 0),
                    "in_features K=", k, " is not a multiple of group_size=", group_size);

  int64_t group_len = group_size == -1 ? k : group_size;
  int64_t n_groups = group_size == 0 ? n : n * (k / std::max<int64_t>(group_len, 1));
  int64_t scale_step = 1;
  if (group_size == 0) {
    group_len = k;
    scale_step = 0;
  }
  const int64_t expected = group_size == 0 ? 1 : n_groups;
  TORCH_CHECK_VALUE(scales.numel() == expected, "scales have ", scales.numel(),
                    " elements, but codes of shape ", codes.sizes(), " with group_size=",
                    group_size, " need ", expected);

  at::Tensor out = at::empty({n, k}, codes.options().dtype(dtype));
  if (out.numel() == 0) {
    return out;
  }
  const int8_t* code_ptr = codes.const_data_ptr<int8_t>();
  const float* scale_ptr = scales.const_data_ptr<float>();
  const bool avx2 = cpu_has_avx2();
  const int64_t grain = std::max<int64_t>(1, (1 << 15) / std::max<int64_t>(group_len, 1));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "ternary_dequantize", [&] {
    scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n_groups, grain, [&](int64_t begin, int64_t end) {
      if (avx2) {
        dequantize_groups_avx2(code_ptr, group_len, begin, end, scale_ptr, scale_step, out_ptr);
      } else {
        dequantize_groups_generic(code_ptr, group_len, begin, end, scale_ptr, scale_step, out_ptr);
      }
    });
  });
  return out;
}

}  // namespace bitcpm
