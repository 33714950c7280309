// Fused ternary linear for the CPU, forward and straight-through backward.
//
//   forward:  y      = x_hat @ W_hat^T + bias
//   backward: grad_x = grad_y @ W_hat
//             grad_W = grad_y^T @ x_hat
//             grad_b = sum of grad_y over all but the last dimension
//
// W_hat is written once per call by the fused quantizer, directly in the GEMM
// dtype; the products run through ATen (MKL or oneDNN). Nothing weight-sized
// outlives a call: the backward recomputes W_hat from the latent weight.
//
// The GEMM dtype is chosen by the Python side: float32 for float32 weights,
// and float32 as well for bfloat16/float16 weights on CPUs without native
// 16-bit GEMM instructions, where ATen's bfloat16 GEMM is several times
// slower than its float32 one. The output is rounded back to the input dtype.
#include "kernels.h"

#include <c10/util/Exception.h>

namespace bitcpm {
namespace {

at::Tensor activations_for_gemm(const at::Tensor& x2d, double eps, std::optional<int64_t> act_bits,
                                at::ScalarType gemm_dtype) {
  if (act_bits.has_value()) {
    TORCH_CHECK_VALUE(*act_bits == 8, "act_bits=", *act_bits, " is not supported: use None or 8");
    return fake_quantize_activation(x2d, eps, gemm_dtype);
  }
  return x2d.to(gemm_dtype);
}

std::vector<int64_t> output_shape(const at::Tensor& x, int64_t out_features) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out_features;
  return shape;
}

}  // namespace

at::Tensor ternary_linear(const at::Tensor& x, const at::Tensor& w,
                          const std::optional<at::Tensor>& bias, int64_t group_size, double eps,
                          std::optional<int64_t> act_bits, at::ScalarType gemm_dtype) {
  TORCH_CHECK_VALUE(x.size(-1) == w.size(1), "x has ", x.size(-1),
                    " features but weight has in_features=", w.size(1));
  const int64_t n = w.size(0);
  const int64_t k = w.size(1);

  const at::Tensor w_hat = fake_quantize_weight(w, group_size, eps, gemm_dtype);
  const at::Tensor x_gemm = activations_for_gemm(x.reshape({-1, k}), eps, act_bits, gemm_dtype);

  at::Tensor y;
  if (bias.has_value()) {
    y = at::addmm(bias->to(gemm_dtype), x_gemm, w_hat.t());
  } else {
    y = at::mm(x_gemm, w_hat.t());
  }
  return y.to(x.scalar_type()).reshape(output_shape(x, n));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ternary_linear_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& w, int64_t group_size,
    double eps, std::optional<int64_t> act_bits, std::array<bool, 3> output_mask,
    at::ScalarType gemm_dtype) {
  const int64_t n = w.size(0);
  const int64_t k = w.size(1);
  TORCH_CHECK_VALUE(grad_y.size(-1) == n, "grad_y has ", grad_y.size(-1),
                    " features but weight has out_features=", n);
  const at::Tensor grad_gemm = grad_y.reshape({-1, n}).to(gemm_dtype);

  at::Tensor grad_x = at::empty({0}, x.options());
  at::Tensor grad_w = at::empty({0}, w.options());
  at::Tensor grad_b = at::empty({0}, w.options());

  if (output_mask[0]) {
    const at::Tensor w_hat = fake_quantize_weight(w, group_size, eps, gemm_dtype);
    grad_x = at::mm(grad_gemm, w_hat).to(x.scalar_type()).reshape(x.sizes());
  }
  if (output_mask[1]) {
    const at::Tensor x_gemm = activations_for_gemm(x.reshape({-1, k}), eps, act_bits, gemm_dtype);
    grad_w = at::mm(grad_gemm.t(), x_gemm).to(w.scalar_type());
  }
  if (output_mask[2]) {
    grad_b = grad_gemm.sum(0, /*keepdim=*/false, at::kFloat).to(w.scalar_type());
  }
  return {grad_x, grad_w, grad_b};
}

}  // namespace bitcpm
