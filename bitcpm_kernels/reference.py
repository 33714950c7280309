"""The eager ternary quantizer: the ground truth for every test and benchmark.

This is the chain of PyTorch ops that a BitCPM ``modeling.py`` runs today.
Per group, in float32 whatever the input dtype::

    s     = max(mean(|W_group|), eps)
    Q     = clamp(round_half_to_even(W / s), -1, 1)
    W_hat = (Q * s).to(W.dtype)

The linear layer uses the straight-through estimator in its detach form,
``W + (W_hat - W).detach()``, so autograd gives the reference gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _validation


def _grouped(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """View a (N, K) weight as (rows, groups, elements per group)."""
    n, k = w.shape
    if group_size == -1:
        return w.reshape(n, 1, k)
    if group_size == 0:
        return w.reshape(1, 1, n * k)
    return w.reshape(n, k // group_size, group_size)


def ternary_quantize(
    w: torch.Tensor, group_size: int = -1, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a latent weight to int8 codes in {-1, 0, 1} and float32 scales."""
    _validation.check_weight(w, group_size)
    _validation.check_eps(eps)

    groups = _grouped(w.float(), group_size)
    scales = groups.abs().mean(dim=-1, keepdim=True).clamp(min=eps)
    _validation.check_finite_scales("weight", scales, w)
    codes = torch.round(groups / scales).clamp(-1, 1)

    return codes.to(torch.int8).reshape(w.shape), scales.reshape(
        _validation.scale_shape(w.shape[0], w.shape[1], group_size)
    )


def ternary_dequantize(
    codes: torch.Tensor,
    scales: torch.Tensor,
    group_size: int = -1,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Expand int8 codes and float32 scales back to a dense weight of ``dtype``."""
    _validation.check_codes(codes, scales, group_size)
    groups = _grouped(codes, group_size).float()
    return (groups * scales.unsqueeze(-1)).to(dtype).reshape(codes.shape)


def fake_quantize_weight(
    w: torch.Tensor, group_size: int = -1, eps: float = 1e-5
) -> torch.Tensor:
    """Return ``W_hat``, the quantized weight in the dtype of ``w`` (no gradient)."""
    codes, scales = ternary_quantize(w.detach(), group_size, eps)
    return ternary_dequantize(codes, scales, group_size, w.dtype)


def fake_quantize_activation(x: torch.Tensor, bits: int = 8, eps: float = 1e-5) -> torch.Tensor:
    """Return ``x_hat``: per-token symmetric int8 fake quantization over the last dim."""
    if bits != 8:
        raise ValueError(f"only 8-bit activation quantization is supported, got bits={bits}")
    xf = x.float()
    scale = 127.0 / xf.abs().amax(dim=-1, keepdim=True).clamp(min=eps)
    return (torch.round(xf * scale).clamp(-128, 127) / scale).to(x.dtype)


def ternary_linear(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor | None = None,
    group_size: int = -1,
    eps: float = 1e-5,
    act_bits: int | None = None,
) -> torch.Tensor:
    """Compute ``x_hat @ W_hat^T + bias`` with the detach-form straight-through estimator."""
    _validation.check_linear_inputs(x, w, bias, group_size, eps, act_bits)

    w_hat = fake_quantize_weight(w, group_size, eps)
    w_ste = w + (w_hat - w).detach()
    if act_bits is not None:
        x_hat = fake_quantize_activation(x.detach(), act_bits, eps)
        x = x + (x_hat - x).detach()

    return F.linear(x, w_ste, bias)
