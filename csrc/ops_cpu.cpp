// Registers the compiled CPU kernels as torch.ops.bitcpm_cpu.*.
//
// These are the raw kernels behind the public torch.ops.bitcpm.* ops, which
// are defined in bitcpm_kernels/ops.py together with their fake kernels and
// autograd. Argument checks with user-facing messages happen there; the
// checks here only guard the kernels against misuse.
#include <Python.h>
#include <torch/library.h>

#include "cpu/kernels.h"

namespace bitcpm {
namespace {

at::Tensor linear_op(const at::Tensor& x, const at::Tensor& w,
                     const std::optional<at::Tensor>& bias, int64_t group_size, double eps,
                     std::optional<int64_t> act_bits, at::ScalarType gemm_dtype) {
  return ternary_linear(x, w, bias, group_size, eps, act_bits, gemm_dtype);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_op(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& w, int64_t group_size,
    double eps, std::optional<int64_t> act_bits, std::array<bool, 3> output_mask,
    at::ScalarType gemm_dtype) {
  return ternary_linear_backward(grad_y, x, w, group_size, eps, act_bits, output_mask, gemm_dtype);
}

}  // namespace
}  // namespace bitcpm

TORCH_LIBRARY(bitcpm_cpu, m) {
  m.def("ternary_quantize(Tensor w, int group_size, float eps) -> (Tensor, Tensor)");
  m.def("ternary_dequantize(Tensor codes, Tensor scales, int group_size, ScalarType dtype) -> Tensor");
  m.def("fake_quantize_weight(Tensor w, int group_size, float eps, ScalarType out_dtype) -> Tensor");
  m.def("fake_quantize_activation(Tensor x, float eps, ScalarType out_dtype) -> Tensor");
  m.def(
      "ternary_linear(Tensor x, Tensor w, Tensor? bias, int group_size, float eps, int? act_bits, "
      "ScalarType gemm_dtype) -> Tensor");
  m.def(
      "ternary_linear_backward(Tensor grad_y, Tensor x, Tensor w, int group_size, float eps, "
      "int? act_bits, bool[3] output_mask, ScalarType gemm_dtype) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(bitcpm_cpu, CPU, m) {
  m.impl("ternary_quantize", &bitcpm::ternary_quantize);
  m.impl("ternary_dequantize", &bitcpm::ternary_dequantize);
  m.impl("fake_quantize_weight", &bitcpm::fake_quantize_weight);
  m.impl("fake_quantize_activation", &bitcpm::fake_quantize_activation);
  m.impl("ternary_linear", &bitcpm::linear_op);
  m.impl("ternary_linear_backward", &bitcpm::linear_backward_op);
}

// An empty Python module, so that `import bitcpm_kernels._C` loads this
// library and runs the registrations above.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
