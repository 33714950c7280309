"""Bad inputs raise a clear error that names the offending value.

Every check runs against the public functions and the eager reference (which
share one set of checks), and the layer-level checks against ``BitLinear``.
"""

from __future__ import annotations

import re

import pytest
import torch

import bitcpm_kernels as bk

QUANTIZERS = [
    pytest.param(bk.ternary_quantize, id="fn=public"),
    pytest.param(bk.reference.ternary_quantize, id="fn=reference"),
]
LINEARS = [
    pytest.param(bk.ternary_linear, id="fn=public"),
    pytest.param(bk.reference.ternary_linear, id="fn=reference"),
]


# --- group size ---------------------------------------------------------------


@pytest.mark.parametrize("quantize", QUANTIZERS)
@pytest.mark.parametrize("k,group_size", [(100, 32), (4095, 128), (3, 2)], ids=lambda v: str(v))
def test_group_size_not_dividing_k(quantize, k, group_size):
    with pytest.raises(ValueError, match=rf"K={k} is not a multiple of group_size={group_size}"):
        quantize(torch.randn(4, k), group_size)


@pytest.mark.parametrize("linear", LINEARS)
def test_linear_group_size_not_dividing_k(linear):
    with pytest.raises(ValueError, match=r"K=48 is not a multiple of group_size=32"):
        linear(torch.randn(2, 48), torch.randn(4, 48), None, 32)


@pytest.mark.parametrize("quantize", QUANTIZERS)
def test_negative_group_size(quantize):
    with pytest.raises(ValueError, match=r"group_size=-2 is invalid"):
        quantize(torch.randn(4, 8), -2)


def test_reference_rejects_bool_group_size():
    # NOTE: the public op does not get this check, because the custom op
    # schema (int group_size) converts True to 1 before the Python check runs.
    with pytest.raises(TypeError, match=r"group_size must be an int, got True"):
        bk.reference.ternary_quantize(torch.randn(4, 8), True)


# --- dtypes -------------------------------------------------------------------


BAD_DTYPES = [torch.int8, torch.int32, torch.int64, torch.complex64, torch.float64]


@pytest.mark.parametrize("quantize", QUANTIZERS)
@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=lambda d: f"dtype={str(d).replace('torch.', '')}")
def test_quantize_rejects_dtype(quantize, dtype):
    w = torch.ones(4, 8, dtype=dtype)

    with pytest.raises(TypeError, match=rf"weight has dtype {re.escape(str(dtype))}"):
        quantize(w)


@pytest.mark.parametrize("linear", LINEARS)
@pytest.mark.parametrize("dtype", [torch.int64, torch.complex64], ids=["dtype=int64", "dtype=complex64"])
def test_linear_rejects_non_float_x(linear, dtype):
    x = torch.ones(2, 8, dtype=dtype)

    with pytest.raises(TypeError, match=rf"x has dtype {re.escape(str(dtype))}"):
        linear(x, torch.randn(4, 8))


@pytest.mark.parametrize("linear", LINEARS)
def test_linear_dtype_mismatch(linear):
    x = torch.randn(2, 8, dtype=torch.float16)
    w = torch.randn(4, 8)

    with pytest.raises(TypeError, match=r"x has dtype torch.float16 but weight has dtype torch.float32"):
        linear(x, w)


@pytest.mark.parametrize("linear", LINEARS)
def test_bias_dtype_mismatch(linear):
    bias = torch.randn(4, dtype=torch.bfloat16)

    with pytest.raises(TypeError, match=r"bias has dtype torch.bfloat16 but weight has dtype torch.float32"):
        linear(torch.randn(2, 8), torch.randn(4, 8), bias)


def test_dequantize_rejects_output_dtype():
    codes, scales = bk.ternary_quantize(torch.randn(2, 4))

    with pytest.raises(TypeError, match=r"got torch.int32"):
        bk.ternary_dequantize(codes, scales, -1, torch.int32)


def test_dequantize_rejects_float_codes():
    with pytest.raises(TypeError, match=r"codes must be a 2-D int8 tensor, got dtype torch.float32"):
        bk.ternary_dequantize(torch.zeros(2, 4), torch.ones(2, 1))


def test_dequantize_rejects_wrong_scale_shape():
    codes = torch.zeros(2, 8, dtype=torch.int8)

    with pytest.raises(ValueError, match=r"scales have shape \(2, 1\).*need scales of shape \(2, 2\)"):
        bk.ternary_dequantize(codes, torch.ones(2, 1), 4)


# --- shapes -------------------------------------------------------------------


@pytest.mark.parametrize("linear", LINEARS)
def test_linear_feature_mismatch(linear):
    with pytest.raises(ValueError, match=r"x has 10 features .* in_features=12"):
        linear(torch.randn(3, 10), torch.randn(5, 12))


@pytest.mark.parametrize("linear", LINEARS)
@pytest.mark.parametrize("bias_shape", [(5,), (1, 6), ()], ids=lambda s: f"bias={s}")
def test_bad_bias_shape(linear, bias_shape):
    bias = torch.randn(bias_shape)
    expected = re.escape(f"got {tuple(bias_shape)}")

    with pytest.raises(ValueError, match=rf"bias must have shape \(6,\).*{expected}"):
        linear(torch.randn(3, 8), torch.randn(6, 8), bias)


@pytest.mark.parametrize("quantize", QUANTIZERS)
@pytest.mark.parametrize("shape", [(8,), (2, 3, 4)], ids=lambda s: f"shape={s}")
def test_weight_must_be_2d(quantize, shape):
    with pytest.raises(ValueError, match=re.escape(f"got shape {shape}")):
        quantize(torch.randn(shape))


@pytest.mark.parametrize("quantize", QUANTIZERS)
def test_empty_weight(quantize):
    with pytest.raises(ValueError, match=r"weight must not be empty, got shape \(0, 8\)"):
        quantize(torch.randn(0, 8))


@pytest.mark.parametrize("linear", LINEARS)
def test_scalar_x(linear):
    with pytest.raises(ValueError, match=r"at least one dimension"):
        linear(torch.tensor(1.0), torch.randn(4, 1))


# --- devices ------------------------------------------------------------------


@pytest.mark.parametrize("linear", LINEARS)
def test_x_and_weight_on_different_devices(linear):
    x = torch.empty(2, 8, device="meta")

    with pytest.raises(ValueError, match=r"x is on meta but weight is on cpu"):
        linear(x, torch.randn(4, 8))


@pytest.mark.parametrize("linear", LINEARS)
def test_bias_on_different_device(linear):
    bias = torch.empty(4, device="meta")

    with pytest.raises(ValueError, match=r"bias is on meta but weight is on cpu"):
        linear(torch.randn(2, 8), torch.randn(4, 8), bias)


def test_codes_and_scales_on_different_devices():
    codes = torch.zeros(2, 4, dtype=torch.int8)
    scales = torch.ones(2, 1, device="meta")

    with pytest.raises(ValueError, match=r"codes are on cpu but scales are on meta"):
        bk.ternary_dequantize(codes, scales)


# --- non-finite weights -------------------------------------------------------


def weight_with_non_finite(count: int, dtype=torch.float32) -> torch.Tensor:
    w = torch.randn(6, 16).to(dtype)
    values = [float("nan"), float("inf"), float("-inf")]
    for i in range(count):
        w[i % 6, (5 * i) % 16] = values[i % 3]
    return w


@pytest.mark.parametrize("quantize", QUANTIZERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["dtype=fp32", "dtype=bf16", "dtype=fp16"])
@pytest.mark.parametrize("count", [1, 3], ids=lambda c: f"bad={c}")
@pytest.mark.parametrize("group_size", [-1, 0, 4], ids=lambda g: f"group={g}")
def test_quantize_non_finite_weight(quantize, dtype, count, group_size):
    w = weight_with_non_finite(count, dtype)

    with pytest.raises(ValueError, match=rf"weight contains {count} non-finite value\(s\)"):
        quantize(w, group_size)


@pytest.mark.parametrize("linear", LINEARS)
@pytest.mark.parametrize("group_size", [-1, 0, 8], ids=lambda g: f"group={g}")
def test_linear_non_finite_weight(linear, group_size):
    w = weight_with_non_finite(2)

    with pytest.raises(ValueError, match=r"weight contains 2 non-finite value\(s\)"):
        linear(torch.randn(3, 16), w, None, group_size)


def test_backward_non_finite_weight():
    w = weight_with_non_finite(1)

    with pytest.raises(ValueError, match=r"weight contains 1 non-finite value\(s\)"):
        torch.ops.bitcpm.ternary_linear_backward(
            torch.randn(3, 6), torch.randn(3, 16), w, -1, 1e-5, None, [True, True, False]
        )


def test_reference_reports_scale_overflow():
    # Every value is finite, but the reference's float32 sum of |w| overflows.
    w = torch.full((2, 4), torch.finfo(torch.float32).max)

    with pytest.raises(ValueError, match=r"overflows float32"):
        bk.reference.ternary_quantize(w, 0)


def test_fused_quantizer_keeps_largest_float32_mean():
    # The CPU kernel sums |w| in double, so the mean of float32-max values is
    # float32 max again; this is the exact mean that the reference cannot form.
    largest = torch.finfo(torch.float32).max
    w = torch.full((2, 4), largest)

    codes, scales = bk.ternary_quantize(w, 0)

    assert scales.item() == largest
    assert bool((codes == 1).all())


# --- act_bits and eps ---------------------------------------------------------


@pytest.mark.parametrize("linear", LINEARS)
@pytest.mark.parametrize("act_bits", [4, 16, 0], ids=lambda a: f"act_bits={a}")
def test_bad_act_bits(linear, act_bits):
    with pytest.raises(ValueError, match=rf"act_bits={act_bits} is not supported"):
        linear(torch.randn(2, 8), torch.randn(4, 8), None, -1, 1e-5, act_bits)


@pytest.mark.parametrize("quantize", QUANTIZERS)
@pytest.mark.parametrize("eps", [0.0, -1e-5, float("nan"), float("inf")], ids=lambda e: f"eps={e}")
def test_bad_eps(quantize, eps):
    with pytest.raises(ValueError, match=rf"eps must be a finite positive number, got {eps!r}"):
        quantize(torch.randn(4, 8), -1, eps)


@pytest.mark.parametrize("linear", LINEARS)
def test_linear_bad_eps(linear):
    with pytest.raises(ValueError, match=r"got -1.0"):
        linear(torch.randn(2, 8), torch.randn(4, 8), None, -1, -1.0)


def test_backward_output_mask_length():
    with pytest.raises(ValueError, match=r"output_mask must have 3 entries .* got 2"):
        torch.ops.bitcpm.ternary_linear_backward(
            torch.randn(3, 4), torch.randn(3, 8), torch.randn(4, 8), -1, 1e-5, None, [True, True]
        )


def test_backward_grad_y_shape():
    with pytest.raises(ValueError, match=r"grad_y has shape \(3, 5\), expected \(3, 4\)"):
        torch.ops.bitcpm.ternary_linear_backward(
            torch.randn(3, 5), torch.randn(3, 8), torch.randn(4, 8), -1, 1e-5, None,
            [True, True, True],
        )


# --- BitLinear ----------------------------------------------------------------


def test_bitlinear_group_size_not_dividing_in_features():
    with pytest.raises(ValueError, match=r"K=48 is not a multiple of group_size=32"):
        bk.BitLinear(48, 8, group_size=32)


def test_bitlinear_bad_act_bits():
    with pytest.raises(ValueError, match=r"act_bits=4 is not supported"):
        bk.BitLinear(8, 8, act_bits=4)


def test_bitlinear_bad_eps():
    with pytest.raises(ValueError, match=r"got 0.0"):
        bk.BitLinear(8, 8, eps=0.0)


def test_bitlinear_from_linear_bad_group_size():
    with pytest.raises(ValueError, match=r"K=10 is not a multiple of group_size=4"):
        bk.BitLinear.from_linear(torch.nn.Linear(10, 3), group_size=4)


def test_bitlinear_from_linear_rejects_other_modules():
    with pytest.raises(TypeError, match=r"got Conv1d"):
        bk.BitLinear.from_linear(torch.nn.Conv1d(3, 3, 1))


def test_bitlinear_input_feature_mismatch():
    layer = bk.BitLinear(12, 4)

    with pytest.raises(ValueError, match=r"x has 10 features .* in_features=12"):
        layer(torch.randn(2, 10))


def test_bitlinear_input_dtype_mismatch():
    layer = bk.BitLinear(8, 4)

    with pytest.raises(TypeError, match=r"x has dtype torch.bfloat16 but weight has dtype torch.float32"):
        layer(torch.randn(2, 8, dtype=torch.bfloat16))


def test_bitlinear_non_finite_weight():
    layer = bk.BitLinear(16, 6, bias=True)
    with torch.no_grad():
        layer.weight.copy_(weight_with_non_finite(3))

    with pytest.raises(ValueError, match=r"weight contains 3 non-finite value\(s\)"):
        layer(torch.randn(2, 16))


def test_bitlinear_input_on_other_device():
    layer = bk.BitLinear(8, 4)

    with pytest.raises(ValueError, match=r"x is on meta but weight is on cpu"):
        layer(torch.empty(2, 8, device="meta"))


def test_replace_linears_bad_group_size_names_layer():
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Linear(8, 6))

    with pytest.raises(ValueError, match=r"layer 1 has in_features=8, .* group_size=16"):
        bk.replace_linears(model, group_size=16)
