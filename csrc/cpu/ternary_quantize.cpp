// Fused ternary weight quantizer for the CPU.
//
// Math, per group of a latent weight W (N, K), in float32:
//   s     = max(mean(|W_group|), eps)
//   Q     = clamp(round_half_to_even(W / s), -1, 1)     -> int8 codes
//   W_hat = Q * s, converted to the requested dtype
//
// Memory: each group is read from memory once to sum |W| (double
// accumulators, fixed lane order) and read again from cache to write the int8
// codes or, for the fake-quantize entry point, W_hat in the GEMM dtype. Only
// group_size == 0 reads W from memory twice: its one scale needs the whole
// tensor first. Work is split over groups with at::parallel_for; one thread
// owns a whole group, so scales and codes are the same for every thread count.
#include "kernels.h"
#include "simd.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <vector>

namespace bitcpm {
namespace {

// Sum of |w[0..n)| in double precision, 8 lanes wide, lanes combined in order.
template <typename T>
BITCPM_INLINE double sum_abs(const T* w, int64_t n) {
  double lanes[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) {
      lanes[l] += std::fabs(static_cast<double>(to_float(w[i + l])));
    }
  }
  for (int64_t l = 0; i < n; ++i, ++l) {
    lanes[l] += std::fabs(static_cast<double>(to_float(w[i])));
  }
  double total = 0.0;
  for (int64_t l = 0; l < kLanes; ++l) {
    total += lanes[l];
  }
  return total;
}

BITCPM_INLINE float scale_from_sum(double sum_abs_value, int64_t count, float eps) {
  // The mean is formed in double and rounded once to float32, which is the
  // value an exact float32 mean would give. The reference's float32 sum differs
  // from it only by summation order.
  float mean = static_cast<float>(sum_abs_value / static_cast<double>(count));
  // Written so that a NaN mean fails the comparison and stays NaN, which
  // check_scales_finite then reports.
  return mean <= eps ? eps : mean;
}

template <typename T>
BITCPM_INLINE void quantize_group_codes(const T* w, int64_t n, float scale, int8_t* codes) {
  for (int64_t i = 0; i < n; ++i) {
    float q = clamp(round_half_even(to_float(w[i]) / scale), -1.0f, 1.0f);
    codes[i] = static_cast<int8_t>(q);
  }
}

// W_hat in float32 for a weight of type T: the magnitude is s rounded to T
// first, so a bfloat16 weight gives exactly the float32 upcast of the
// bfloat16 W_hat that the eager quantizer produces.
template <typename T>
BITCPM_INLINE void quantize_group_float(const T* w, int64_t n, float scale, float* w_hat) {
  const float magnitude = to_float(static_cast<T>(scale));
  for (int64_t i = 0; i < n; ++i) {
    float q = clamp(round_half_even(to_float(w[i]) / scale), -1.0f, 1.0f);
    // Through int so that a rounded -0.0 becomes +0.0, as int8 codes do.
    w_hat[i] = static_cast<float>(static_cast<int32_t>(q)) * magnitude;
  }
}

template <typename T, typename Out>
BITCPM_INLINE void quantize_group_half(const T* w, int64_t n, float scale, uint16_t* w_hat) {
  TernaryValues<Out> values = ternary_values<Out>(scale);
  const uint16_t positive = values.positive.x;
  const uint16_t negative = values.negative.x;
  for (int64_t i = 0; i < n; ++i) {
    float q = clamp(round_half_even(to_float(w[i]) / scale), -1.0f, 1.0f);
    w_hat[i] = q > 0.0f ? positive : (q < 0.0f ? negative : uint16_t{0});
  }
}

// One task of the quantizer: groups [begin, end) of a (N, K) weight.
struct GroupJob {
  int64_t group_len;  // elements per group
  int64_t begin;
  int64_t end;
};

// Scale of group g, computed and stored; with scale_step == 0 the per-tensor
// scale in scales[0] instead.
template <typename T>
BITCPM_INLINE float group_scale(const T* group, const GroupJob& job, int64_t g, float eps,
                                float* scales, int64_t scale_step) {
  if (scale_step == 0) {
    return scales[0];
  }
  const float scale = scale_from_sum(sum_abs(group, job.group_len), job.group_len, eps);
  scales[g] = scale;
  return scale;
}

// Per-dtype, per-ISA entry points. The bodies are identical; the AVX2 copies
// differ only in the target attribute, which lets GCC vectorize the inlined
// loops with 256-bit registers. Each one handles groups [begin, end): it sums
// a group and quantizes it right away, while the group is still in cache.
// With scale_step == 0 the scale is given (scales[0], the per-tensor case)
// and only the second half runs.
#define BITCPM_DEFINE_GROUP_KERNELS(SUFFIX, ATTR)                                             \
  template <typename T>                                                                       \
  ATTR void codes_##SUFFIX(const T* w, GroupJob job, float eps, float* scales,               \
                           int64_t scale_step, int8_t* codes) {                               \
    for (int64_t g = job.begin; g < job.end; ++g) {                                           \
      const T* group = w + g * job.group_len;                                                 \
      const float scale = group_scale(group, job, g, eps, scales, scale_step);                \
      quantize_group_codes(group, job.group_len, scale, codes + g * job.group_len);           \
    }                                                                                         \
  }                                                                                           \
  template <typename T>                                                                       \
  ATTR void float_##SUFFIX(const T* w, GroupJob job, float eps, float* scales,              \
                           int64_t scale_step, float* w_hat) {                                \
    for (int64_t g = job.begin; g < job.end; ++g) {                                           \
      const T* group = w + g * job.group_len;                                                 \
      const float scale = group_scale(group, job, g, eps, scales, scale_step);                \
      quantize_group_float(group, job.group_len, scale, w_hat + g * job.group_len);           \
    }                                                                                         \
  }                                                                                           \
  template <typename T, typename Out>                                                         \
  ATTR void half_##SUFFIX(const T* w, GroupJob job, float eps, float* scales,               \
                          int64_t scale_step, uint16_t* w_hat) {                              \
    for (int64_t g = job.begin; g < job.end; ++g) {                                           \
      const T* group = w + g * job.group_len;                                                 \
      const float scale = group_scale(group, job, g, eps, scales, scale_step);                \
      quantize_group_half<T, Out>(group, job.group_len, scale, w_hat + g * job.group_len);    \
    }                                                                                         \
  }

BITCPM_DEFINE_GROUP_KERNELS(avx2, BITCPM_TARGET_AVX2)
BITCPM_DEFINE_GROUP_KERNELS(generic, )

#undef BITCPM_DEFINE_GROUP_KERNELS

// Grain of at::parallel_for in elements: below this a group range runs on
// one thread because forking costs more than the work.
constexpr int64_t kGrainElements = 1 << 15;

int64_t grain_groups(int64_t group_len) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, group_len));
}

// Computes the single scale of group_size == 0 into scales[0]: per-row sums
// in double, added in row order on one thread so that the total does not
// depend on the thread count. This is the only case that reads W twice from
// memory, because no code can be written before the whole tensor is summed.
template <typename T>
void compute_tensor_scale(const T* w, int64_t n_rows, int64_t k, float eps, float* scales) {
  std::vector<double> row_sums(n_rows);
  at::parallel_for(0, n_rows, grain_groups(k), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      row_sums[r] = sum_abs(w + r * k, k);
    }
  });
  double total = 0.0;
  for (int64_t r = 0; r < n_rows; ++r) {
    total += row_sums[r];
  }
  scales[0] = scale_from_sum(total, n_rows * k, eps);
}

// Groups used by the second pass: for group_size == 0 the work is split by
// rows and every row reads the single scale (scale_step == 0).
struct SecondPass {
  int64_t group_len;
  int64_t n_groups;
  int64_t scale_step;
};

SecondPass second_pass_layout(int64_t n_rows, int64_t k, int64_t group_size) {
  if (group_size == 0) {
    return {k, n_rows, 0};
  }
  const int64_t group_len = group_size == -1 ? k : group_size;
  return {group_len, n_rows * (k / group_len), 1};
}

void check_scales_finite(const at::Tensor& scales, const at::Tensor& w) {
  // A NaN or inf weight makes its group's sum non-finite, so checking the
  // small scale tensor finds every bad group without another pass over W.
  if (at::isfinite(scales).all().item<bool>()) {
    return;
  }
  const int64_t bad = (~at::isfinite(w)).sum().item<int64_t>();
  TORCH_CHECK_VALUE(bad > 0, "the mean of |weight| overflows float32 in at least one group; ",
                    "the weights are too large to quantize");
  TORCH_CHECK_VALUE(false, "weight contains ", bad,
                    " non-finite value(s) (NaN or inf); the ternary quantizer needs finite ",
                    "weights, so check the checkpoint or the optimizer step that produced them");
}

void check_weight_for_kernel(const at::Tensor& w, int64_t group_size, double eps) {
  TORCH_CHECK(w.device().is_cpu(), "the CPU kernel got a weight on ", w.device());
  TORCH_CHECK_VALUE(w.dim() == 2, "weight must be 2-D (out_features, in_features), got ",
                    w.dim(), " dimensions");
  TORCH_CHECK_VALUE(w.numel() > 0, "weight must not be empty, got shape ", w.sizes());
  const int64_t k = w.size(1);
  TORCH_CHECK_VALUE(group_size >= -1, "group_size=", group_size,
                    " is invalid: use -1, 0 or a positive divisor of in_features");
  TORCH_CHECK_VALUE(group_size <= 0 || k % group_size == 0, "in_features K=", k,
                    " is not a multiple of group_size=", group_size);
  TORCH_CHECK_VALUE(eps > 0.0, "eps must be positive, got ", eps);
}

at::Tensor allocate_scales(const at::Tensor& w, int64_t group_size) {
  const int64_t n = w.size(0);
  const int64_t k = w.size(1);
  if (group_size == -1) {
    return at::empty({n, 1}, w.options().dtype(at::kFloat));
  }
  if (group_size == 0) {
    return at::empty({1, 1}, w.options().dtype(at::kFloat));
  }
  return at::empty({n, k / group_size}, w.options().dtype(at::kFloat));
}

// Fills `scales` and runs `body(job, scale_step)` over every group in
// parallel. For group_size == 0 the scale is computed first and the groups
// are rows that all read scales[0].
template <typename T, typename Body>
void for_each_group(const at::Tensor& w, int64_t group_size, double eps, at::Tensor& scales,
                    const Body& body) {
  const SecondPass layout = second_pass_layout(w.size(0), w.size(1), group_size);
  if (group_size == 0) {
    compute_tensor_scale(w.const_data_ptr<T>(), w.size(0), w.size(1), static_cast<float>(eps),
                         scales.mutable_data_ptr<float>());
  }
  at::parallel_for(0, layout.n_groups, grain_groups(layout.group_len), [&](int64_t b, int64_t e) {
    body(GroupJob{layout.group_len, b, e}, layout.scale_step);
  });
}

template <typename T>
void quantize_to_codes(const at::Tensor& w, int64_t group_size, double eps, at::Tensor& scales,
                       at::Tensor& codes) {
  const T* src = w.const_data_ptr<T>();
  float* scale_ptr = scales.mutable_data_ptr<float>();
  int8_t* dst = codes.mutable_data_ptr<int8_t>();
  const float eps_f = static_cast<float>(eps);
  const bool avx2 = cpu_has_avx2();
  for_each_group<T>(w, group_size, eps, scales, [&](GroupJob job, int64_t step) {
    avx2 ? codes_avx2(src, job, eps_f, scale_ptr, step, dst)
         : codes_generic(src, job, eps_f, scale_ptr, step, dst);
  });
}

template <typename T>
void quantize_to_w_hat(const at::Tensor& w, int64_t group_size, double eps, at::Tensor& scales,
                       at::Tensor& w_hat) {
  const T* src = w.const_data_ptr<T>();
  float* scale_ptr = scales.mutable_data_ptr<float>();
  const float eps_f = static_cast<float>(eps);
  const at::ScalarType out_type = w_hat.scalar_type();
  const bool avx2 = cpu_has_avx2();
  for_each_group<T>(w, group_size, eps, scales, [&](GroupJob job, int64_t step) {
    if (out_type == at::kFloat) {
      float* dst = w_hat.mutable_data_ptr<float>();
      avx2 ? float_avx2(src, job, eps_f, scale_ptr, step, dst)
           : float_generic(src, job, eps_f, scale_ptr, step, dst);
    } else if (out_type == at::kBFloat16) {
      auto* dst = reinterpret_cast<uint16_t*>(w_hat.mutable_data_ptr<c10::BFloat16>());
      avx2 ? half_avx2<T, c10::BFloat16>(src, job, eps_f, scale_ptr, step, dst)
           : half_generic<T, c10::BFloat16>(src, job, eps_f, scale_ptr, step, dst);
    } else {
      auto* dst = reinterpret_cast<uint16_t*>(w_hat.mutable_data_ptr<c10::Half>());
      avx2 ? half_avx2<T, c10::Half>(src, job, eps_f, scale_ptr, step, dst)
           : half_generic<T, c10::Half>(src, job, eps_f, scale_ptr, step, dst);
    }
  });
}

}  // namespace

bool cpu_has_avx2() {
#if BITCPM_HAVE_AVX2_CLONE
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return has;
#else
  return false;
#endif
}

std::tuple<at::Tensor, at::Tensor> ternary_quantize(const at::Tensor& w_in, int64_t group_size,
                                                    double eps) {
  check_weight_for_kernel(w_in, group_size, eps);
  const at::Tensor w = w_in.contiguous();
  at::Tensor codes = at::empty(w.sizes(), w.options().dtype(at::kChar));

  at::Tensor scales = allocate_scales(w, group_size);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, w.scalar_type(), "ternary_quantize", [&] {
    quantize_to_codes<scalar_t>(w, group_size, eps, scales, codes);
  });
  check_scales_finite(scales, w);
  return {codes, scales};
}

at::Tensor fake_quantize_weight(const at::Tensor& w_in, int64_t group_size, double eps,
                                at::ScalarType out_dtype) {
  check_weight_for_kernel(w_in, group_size, eps);
  TORCH_CHECK(out_dtype == at::kFloat || out_dtype == at::kBFloat16 || out_dtype == at::kHalf,
              "fake_quantize_weight writes float32, bfloat16 or float16, got ", out_dtype);
  const at::Tensor w = w_in.contiguous();
  at::Tensor w_hat = at::empty(w.sizes(), w.options().dtype(out_dtype));

  at::Tensor scales = allocate_scales(w, group_size);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, w.scalar_type(), "fake_quantize_weight", [&] {
    quantize_to_w_hat<scalar_t>(w, group_size, eps, scales, w_hat);
  });
  check_scales_finite(scales, w);
  return w_hat;
}

}  // namespace bitcpm
