"""The op contract: every ``torch.ops.bitcpm`` op, its checks, fake kernel and autograd.

Shapes, with ``N = out_features``, ``K = in_features`` and ``G`` groups per row:

==========================  ================================================
``ternary_quantize``        w (N, K) float32/bfloat16/float16 -> codes int8 (N, K),
                            scales float32 (N, 1) | (N, K/g) | (1, 1)
``ternary_dequantize``      codes int8 (N, K), scales float32 -> (N, K) in ``dtype``
``ternary_linear``          x (..., K), w (N, K), bias (N,) or None -> y (..., N)
``ternary_linear_backward`` grad_y (..., N), x, w -> grad_x (..., K), grad_w (N, K),
                            grad_bias (N,); masked entries are empty tensors
==========================  ================================================

One implementation serves every device. It calls ``_backend.select`` to get
the kernels of the tensor's device type (fused C++ on CPU, AscendC on NPU, the
eager reference elsewhere or when forced). Autograd saves only ``x`` and the
latent ``w``; the backward recomputes the codes, so nothing weight-sized is
created in forward and kept alive for backward.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _backend, _validation


# --- ternary_quantize ------------------------------------------------------


@torch.library.custom_op("bitcpm::ternary_quantize", mutates_args=())
def _ternary_quantize(w: Tensor, group_size: int, eps: float) -> tuple[Tensor, Tensor]:
    _check_quantize(w, group_size, eps)
    return _backend.select(w.device.type).quantize(w, group_size, eps)


def _check_quantize(w: Tensor, group_size: int, eps: float) -> None:
    _validation.check_weight(w, group_size)
    _validation.check_eps(eps)


@_ternary_quantize.register_fake
def _(w: Tensor, group_size: int, eps: float) -> tuple[Tensor, Tensor]:
    _check_quantize(w, group_size, eps)
    n, k = w.shape
    codes = w.new_empty((n, k), dtype=torch.int8)
    scales = w.new_empty(_validation.scale_shape(n, k, group_size), dtype=torch.float32)
    return codes, scales


# --- ternary_dequantize ----------------------------------------------------


@torch.library.custom_op("bitcpm::ternary_dequantize", mutates_args=())
def _ternary_dequantize(
    codes: Tensor, scales: Tensor, group_size: int, dtype: torch.dtype
) -> Tensor:
    _check_dequantize(codes, scales, group_size, dtype)
    return _backend.select(codes.device.type).dequantize(codes, scales, group_size, dtype)


def _check_dequantize(codes: Tensor, scales: Tensor, group_size: int, dtype: torch.dtype) -> None:
    _validation.check_codes(codes, scales, group_size)
    if dtype not in _validation.FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32, bfloat16 or float16, got {dtype}")


@_ternary_dequantize.register_fake
def _(codes: Tensor, scales: Tensor, group_size: int, dtype: torch.dtype) -> Tensor:
    _check_dequantize(codes, scales, group_size, dtype)
    return codes.new_empty(codes.shape, dtype=dtype)


# --- ternary_linear and its backward ---------------------------------------


@torch.library.custom_op("bitcpm::ternary_linear", mutates_args=())
def _ternary_linear(
    x: Tensor,
    w: Tensor,
    bias: Optional[Tensor],
    group_size: int,
    eps: float,
    act_bits: Optional[int],
) -> Tensor:
    _validation.check_linear_inputs(x, w, bias, group_size, eps, act_bits)
    return _backend.select(w.device.type).linear_forward(x, w, bias, group_size, eps, act_bits)


@_ternary_linear.register_fake
def _(
    x: Tensor,
    w: Tensor,
    bias: Optional[Tensor],
    group_size: int,
    eps: float,
    act_bits: Optional[int],
) -> Tensor:
    _validation.check_linear_inputs(x, w, bias, group_size, eps, act_bits)
    return x.new_empty((*x.shape[:-1], w.shape[0]))


@torch.library.custom_op("bitcpm::ternary_linear_backward", mutates_args=())
def _ternary_linear_backward(
    grad_y: Tensor,
    x: Tensor,
    w: Tensor,
    group_size: int,
    eps: float,
    act_bits: Optional[int],
    output_mask: list[bool],
) -> tuple[Tensor, Tensor, Tensor]:
    _check_backward(grad_y, x, w, output_mask)
    backend = _backend.select(w.device.type)
    return backend.linear_backward(grad_y, x, w, group_size, eps, act_bits, list(output_mask))


def _check_backward(grad_y: Tensor, x: Tensor, w: Tensor, output_mask: list[bool]) -> None:
    if len(output_mask) != 3:
        raise ValueError(f"output_mask must have 3 entries (x, w, bias), got {len(output_mask)}")
    expected = (*x.shape[:-1], w.shape[0])
    if tuple(grad_y.shape) != expected:
        raise ValueError(f"grad_y has shape {tuple(grad_y.shape)}, expected {expected}")


@_ternary_linear_backward.register_fake
def _(
    grad_y: Tensor,
    x: Tensor,
    w: Tensor,
    group_size: int,
    eps: float,
    act_bits: Optional[int],
    output_mask: list[bool],
) -> tuple[Tensor, Tensor, Tensor]:
    _check_backward(grad_y, x, w, output_mask)
    grad_x = x.new_empty(x.shape) if output_mask[0] else x.new_empty(0)
    grad_w = w.new_empty(w.shape) if output_mask[1] else w.new_empty(0)
    grad_bias = w.new_empty(w.shape[0]) if output_mask[2] else w.new_empty(0)
    return grad_x, grad_w, grad_bias


def _setup_linear_context(ctx, inputs, output) -> None:
    x, w, bias, group_size, eps, act_bits = inputs
    ctx.save_for_backward(x, w)
    ctx.has_bias = bias is not None
    ctx.group_size = group_size
    ctx.eps = eps
    ctx.act_bits = act_bits


def _linear_backward(ctx, grad_y: Tensor):
    x, w = ctx.saved_tensors
    output_mask = [
        ctx.needs_input_grad[0],
        ctx.needs_input_grad[1],
        ctx.has_bias and ctx.needs_input_grad[2],
    ]
    grad_x, grad_w, grad_bias = torch.ops.bitcpm.ternary_linear_backward(
        grad_y, x, w, ctx.group_size, ctx.eps, ctx.act_bits, output_mask
    )
    return (
        grad_x if output_mask[0] else None,
        grad_w if output_mask[1] else None,
        grad_bias if output_mask[2] else None,
        None,
        None,
        None,
    )


_ternary_linear.register_autograd(_linear_backward, setup_context=_setup_linear_context)


# --- typed wrappers: the public functions ----------------------------------


def ternary_quantize(
    w: Tensor, group_size: int = -1, eps: float = 1e-5
) -> tuple[Tensor, Tensor]:
    """Quantize a latent weight (N, K) to int8 codes in {-1, 0, 1} and float32 scales.

    ``group_size`` is -1 for one scale per row, 0 for one scale for the whole
    tensor, or a divisor g of K for K / g scales per row. Raises ``ValueError``
    for a non-finite weight or a group size that does not divide K.
    """
    _validation.check_group_size_type(group_size)
    return torch.ops.bitcpm.ternary_quantize(w, group_size, eps)


def ternary_dequantize(
    codes: Tensor,
    scales: Tensor,
    group_size: int = -1,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Expand codes and scales from :func:`ternary_quantize` to a dense (N, K) weight."""
    _validation.check_group_size_type(group_size)
    return torch.ops.bitcpm.ternary_dequantize(codes, scales, group_size, dtype)


def ternary_linear(
    x: Tensor,
    w: Tensor,
    bias: Optional[Tensor] = None,
    group_size: int = -1,
    eps: float = 1e-5,
    act_bits: Optional[int] = None,
) -> Tensor:
    """Compute ``x_hat @ W_hat^T + bias`` with a straight-through-estimator backward.

    ``x`` is (..., K) and ``w`` the latent (N, K) weight, both of one float
    dtype on one device. ``act_bits=8`` also fake-quantizes ``x`` per token.
    Gradients equal autograd's for ``W + (W_hat - W).detach()``.
    """
    _validation.check_group_size_type(group_size)
    return torch.ops.bitcpm.ternary_linear(x, w, bias, group_size, eps, act_bits)
