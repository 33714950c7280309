// Scalar helpers that GCC turns into AVX2 code when they are inlined into a
// function compiled with BITCPM_TARGET_AVX2.
//
// The kernels are written as plain loops over fixed-width lane arrays so that
// the compiler vectorizes them without reassociating float additions: every
// lane keeps its own accumulator, and the lanes are combined in a fixed order.
// The result therefore does not depend on the ISA or the thread count.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#define BITCPM_INLINE inline __attribute__((always_inline))

#if defined(__x86_64__) && defined(__GNUC__)
#define BITCPM_HAVE_AVX2_CLONE 1
#define BITCPM_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#else
#define BITCPM_HAVE_AVX2_CLONE 0
#define BITCPM_TARGET_AVX2
#endif

namespace bitcpm {

// Lane count of the accumulators: 8 float32 lanes fill one AVX2 register.
constexpr int64_t kLanes = 8;

BITCPM_INLINE float to_float(float value) { return value; }

BITCPM_INLINE float to_float(c10::BFloat16 value) {
  uint32_t bits = static_cast<uint32_t>(value.x) << 16;
  float result;
  std::memcpy(&result, &bits, sizeof(result));
  return result;
}

BITCPM_INLINE float to_float(c10::Half value) {
  return c10::detail::fp16_ieee_to_fp32_value(value.x);
}

// Rounds half to even under the default floating-point environment, which is
// torch.round's rule (0.5 -> 0, 1.5 -> 2, -2.5 -> -2).
BITCPM_INLINE float round_half_even(float value) { return std::nearbyint(value); }

BITCPM_INLINE float clamp(float value, float low, float high) {
  value = value < low ? low : value;
  return value > high ? high : value;
}

// Bit patterns of +s and -s in a 16-bit float type, so that writing W_hat is
// a select between three constants instead of a per-element conversion.
template <typename Out>
struct TernaryValues {
  Out positive;
  Out negative;
  Out zero;
};

template <typename Out>
BITCPM_INLINE TernaryValues<Out> ternary_values(float scale) {
  // (Q * s).to(dtype) with Q in {-1, 0, 1}: the conversion of -s is the
  // negation of the conversion of s because round-to-nearest-even is symmetric.
  Out positive = static_cast<Out>(scale);
  Out negative = static_cast<Out>(-scale);
  return {positive, negative, static_cast<Out>(0.0f)};
}

bool cpu_has_avx2();

}  // namespace bitcpm
