// Per-token int8 activation fake quantizer for the CPU (W1.58A8 mode).
//
// Math, per row of x (..., K), in float32:
//   s_x   = 127 / max(max(|x_row|), eps), evaluated as (1 / m) * 127 like torch
//   x_hat = clamp(round_half_to_even(x * s_x), -128, 127) / s_x, rounded to x's dtype
//
// Memory: one read of the row for max|x| (it stays in cache), a second read
// to write x_hat in the GEMM dtype. Rows are split over threads.
#include "kernels.h"
#include "simd.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

namespace bitcpm {
namespace {

template <typename T>
BITCPM_INLINE float row_abs_max(const T* x, int64_t n) {
  // max is exact in any order, so lanes only serve vectorization. NaN
  // compares false and is skipped here, but the second pass propagates it.
  float lanes[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) {
      float a = std::fabs(to_float(x[i + l]));
      lanes[l] = a > lanes[l] ? a : lanes[l];
    }
  }
  float result = 0.0f;
  for (; i < n; ++i) {
    float a = std::fabs(to_float(x[i]));
    result = a > result ? a : result;
  }
  for (int64_t l = 0; l < kLanes; ++l) {
    result = lanes[l] > result ? lanes[l] : result;
  }
  return result;
}

template <typename T, typename Out>
BITCPM_INLINE void quantize_row(const T* x, int64_t n, float eps, Out* out) {
  const float amax = row_abs_max(x, n);
  // torch evaluates `127.0 / tensor` as `tensor.reciprocal() * 127`, and the
  // two orders differ in the last bit, so the reference's order is kept.
  const float scale = (1.0f / (amax > eps ? amax : eps)) * 127.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float q = clamp(round_half_even(to_float(x[i]) * scale), -128.0f, 127.0f);
    // Round to x's dtype first, as the eager quantizer does, then widen.
    out[i] = static_cast<Out>(to_float(static_cast<T>(q / scale)));
  }
}

template <typename T, typename Out>
BITCPM_TARGET_AVX2 void quantize_rows_avx2(const T* x, int64_t k, int64_t begin, int64_t end,
                                            float eps, Out* out) {
  for (int64_t r = begin; r < end; ++r) {
    quantize_row(x + r * k, k, eps, out + r * k);
  }
}

template <typename T, typename Out>
void quantize_rows_generic(const T* x, int64_t k, int64_t begin, int64_t end, float eps,
                           Out* out) {
  for (int64_t r = begin; r < end; ++r) {
    quantize_row(x + r * k, k, eps, out + r * k);
  }
}

}  // namespace

at::Tensor fake_quantize_activation(const at::Tensor& x_in, double eps, at::ScalarType out_dtype) {
  TORCH_CHECK(x_in.device().is_cpu(), "the CPU kernel got x on ", x_in.device());
  TORCH_CHECK_VALUE(x_in.dim() >= 1, "x must have at least one dimension");
  TORCH_CHECK_TYPE(out_dtype == at::kFloat || out_dtype == x_in.scalar_type(),
                   "x_hat is written in float32 or in x's dtype, got ", out_dtype);
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(out_dtype));
  const int64_t k = x.size(-1);
  if (x.numel() == 0) {
    return out;
  }
  const int64_t rows = x.numel() / k;
  const int64_t grain = std::max<int64_t>(1, (1 << 14) / k);
  const bool avx2 = cpu_has_avx2();
  const float eps_f = static_cast<float>(eps);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "fake_quantize_activation", [&] {
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      if (out_dtype == at::kFloat) {
        float* dst = out.mutable_data_ptr<float>();
        avx2 ? quantize_rows_avx2(src, k, begin, end, eps_f, dst)
             : quantize_rows_generic(src, k, begin, end, eps_f, dst);
      } else {
        scalar_t* dst = out.mutable_data_ptr<scalar_t>();
        avx2 ? quantize_rows_avx2(src, k, begin, end, eps_f, dst)
             : quantize_rows_generic(src, k, begin, end, eps_f, dst);
      }
    });
  });
  return out;
}

}  // namespace bitcpm
