"""2-bit packed storage of ternary codes, four codes per byte.

Layout: each code is stored as 2-bit two's complement (``0b00 = 0``,
``0b01 = +1``, ``0b11 = -1``; ``0b10`` is invalid). Element ``k`` of a row
goes to byte ``k // 4``, bits ``2 * (k % 4)`` and ``2 * (k % 4) + 1``, so the
first element sits in the low bits. Rows are padded with zero bits to
``ceil(K / 4)`` bytes; the packed tensor is uint8 of shape ``(N, ceil(K / 4))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CODES_PER_BYTE = 4


def packed_columns(in_features: int) -> int:
    return (in_features + CODES_PER_BYTE - 1) // CODES_PER_BYTE


def pack_ternary(codes: torch.Tensor) -> torch.Tensor:
    """Pack int8 codes in {-1, 0, 1} of shape (N, K) into uint8 (N, ceil(K / 4))."""
    if codes.dtype != torch.int8 or codes.dim() != 2:
        raise TypeError(
            f"codes must be a 2-D int8 tensor, got dtype {codes.dtype} and shape {tuple(codes.shape)}"
        )
    if codes.numel() and bool(((codes < -1) | (codes > 1)).any()):
        raise ValueError("codes must be in {-1, 0, 1}; quantize the weight first")

    n, k = codes.shape
    padded = F.pad(codes, (0, packed_columns(k) * CODES_PER_BYTE - k))
    two_bit = (padded.to(torch.uint8) & 0b11).reshape(n, packed_columns(k), CODES_PER_BYTE)
    shifts = torch.arange(0, 8, 2, dtype=torch.uint8, device=codes.device)
    return (two_bit << shifts).sum(dim=-1, dtype=torch.uint8)


def unpack_ternary(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """Unpack uint8 (N, ceil(K / 4)) back to int8 codes (N, K); raises on invalid bits."""
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise TypeError(
            f"packed codes must be a 2-D uint8 tensor, got dtype {packed.dtype} and shape "
            f"{tuple(packed.shape)}"
        )
    if packed.shape[1] != packed_columns(in_features):
        raise ValueError(
            f"packed codes have {packed.shape[1]} bytes per row, but in_features={in_features} "
            f"needs {packed_columns(in_features)}"
        )

    shifts = torch.arange(0, 8, 2, dtype=torch.uint8, device=packed.device)
    two_bit = (packed.unsqueeze(-1) >> shifts) & 0b11
    if bool((two_bit == 0b10).any()):
        raise ValueError("packed codes contain the invalid 2-bit pattern 0b10; the data is corrupt")
    # Sign-extend the 2-bit two's complement value: 0 -> 0, 1 -> 1, 3 -> -1.
    codes = (two_bit.to(torch.int8) ^ 0b10) - 0b10
    columns = packed.shape[1] * CODES_PER_BYTE
    return codes.reshape(packed.shape[0], columns)[:, :in_features].contiguous()
