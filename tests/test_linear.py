"""The fused ternary linear and its straight-through backward against the eager reference.

The reference is ``bk.reference.ternary_linear``: ``F.linear`` on the detach
form ``W + (W_hat - W).detach()``, differentiated by autograd.
"""

from __future__ import annotations

import pytest
import torch

import bitcpm_kernels as bk
from conftest import DTYPES, dtype_id, group_id

# (dtype, atol, rtol) for y and grad_x. Measured on this suite's inputs (x and
# grad_y standard normal, W = 0.05 * standard normal, K up to 4097) over
# three seeds: with rtol fixed at about two units in the last place, the
# largest remaining absolute error was 1.0e-6 (fp32), 5.2e-3 (bf16) and
# 6.0e-4 (fp16). The atol below is about four times that. The error comes
# from the reference rounding the detach-form sum W + (W_hat - W) in the input
# dtype and from a different GEMM accumulation order. On a CPU without native
# 16-bit GEMM the kernel multiplies in float32 and rounds once.
# grad_W and grad_bias matched the reference bit for bit in those runs; they
# use the same table.
TOLERANCES = {
    torch.float32: (5e-6, 1.3e-6),
    torch.bfloat16: (2e-2, 1.6e-2),
    torch.float16: (2.5e-3, 2e-3),
}


def assert_close(actual, expected, dtype, name):
    atol, rtol = TOLERANCES[dtype]
    assert actual.dtype == expected.dtype, name
    assert actual.shape == expected.shape, name
    torch.testing.assert_close(
        actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}"
    )


def make_inputs(x_shape, out_features, dtype, with_bias):
    in_features = x_shape[-1]
    x = torch.randn(x_shape).to(dtype)
    w = (0.05 * torch.randn(out_features, in_features)).to(dtype)
    bias = torch.randn(out_features).to(dtype) if with_bias else None
    return x, w, bias


def run_both(x, w, bias, group_size, act_bits, grad_y=None, requires=(True, True, True)):
    """Run the public op and the reference on clones, and return each output with its leaf gradients."""
    results = []
    for fn in (bk.ternary_linear, bk.reference.ternary_linear):
        leaves = [
            None if t is None else t.detach().clone().requires_grad_(flag)
            for t, flag in zip((x, w, bias), requires)
        ]
        y = fn(leaves[0], leaves[1], leaves[2], group_size, 1e-5, act_bits)
        if grad_y is None:
            grad_y = torch.randn_like(y)
        if y.requires_grad:
            y.backward(grad_y)
        grads = [None if t is None else t.grad for t in leaves]
        results.append((y.detach(), grads))
    return results


# (x shape, out_features, group_size): 2-D and 3-D x, one token, odd and
# prime sizes, K = 1 and K = 4097, every kind of group.
CASES = [
    ((1, 1), 1, -1),
    ((1, 7), 3, -1),
    ((5, 9), 13, 0),
    ((2, 3, 64), 17, 32),
    ((7, 127), 33, -1),
    ((4, 5, 128), 96, 64),
    ((3, 4097), 5, -1),
    ((16, 576), 192, 0),
]


def case_id(case):
    x_shape, n, group = case
    return "x=" + "x".join(map(str, x_shape)) + f"-n={n}-{group_id(group)}"


@pytest.mark.parametrize("with_bias", [False, True], ids=["bias=no", "bias=yes"])
@pytest.mark.parametrize("act_bits", [None, 8], ids=lambda a: f"act_bits={a}")
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_forward_and_gradients_match_reference(case, dtype, act_bits, with_bias):
    x_shape, n, group_size = case
    x, w, bias = make_inputs(x_shape, n, dtype, with_bias)

    (y, grads), (ref_y, ref_grads) = run_both(x, w, bias, group_size, act_bits)

    assert y.shape == (*x_shape[:-1], n)
    assert_close(y, ref_y, dtype, "y")
    assert_close(grads[0], ref_grads[0], dtype, "grad_x")
    assert_close(grads[1], ref_grads[1], dtype, "grad_w")
    if with_bias:
        assert_close(grads[2], ref_grads[2], dtype, "grad_bias")


@pytest.mark.parametrize("act_bits", [None, 8], ids=lambda a: f"act_bits={a}")
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_backward_equals_ste_formulas(dtype, act_bits):
    # The three gradients written out from the specification, in float64.
    x, w, bias = make_inputs((6, 40), 12, dtype, True)
    x.requires_grad_()
    w.requires_grad_()
    bias.requires_grad_()

    y = bk.ternary_linear(x, w, bias, 8, 1e-5, act_bits)
    grad_y = torch.randn_like(y)
    y.backward(grad_y)

    w_hat = bk.reference.fake_quantize_weight(w, 8).double()
    x_hat = x.detach() if act_bits is None else bk.reference.fake_quantize_activation(x.detach())
    g = grad_y.double()
    assert_close(x.grad.double(), g @ w_hat, dtype, "grad_x")
    assert_close(w.grad.double(), g.t() @ x_hat.double(), dtype, "grad_w")
    assert_close(bias.grad.double(), g.sum(0), dtype, "grad_bias")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("x_shape", [(0, 24), (2, 0, 24)], ids=lambda s: f"x={s}")
def test_zero_tokens(x_shape, dtype):
    x, w, bias = make_inputs(x_shape, 8, dtype, True)

    (y, grads), (ref_y, ref_grads) = run_both(x, w, bias, -1, None)

    assert y.shape == (*x_shape[:-1], 8)
    assert grads[0].shape == x_shape
    assert torch.equal(grads[1], torch.zeros_like(w))
    assert torch.equal(grads[2], torch.zeros_like(bias))
    assert torch.equal(ref_grads[1], grads[1])


REQUIRES = [
    (True, False, False),
    (False, True, False),
    (False, False, True),
    (True, True, False),
    (False, True, True),
]


@pytest.mark.parametrize(
    "requires", REQUIRES, ids=lambda r: "grad=" + "".join("xwb"[i] for i in range(3) if r[i])
)
def test_requires_grad_subsets(requires):
    x, w, bias = make_inputs((4, 3, 48), 10, torch.float32, True)

    (y, grads), (ref_y, ref_grads) = run_both(x, w, bias, 16, 8, requires=requires)

    assert_close(y, ref_y, torch.float32, "y")
    for flag, grad, ref_grad, name in zip(requires, grads, ref_grads, ("x", "w", "bias")):
        if flag:
            assert_close(grad, ref_grad, torch.float32, f"grad_{name}")
        else:
            assert grad is None, f"{name} does not require grad but got one"


@pytest.mark.parametrize(
    "mask", [[True, False, False], [False, True, False], [False, False, True], [True, True, True]],
    ids=lambda m: "mask=" + "".join("1" if f else "0" for f in m),
)
def test_backward_op_output_mask(mask):
    x, w, _ = make_inputs((5, 32), 7, torch.float32, False)
    grad_y = torch.randn(5, 7)

    grad_x, grad_w, grad_bias = torch.ops.bitcpm.ternary_linear_backward(
        grad_y, x, w, -1, 1e-5, None, mask
    )

    expected_shapes = (x.shape, w.shape, (7,))
    for flag, grad, shape in zip(mask, (grad_x, grad_w, grad_bias), expected_shapes):
        if flag:
            assert grad.shape == shape
        else:
            assert grad.numel() == 0
    if mask[0]:
        w_hat = bk.reference.fake_quantize_weight(w)
        assert_close(grad_x, grad_y @ w_hat, torch.float32, "grad_x")
    if mask[2]:
        assert_close(grad_bias, grad_y.sum(0), torch.float32, "grad_bias")


def test_no_grad_forward_matches_reference():
    x, w, bias = make_inputs((3, 3, 30), 11, torch.float32, True)

    with torch.no_grad():
        y = bk.ternary_linear(x, w, bias, 10)
        ref_y = bk.reference.ternary_linear(x, w, bias, 10)

    assert_close(y, ref_y, torch.float32, "y")


@pytest.mark.parametrize("act_bits", [None, 8], ids=lambda a: f"act_bits={a}")
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_all_zero_weight_gives_bias(dtype, act_bits):
    x = torch.randn(4, 16).to(dtype).requires_grad_()
    w = torch.zeros(6, 16, dtype=dtype, requires_grad=True)
    bias = torch.randn(6).to(dtype).requires_grad_()

    y = bk.ternary_linear(x, w, bias, -1, 1e-5, act_bits)
    y.sum().backward()

    assert torch.equal(y, bias.detach().expand(4, 6))
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert not bool(torch.isnan(w.grad).any())
    x_hat = x.detach() if act_bits is None else bk.reference.fake_quantize_activation(x.detach())
    assert_close(w.grad, torch.ones(6, 4, dtype=dtype) @ x_hat, dtype, "grad_w")


def test_all_zero_weight_and_input_without_bias():
    x = torch.zeros(3, 8, requires_grad=True)
    w = torch.zeros(2, 8, requires_grad=True)

    y = bk.ternary_linear(x, w, None, 0, 1e-5, 8)
    y.sum().backward()

    assert torch.equal(y, torch.zeros(3, 2))
    assert not bool(torch.isnan(x.grad).any())
    assert not bool(torch.isnan(w.grad).any())
