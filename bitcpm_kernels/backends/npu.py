"""The NPU backend: AscendC kernels registered as ``torch.ops.bitcpm_npu``.

Importing this module loads ``bitcpm_kernels._npu_C`` and raises ImportError
when the extension was not built or does not load. The extension is built by
``pip install .`` on a host with the CANN toolkit and torch_npu (see
docs/npu.md). ``torch_npu`` is imported only after the extension was found,
so on a machine without CANN this module never touches torch_npu.

The four functions have the signatures of every backend module and are called
by ``bitcpm_kernels/ops.py`` for tensors on the ``npu`` device. Autograd lives
in ops.py and is shared with the CPU path.
"""

from __future__ import annotations

import importlib
import importlib.util

import torch

from .. import _validation

NAME = "npu"
EXTENSION = "bitcpm_kernels._npu_C"


def _load_extension() -> None:
    """Import torch_npu and the extension, or raise ImportError with the reason."""
    if importlib.util.find_spec(EXTENSION) is None:
        raise ImportError(
            f"{EXTENSION} was not built; build on a host with CANN and torch_npu (see docs/npu.md)"
        )
    try:
        import torch_npu  # noqa: F401  (renames PrivateUse1 to "npu")
    except (ImportError, OSError, RuntimeError) as error:
        raise ImportError(f"{EXTENSION} is built but torch_npu failed to import: {error}") from error
    # Importing the extension runs its TORCH_LIBRARY registrations.
    importlib.import_module(EXTENSION)


_load_extension()
_kernels = torch.ops.bitcpm_npu


def describe() -> str:
    return f"AscendC kernels from {EXTENSION}"


def quantize(w: torch.Tensor, group_size: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Int8 codes (N, K) and float32 scales of ``w`` from the ternary_quantize kernel."""
    _validation.check_weight(w, group_size)
    _validation.check_eps(eps)
    codes, scales = _kernels.ternary_quantize(w, group_size, eps)
    _validation.check_finite_scales("weight", scales, w)
    return codes, scales


def dequantize(
    codes: torch.Tensor, scales: torch.Tensor, group_size: int, dtype: torch.dtype
) -> torch.Tensor:
    """``(codes * scales).to(dtype)`` from the ternary_dequantize kernel."""
    _validation.check_codes(codes, scales, group_size)
    return _kernels.ternary_dequantize(codes, scales, group_size, dtype)


def linear_forward(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor | None,
    group_size: int,
    eps: float,
    act_bits: int | None,
) -> torch.Tensor:
    """``x_hat @ W_hat^T + bias`` from the fused kernel chain."""
    _validation.check_linear_inputs(x, w, bias, group_size, eps, act_bits)
    # Weights are checked for NaN/inf through their scales, which costs one
    # extra quantize launch because the op computes them again inside.
    # NOTE: the op could return its scales instead; left as is until it has
    # been measured on hardware.
    _, scales = _kernels.ternary_quantize(w, group_size, eps)
    _validation.check_finite_scales("weight", scales, w)
    return _kernels.ternary_linear(x, w, bias, group_size, eps, act_bits)


def linear_backward(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    w: torch.Tensor,
    group_size: int,
    eps: float,
    act_bits: int | None,
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(grad_x, grad_w, grad_bias)``; an entry whose mask flag is false is an empty tensor."""
    return _kernels.ternary_linear_backward(grad_y, x, w, group_size, eps, act_bits, list(output_mask))
