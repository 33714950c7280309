"""The eager backend: the reference quantizer and ATen products, on any device."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import reference

NAME = "reference"


def quantize(w: torch.Tensor, group_size: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return reference.ternary_quantize(w, group_size, eps)


def dequantize(
    codes: torch.Tensor, scales: torch.Tensor, group_size: int, dtype: torch.dtype
) -> torch.Tensor:
    return reference.ternary_dequantize(codes, scales, group_size, dtype)


def _x_hat(x: torch.Tensor, eps: float, act_bits: int | None) -> torch.Tensor:
    if act_bits is None:
        return x
    return reference.fake_quantize_activation(x, act_bits, eps)


def linear_forward(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor | None,
    group_size: int,
    eps: float,
    act_bits: int | None,
) -> torch.Tensor:
    w_hat = reference.fake_quantize_weight(w, group_size, eps)
    return F.linear(_x_hat(x, eps, act_bits), w_hat, bias)


def linear_backward(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    w: torch.Tensor,
    group_size: int,
    eps: float,
    act_bits: int | None,
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, k = w.shape
    grad_2d = grad_y.reshape(-1, n)
    grad_x = x.new_empty(0)
    grad_w = w.new_empty(0)
    grad_bias = w.new_empty(0)

    if output_mask[0]:
        w_hat = reference.fake_quantize_weight(w, group_size, eps)
        grad_x = (grad_2d @ w_hat).reshape(x.shape)
    if output_mask[1]:
        grad_w = grad_2d.t() @ _x_hat(x, eps, act_bits).reshape(-1, k)
    if output_mask[2]:
        grad_bias = grad_2d.sum(0)
    return grad_x, grad_w, grad_bias
