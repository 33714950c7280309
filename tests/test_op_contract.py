"""The op contract: opcheck, torch.compile, backend switching and saved tensors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import bitcpm_kernels as bk
from bitcpm_kernels import _backend

REPO_ROOT = Path(__file__).resolve().parents[1]


# --- torch.library.opcheck ---------------------------------------------------


def quantize_samples():
    yield (torch.randn(5, 9), -1, 1e-5)
    yield (torch.randn(4, 64).to(torch.bfloat16), 32, 1e-5)
    yield (torch.randn(3, 7).to(torch.float16), 0, 1e-3)


def dequantize_samples():
    for w, group_size, eps in quantize_samples():
        codes, scales = bk.ternary_quantize(w, group_size, eps)
        yield (codes, scales, group_size, w.dtype)


def linear_samples():
    yield (torch.randn(3, 16, requires_grad=True), torch.randn(8, 16, requires_grad=True),
           None, -1, 1e-5, None)
    yield (torch.randn(2, 3, 32, requires_grad=True), torch.randn(5, 32, requires_grad=True),
           torch.randn(5, requires_grad=True), 16, 1e-5, 8)
    yield (torch.randn(4, 24).to(torch.bfloat16), torch.randn(6, 24).to(torch.bfloat16),
           torch.randn(6).to(torch.bfloat16), 0, 1e-5, None)
    yield (torch.randn(1, 5, dtype=torch.float16), torch.randn(3, 5, dtype=torch.float16,
           requires_grad=True), None, -1, 1e-5, 8)


def backward_samples():
    yield (torch.randn(3, 8), torch.randn(3, 16), torch.randn(8, 16), -1, 1e-5, None,
           [True, True, True])
    yield (torch.randn(2, 3, 5), torch.randn(2, 3, 32), torch.randn(5, 32), 16, 1e-5, 8,
           [True, False, True])
    yield (torch.randn(4, 6).to(torch.bfloat16), torch.randn(4, 24).to(torch.bfloat16),
           torch.randn(6, 24).to(torch.bfloat16), 0, 1e-5, None, [False, True, False])


OPCHECK_CASES = [
    ("ternary_quantize", quantize_samples),
    ("ternary_dequantize", dequantize_samples),
    ("ternary_linear", linear_samples),
    ("ternary_linear_backward", backward_samples),
]


@pytest.mark.parametrize(
    "op_name,samples", OPCHECK_CASES, ids=[f"op={name}" for name, _ in OPCHECK_CASES]
)
def test_opcheck(op_name, samples):
    op = getattr(torch.ops.bitcpm, op_name)
    for args in samples():
        torch.library.opcheck(op, args)


def test_fake_kernel_shapes_on_meta_device():
    w = torch.empty(6, 64, device="meta")
    x = torch.empty(2, 3, 64, device="meta")

    codes, scales = torch.ops.bitcpm.ternary_quantize(w, 16, 1e-5)
    y = torch.ops.bitcpm.ternary_linear(x, w, None, 16, 1e-5, None)

    assert codes.dtype == torch.int8
    assert codes.shape == (6, 64)
    assert scales.dtype == torch.float32
    assert scales.shape == (6, 4)
    assert y.shape == (2, 3, 6)
    assert y.device.type == "meta"


# --- torch.compile -------------------------------------------------------------


def make_model() -> nn.Module:
    return nn.Sequential(
        bk.BitLinear(32, 48, bias=True),
        nn.GELU(),
        bk.BitLinear(48, 48, group_size=16, act_bits=8),
        nn.GELU(),
        bk.BitLinear(48, 8, bias=True, group_size=0),
    )


def run_step(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    y = model(x)
    y.square().mean().backward()
    return y.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize(
    "compile_backend",
    ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)],
    ids=lambda b: f"backend={b}",
)
def test_compile_fullgraph_matches_eager(compile_backend):
    torch._dynamo.reset()
    model = make_model()
    x = torch.randn(4, 5, 32, requires_grad=True)

    eager_y, eager_grads = run_step(model, x)
    eager_grad_x = x.grad.clone()
    x.grad = None
    compiled = torch.compile(model, backend=compile_backend, fullgraph=True)
    compiled_y, compiled_grads = run_step(compiled, x)

    torch.testing.assert_close(compiled_y, eager_y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad, eager_grad_x, atol=1e-5, rtol=1e-5)
    for compiled_grad, eager_grad in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(compiled_grad, eager_grad, atol=1e-5, rtol=1e-5)


def test_compile_has_no_graph_breaks():
    torch._dynamo.reset()
    model = make_model()
    x = torch.randn(3, 32)

    explanation = torch._dynamo.explain(model)(x)

    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


# --- backend selection ---------------------------------------------------------


def test_set_backend_reference_and_back():
    w = torch.randn(8, 32)

    bk.set_backend("reference")
    info = bk.backend_info()
    reference_codes, reference_scales = bk.ternary_quantize(w, -1)

    assert bk.get_backend() == "reference"
    assert info["cpu"]["backend"] == "reference"
    assert info["requested"]["backend"] == "reference"
    assert _backend.select("cpu").NAME == "reference"
    expected_codes, expected_scales = bk.reference.ternary_quantize(w, -1)
    assert torch.equal(reference_codes, expected_codes)
    assert torch.equal(reference_scales, expected_scales)

    bk.set_backend("auto")
    assert bk.backend_info()["cpu"]["backend"] == "cpu"
    assert _backend.select("cpu").NAME == "cpu"


def test_set_backend_rejects_unknown_name():
    with pytest.raises(ValueError, match="'fused'"):
        bk.set_backend("fused")


def run_with_env(value: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["BITCPM_BACKEND"] = value
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    code = (
        "import bitcpm_kernels as bk\n"
        "info = bk.backend_info()\n"
        "print(info['cpu']['backend'], info['requested']['backend'])\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "value,expected",
    [("reference", "reference reference"), ("auto", "cpu auto"), (" Reference ", "reference reference")],
    ids=["env=reference", "env=auto", "env=padded-mixed-case"],
)
def test_env_var_selects_backend(value, expected):
    result = run_with_env(value)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_env_var_rejects_unknown_value():
    result = run_with_env("cuda")

    assert result.returncode != 0
    assert "BITCPM_BACKEND='cuda' is invalid" in result.stderr


# --- memory kept for backward --------------------------------------------------


def saved_tensors_of(fn, x, w, bias):
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        y = fn(x, w, bias, 32, 1e-5, None)
    return y, saved


def storage_ptr(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["dtype=fp32", "dtype=bf16"])
def test_fused_backend_saves_only_x_and_weight(dtype):
    w = nn.Parameter(torch.randn(64, 128).to(dtype))
    bias = nn.Parameter(torch.randn(64).to(dtype))
    x = torch.randn(8, 128).to(dtype).requires_grad_()

    y, saved = saved_tensors_of(bk.ternary_linear, x, w, bias)
    y.sum().backward()

    assert saved, "no tensor was saved for backward"
    allowed = {storage_ptr(x), storage_ptr(w)}
    for tensor in saved:
        assert storage_ptr(tensor) in allowed, (
            f"a {tuple(tensor.shape)} {tensor.dtype} tensor that is neither x nor the weight "
            f"was saved for backward"
        )
    assert w.grad is not None and x.grad is not None


def test_reference_saves_a_weight_sized_tensor():
    # The detach form W + (W_hat - W).detach() creates a new weight-sized
    # tensor that F.linear saves (transposed) for grad_x. The fused op avoids it.
    w = nn.Parameter(torch.randn(64, 128))
    x = torch.randn(8, 128, requires_grad=True)

    _, saved = saved_tensors_of(bk.reference.ternary_linear, x, w, None)

    extra = [
        tensor for tensor in saved
        if tensor.numel() == w.numel() and tensor.is_floating_point()
        and storage_ptr(tensor) != storage_ptr(w)
    ]
    assert extra, "the reference was expected to save a weight-sized copy for backward"
