"""Host runs of the AscendC kernel sources against the eager reference.

The unchanged files in ascendc_kernels/ are compiled with g++ against the
host AscendC subset in ascendc_kernels/host/ and run over every block index
of their launch grid. Codes must match the reference exactly. Scales may
differ by float32 summation order (relative 1e-6). Products are compared
with tolerances set by the activation dtype, because the cube accumulates in
a different order and the W1.58A8 path rounds once instead of three times.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from bitcpm_kernels import reference

HOST_DIR = Path(__file__).resolve().parents[1] / "ascendc_kernels" / "host"
sys.path.insert(0, str(HOST_DIR))
import ascendc_host_runner as runner  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is needed to build the host kernels")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]
# (atol, rtol) of forward outputs and gradients against the reference, per dtype.
PRODUCT_TOLERANCE = {
    torch.float32: (1e-4, 1e-5),
    torch.float16: (2e-2, 2e-3),
    torch.bfloat16: (1.5e-1, 1.6e-2),
}
# Shapes that break kernels: a single element, prime and odd lengths, lengths
# that are not a multiple of the 256-byte repeat, more groups than cores.
QUANTIZE_SHAPES = [(1, 1), (3, 37), (7, 131), (40, 96), (5, 1000)]


@pytest.fixture(scope="module")
def kernels():
    return runner.HostKernels()


def _weight(shape, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator).to(dtype)


def _assert_codes_equal(codes, ref_codes):
    mismatch = (codes != ref_codes).nonzero()
    assert mismatch.numel() == 0, f"{mismatch.shape[0]} codes differ, first at {mismatch[0].tolist()}"


def _assert_scales_close(scales, ref_scales):
    assert scales.shape == ref_scales.shape
    assert scales.dtype == torch.float32
    torch.testing.assert_close(scales, ref_scales, rtol=1e-6, atol=0.0)


def _group_sizes_for(k):
    sizes = [-1, 0]
    for g in (8, 32, 48):
        if k % g == 0:
            sizes.append(g)
    return sizes


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", QUANTIZE_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("tile_cap", [0, 256], ids=["resident", "two_pass"])
def test_quantize_matches_reference(kernels, dtype, shape, tile_cap):
    w = _weight(shape, dtype)
    for group_size in _group_sizes_for(shape[1]):
        codes, scales = runner.quantize(kernels, w, group_size, 1e-5, tile_cap=tile_cap)
        ref_codes, ref_scales = reference.ternary_quantize(w, group_size, 1e-5)
        _assert_codes_equal(codes, ref_codes)
        _assert_scales_close(scales, ref_scales)


def test_quantize_two_pass_long_group(kernels):
    # K = 3000 with 256-element tiles: 12 tiles per row, the last one 184 long.
    w = _weight((4, 3000), torch.float16, seed=3)
    codes, scales = runner.quantize(kernels, w, -1, 1e-5, tile_cap=256)
    ref_codes, ref_scales = reference.ternary_quantize(w, -1, 1e-5)
    _assert_codes_equal(codes, ref_codes)
    _assert_scales_close(scales, ref_scales)


@pytest.mark.parametrize("core_num", [1, 3, 7, 40, 64])
def test_quantize_every_block_writes_its_groups(kernels, core_num):
    w = _weight((13, 64), torch.float32, seed=1)
    codes = torch.full((13, 64), 7, dtype=torch.int8)
    scales = torch.full((13, 8), float("nan"))
    kernels.ternary_quantize(w, 13 * 8, 8, runner.QUANTIZE_FROM_GROUP, 1e-5, codes, scales, core_num)

    assert kernels.last_used_cores == min(core_num, 13 * 8)
    assert not (codes == 7).any(), "a block left codes unwritten"
    assert torch.isfinite(scales).all(), "a block left scales unwritten"
    ref_codes, ref_scales = reference.ternary_quantize(w, 8, 1e-5)
    _assert_codes_equal(codes, ref_codes)
    _assert_scales_close(scales, ref_scales)


def test_quantize_zero_group_gives_eps(kernels):
    w = _weight((3, 64), torch.float32)
    w[1, 16:32] = 0.0
    codes, scales = runner.quantize(kernels, w, 16, 1e-5)
    assert scales[1, 1].item() == torch.tensor(1e-5, dtype=torch.float32).item()
    assert (codes[1, 16:32] == 0).all()
    ref_codes, ref_scales = reference.ternary_quantize(w, 16, 1e-5)
    _assert_codes_equal(codes, ref_codes)
    _assert_scales_close(scales, ref_scales)


def test_quantize_half_tie_rounds_to_even(kernels):
    # sum |W| = 8 over 8 elements, so s = 1 and W / s hits the ties 0.5 and 1.5.
    w = torch.tensor([[0.5, -0.5, 1.5, -1.5, 1.0, 1.0, 1.0, 1.0]], dtype=torch.float32)
    codes, scales = runner.quantize(kernels, w, -1, 1e-5)
    assert scales.item() == 1.0
    # round_half_to_even(0.5) = 0 and round_half_to_even(1.5) = 2, clamped to 1.
    assert codes.tolist() == [[0, 0, 1, -1, 1, 1, 1, 1]]


@pytest.mark.parametrize("bad", [float("inf"), float("nan")], ids=["inf", "nan"])
def test_quantize_nonfinite_weight_gives_nonfinite_scale(kernels, bad):
    w = _weight((4, 32), torch.float32)
    w[2, 5] = bad
    codes, scales = runner.quantize(kernels, w, -1, 1e-5)
    assert not torch.isfinite(scales[2]).all()
    assert torch.isfinite(scales[[0, 1, 3]]).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("group_size", [-1, 0, 16])
def test_dequantize_matches_reference_bitwise(kernels, dtype, group_size):
    w = _weight((9, 80), torch.float32, seed=2)
    codes, scales = reference.ternary_quantize(w, group_size, 1e-5)
    out = runner.dequantize(kernels, codes, scales, group_size, dtype, tile_cap=256)
    expected = reference.ternary_dequantize(codes, scales, group_size, dtype)
    assert out.dtype == dtype
    assert torch.equal(out, expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_dequantize_codes_only_is_exact(kernels, dtype):
    codes = torch.randint(-1, 2, (5, 77), dtype=torch.int8)
    out = torch.empty((5, 77), dtype=dtype)
    kernels.ternary_dequantize(codes, None, out, 5, 77, runner.DEQUANTIZE_CODES_ONLY, 40)
    assert torch.equal(out, codes.to(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("tile_cap", [0, 256], ids=["resident", "two_pass"])
def test_act_quantize_matches_formula(kernels, dtype, tile_cap):
    x = (_weight((11, 700), torch.float32, seed=4) * 3).to(dtype)
    x[3] = 0.0
    codes = torch.empty((11, 700), dtype=torch.int8)
    row_scale = torch.empty(11, dtype=torch.float32)
    kernels.act_quantize(x, codes, row_scale, 1e-5, 40, tile_cap)

    xf = x.float()
    expected_scale = 127.0 / xf.abs().amax(dim=-1).clamp(min=1e-5)
    expected_codes = torch.round(xf * expected_scale[:, None]).clamp(-128, 127).to(torch.int8)
    assert torch.equal(row_scale, expected_scale)
    _assert_codes_equal(codes, expected_codes)
    x_hat = (codes.float() / row_scale[:, None]).to(dtype)
    assert torch.equal(x_hat, reference.fake_quantize_activation(x, 8, 1e-5))


@pytest.mark.parametrize("in_dtype", [torch.int32, torch.float32, torch.float16, torch.bfloat16],
                         ids=["i32", "fp32", "fp16", "bf16"])
@pytest.mark.parametrize("out_dtype", DTYPES, ids=DTYPE_IDS)
def test_epilogue_matches_formula(kernels, in_dtype, out_dtype):
    generator = torch.Generator().manual_seed(5)
    if in_dtype == torch.int32:
        acc = torch.randint(-5000, 5000, (6, 301), generator=generator, dtype=torch.int32)
    else:
        acc = torch.randn((6, 301), generator=generator).to(in_dtype)
    col = torch.rand(301, generator=generator) + 0.5
    row = torch.rand(6, generator=generator) * 100 + 1
    bias = torch.randn(301, generator=generator)
    out = torch.empty((6, 301), dtype=out_dtype)
    kernels.linear_epilogue(acc, col, row, bias, out, 4, tile_cap=256)

    expected = ((acc.float() * col) / row[:, None] + bias).to(out_dtype)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("dtype", [torch.int8, *DTYPES], ids=["i8", *DTYPE_IDS])
@pytest.mark.parametrize("transpose_b", [True, False], ids=["bt", "b"])
@pytest.mark.parametrize("mnk", [(1, 17, 33), (37, 300, 65), (130, 40, 7)], ids=lambda s: "x".join(map(str, s)))
def test_matmul_matches_torch(kernels, dtype, transpose_b, mnk):
    m, n, k = mnk
    generator = torch.Generator().manual_seed(6)
    if dtype == torch.int8:
        a = torch.randint(-128, 128, (m, k), generator=generator, dtype=torch.int8)
        b = torch.randint(-1, 2, (n, k) if transpose_b else (k, n), generator=generator, dtype=torch.int8)
        c = torch.empty((m, n), dtype=torch.int32)
    else:
        a = torch.randn((m, k), generator=generator).to(dtype)
        b = torch.randn((n, k) if transpose_b else (k, n), generator=generator).to(dtype)
        c = torch.empty((m, n), dtype=torch.float32)
    kernels.ternary_matmul(a, b.contiguous(), c, transpose_b, 20)

    b_kn = b.T if transpose_b else b
    if dtype == torch.int8:
        assert torch.equal(c, a.long().matmul(b_kn.long()).to(torch.int32))
    else:
        torch.testing.assert_close(c, a.double().matmul(b_kn.double()).float(), atol=1e-4, rtol=1e-5)


LINEAR_CASES = [
    # (x shape, N, group_size, act_bits)
    ((5, 3, 96), 37, -1, None),
    ((1, 96), 1, -1, None),
    ((4, 96), 40, 0, None),
    ((7, 96), 33, 32, None),
    ((2, 3, 96), 45, -1, 8),
    ((9, 96), 17, 0, 8),
    ((3, 1000), 19, -1, None),
    ((7, 96), 33, 32, 8),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", LINEAR_CASES, ids=lambda c: f"x{'x'.join(map(str, c[0]))}-n{c[1]}-g{c[2]}-a{c[3]}")
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
def test_linear_forward_matches_reference(kernels, dtype, case, with_bias):
    x_shape, n, group_size, act_bits = case
    k = x_shape[-1]
    x = _weight(x_shape, dtype, seed=7)
    w = _weight((n, k), dtype, seed=8)
    bias = _weight((n,), dtype, seed=9) if with_bias else None

    y = runner.linear_forward(kernels, x, w, bias, group_size, 1e-5, act_bits, tile_cap=256)
    expected = reference.ternary_linear(x, w, bias, group_size, 1e-5, act_bits)
    atol, rtol = PRODUCT_TOLERANCE[dtype]
    assert y.shape == expected.shape
    assert y.dtype == dtype
    torch.testing.assert_close(y, expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("group_size", [-1, 0, 32])
def test_linear_grad_x_matches_reference(kernels, dtype, group_size):
    x = _weight((6, 96), dtype, seed=10).requires_grad_(True)
    w = _weight((29, 96), dtype, seed=11).requires_grad_(True)
    grad_y = _weight((6, 29), dtype, seed=12)
    reference.ternary_linear(x, w, None, group_size, 1e-5, None).backward(grad_y)

    grad_x = runner.linear_grad_x(kernels, grad_y, w.detach(), group_size, 1e-5, tile_cap=256)
    atol, rtol = PRODUCT_TOLERANCE[dtype]
    torch.testing.assert_close(grad_x, x.grad, atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("group_size,act_bits", [(-1, None), (0, 8), (32, 8)], ids=["g-1", "g0-a8", "g32-a8"])
def test_linear_backward_matches_reference(kernels, dtype, group_size, act_bits):
    x = _weight((2, 3, 64), dtype, seed=14).requires_grad_(True)
    w = _weight((21, 64), dtype, seed=15).requires_grad_(True)
    bias = _weight((21,), dtype, seed=16).requires_grad_(True)
    grad_y = _weight((2, 3, 21), dtype, seed=17)
    reference.ternary_linear(x, w, bias, group_size, 1e-5, act_bits).backward(grad_y)

    grad_x, grad_w, grad_bias = runner.linear_backward(
        kernels, grad_y, x.detach(), w.detach(), group_size, 1e-5, act_bits, tile_cap=256
    )
    atol, rtol = PRODUCT_TOLERANCE[dtype]
    torch.testing.assert_close(grad_x, x.grad, atol=atol, rtol=rtol)
    torch.testing.assert_close(grad_w, w.grad, atol=atol, rtol=rtol)
    torch.testing.assert_close(grad_bias, bias.grad, atol=atol, rtol=rtol)


def test_linear_backward_mask_skips_outputs(kernels):
    x = _weight((4, 32), torch.float32)
    w = _weight((8, 32), torch.float32)
    grad_y = _weight((4, 8), torch.float32)
    grad_x, grad_w, grad_bias = runner.linear_backward(kernels, grad_y, x, w, -1, 1e-5, None, (False, True, False))
    assert grad_x.numel() == 0
    assert grad_w.shape == (8, 32)
    assert grad_bias.numel() == 0


def test_linear_forward_empty_batch(kernels):
    x = torch.empty((0, 32), dtype=torch.float16)
    w = _weight((8, 32), torch.float16)
    bias = _weight((8,), torch.float16)
    y = runner.linear_forward(kernels, x, w, bias, -1, 1e-5, 8)
    assert y.shape == (0, 8)
    assert y.dtype == torch.float16

