"""The compiled CPU backend: fused C++ kernels registered as ``torch.ops.bitcpm_cpu``.

Importing this module loads ``bitcpm_kernels._C`` and raises ImportError when
the extension was not built or does not load.
"""

from __future__ import annotations

import os

import torch

from .. import _C  # noqa: F401  (loads the library that registers torch.ops.bitcpm_cpu)

NAME = "cpu"
_kernels = torch.ops.bitcpm_cpu


def _native_16bit_gemm(dtype: torch.dtype) -> bool:
    """Return whether oneDNN has native instructions for a GEMM in ``dtype`` on this CPU."""
    try:
        if dtype == torch.bfloat16:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        if dtype == torch.float16:
            return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        return False
    return False


def gemm_dtype(dtype: torch.dtype) -> torch.dtype:
    """Return the dtype that the dense products of a ``dtype`` layer run in.

    Without AVX-512 BF16/FP16 or AMX, ATen's 16-bit GEMM converts in its inner
    loop and is several times slower than MKL's float32 GEMM, so the operands
    are widened to float32 and the result rounded back once.
    ``BITCPM_CPU_GEMM_DTYPE=input`` keeps the input dtype instead.
    """
    choice = os.environ.get("BITCPM_CPU_GEMM_DTYPE", "auto").strip().lower() or "auto"
    if choice not in ("auto", "input"):
        raise ValueError(
            f"BITCPM_CPU_GEMM_DTYPE={choice!r} is invalid: use 'auto' (float32 where the CPU has "
            f"no native 16-bit GEMM) or 'input' (always the input dtype)"
        )
    if dtype == torch.float32 or choice == "input":
        return dtype
    return dtype if _native_16bit_gemm(dtype) else torch.float32


def describe() -> str:
    bf16 = gemm_dtype(torch.bfloat16)
    return f"fused C++ kernels (bfloat16 layers multiply in {str(bf16).replace('torch.', '')})"


def quantize(w: torch.Tensor, group_size: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _kernels.ternary_quantize(w, group_size, eps)


def dequantize(
    codes: torch.Tensor, scales: torch.Tensor, group_size: int, dtype: torch.dtype
) -> torch.Tensor:
    return _kernels.ternary_dequantize(codes, scales, group_size, dtype)


def linear_forward(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor | None,
    group_size: int,
    eps: float,
    act_bits: int | None,
) -> torch.Tensor:
    return _kernels.ternary_linear(x, w, bias, group_size, eps, act_bits, gemm_dtype(w.dtype))


def linear_backward(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    w: torch.Tensor,
    group_size: int,
    eps: float,
    act_bits: int | None,
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _kernels.ternary_linear_backward(
        grad_y, x, w, group_size, eps, act_bits, output_mask, gemm_dtype(w.dtype)
    )
