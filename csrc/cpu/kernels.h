// CPU kernels of bitcpm_kernels. The op schemas that expose them are in
// csrc/ops_cpu.cpp; the math is in docs/design.md.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <tuple>

namespace bitcpm {

// Int8 codes (N, K) and float32 scales (N, 1), (N, K / g) or (1, 1).
std::tuple<at::Tensor, at::Tensor> ternary_quantize(const at::Tensor& w, int64_t group_size,
                                                    double eps);

// Dense weight of `dtype` from codes and scales.
at::Tensor ternary_dequantize(const at::Tensor& codes, const at::Tensor& scales,
                              int64_t group_size, at::ScalarType dtype);

// W_hat written straight from the latent weight in one call, in `out_dtype`
// (the GEMM dtype). Values equal the eager W_hat in the weight's own dtype.
at::Tensor fake_quantize_weight(const at::Tensor& w, int64_t group_size, double eps,
                                at::ScalarType out_dtype);

// x_hat of the per-token int8 activation quantizer, rounded to x's dtype and
// written in `out_dtype`.
at::Tensor fake_quantize_activation(const at::Tensor& x, double eps, at::ScalarType out_dtype);

at::Tensor ternary_linear(const at::Tensor& x, const at::Tensor& w,
                          const std::optional<at::Tensor>& bias, int64_t group_size, double eps,
                          std::optional<int64_t> act_bits, at::ScalarType gemm_dtype);

std::tuple<at::Tensor, at::Tensor, at::Tensor> ternary_linear_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& w, int64_t group_size,
    double eps, std::optional<int64_t> act_bits, std::array<bool, 3> output_mask,
    at::ScalarType gemm_dtype);

}  // namespace bitcpm
