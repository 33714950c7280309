"""Input checks shared by every backend, so each one raises the same errors."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SUPPORTED_ACT_BITS = (None, 8)


def check_float_tensor(name: str, tensor: torch.Tensor) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} has dtype {tensor.dtype}, but only float32, bfloat16 and float16 "
            f"are supported; convert it with {name}.float() first"
        )


def check_weight(w: torch.Tensor, group_size: int) -> None:
    """Check a latent weight of shape (out_features, in_features) against group_size."""
    check_float_tensor("weight", w)
    if w.dim() != 2:
        raise ValueError(
            f"weight must be 2-D (out_features, in_features), got shape {tuple(w.shape)}"
        )
    if w.numel() == 0:
        raise ValueError(f"weight must not be empty, got shape {tuple(w.shape)}")
    check_group_size(group_size, w.shape[1])


def check_group_size_type(group_size: int) -> None:
    # The op schema converts True to 1 before the op body runs, so the public
    # wrappers check the Python type first.
    if not isinstance(group_size, int) or isinstance(group_size, bool):
        raise TypeError(f"group_size must be an int, got {group_size!r}")


def check_group_size(group_size: int, in_features: int) -> None:
    check_group_size_type(group_size)
    if group_size < -1:
        raise ValueError(
            f"group_size={group_size} is invalid: use -1 (one group per row), "
            f"0 (one group for the whole tensor) or a positive divisor of in_features"
        )
    if group_size > 0 and in_features % group_size != 0:
        raise ValueError(
            f"in_features K={in_features} is not a multiple of group_size={group_size}; "
            f"pick a group_size that divides {in_features} or use -1 for one group per row"
        )


def check_eps(eps: float) -> None:
    if not (eps > 0.0) or eps != eps or eps == float("inf"):
        raise ValueError(f"eps must be a finite positive number, got {eps!r}")


def check_finite_scales(name: str, scales: torch.Tensor, tensor: torch.Tensor) -> None:
    """Raise when a scale is NaN or inf: its group contains a NaN or inf, or its mean overflows.

    Checking the small scale tensor instead of the whole weight keeps the check
    off the hot path. The full tensor is read only to build the error message.
    """
    if scales.numel() == 0 or scales.device.type == "meta":
        return
    if bool(torch.isfinite(scales).all()):
        return
    bad = int((~torch.isfinite(tensor)).sum())
    if bad == 0:
        raise ValueError(
            f"the mean of |{name}| overflows float32 in at least one group; "
            f"the weights are too large to quantize"
        )
    raise ValueError(
        f"{name} contains {bad} non-finite value(s) (NaN or inf); the ternary quantizer "
        f"needs finite weights, so check the checkpoint or the optimizer step that produced them"
    )


def check_act_bits(act_bits: int | None) -> None:
    if act_bits not in SUPPORTED_ACT_BITS:
        raise ValueError(
            f"act_bits={act_bits!r} is not supported: use None (weights only) or 8 (int8 "
            f"per-token activations)"
        )


def check_linear_inputs(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor | None,
    group_size: int,
    eps: float,
    act_bits: int | None,
) -> None:
    """Check every argument of the ternary linear before any kernel runs."""
    check_float_tensor("x", x)
    check_weight(w, group_size)
    check_eps(eps)
    check_act_bits(act_bits)
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension (..., in_features), got a scalar")
    if x.shape[-1] != w.shape[1]:
        raise ValueError(
            f"x has {x.shape[-1]} features in its last dimension but weight has "
            f"in_features={w.shape[1]} (weight shape {tuple(w.shape)}); x must be (..., {w.shape[1]})"
        )
    if x.dtype != w.dtype:
        raise TypeError(
            f"x has dtype {x.dtype} but weight has dtype {w.dtype}; cast one of them so they match"
        )
    if x.device != w.device:
        raise ValueError(
            f"x is on {x.device} but weight is on {w.device}; move both to the same device"
        )
    if bias is not None:
        check_float_tensor("bias", bias)
        if bias.shape != (w.shape[0],):
            raise ValueError(
                f"bias must have shape ({w.shape[0]},) to match out_features, got {tuple(bias.shape)}"
            )
        if bias.device != w.device:
            raise ValueError(
                f"bias is on {bias.device} but weight is on {w.device}; move both to the same device"
            )
        if bias.dtype != w.dtype:
            raise TypeError(
                f"bias has dtype {bias.dtype} but weight has dtype {w.dtype}; cast one of them"
            )


def check_codes(codes: torch.Tensor, scales: torch.Tensor, group_size: int) -> None:
    """Check that int8 codes and float32 scales fit together for this group_size."""
    if codes.dtype != torch.int8 or codes.dim() != 2:
        raise TypeError(
            f"codes must be a 2-D int8 tensor, got dtype {codes.dtype} and shape {tuple(codes.shape)}"
        )
    if scales.dtype != torch.float32:
        raise TypeError(f"scales must be float32, got {scales.dtype}")
    if codes.device != scales.device:
        raise ValueError(
            f"codes are on {codes.device} but scales are on {scales.device}; move both to one device"
        )
    check_group_size(group_size, codes.shape[1])
    expected = scale_shape(codes.shape[0], codes.shape[1], group_size)
    if tuple(scales.shape) != expected:
        raise ValueError(
            f"scales have shape {tuple(scales.shape)}, but codes of shape {tuple(codes.shape)} "
            f"with group_size={group_size} need scales of shape {expected}"
        )


def scale_shape(out_features: int, in_features: int, group_size: int) -> tuple[int, int]:
    """Return the shape of the float32 scale tensor for a weight of shape (N, K)."""
    if group_size == -1:
        return (out_features, 1)
    if group_size == 0:
        return (1, 1)
    return (out_features, in_features // group_size)
