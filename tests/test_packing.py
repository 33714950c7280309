"""2-bit packing of ternary codes.

Layout under test: each code is 2-bit two's complement (0b00 = 0, 0b01 = +1,
0b11 = -1, and 0b10 is invalid). Element k of a row sits in byte k // 4 at
bits 2 * (k % 4) and 2 * (k % 4) + 1, so the first element is in the low
bits. Each row is padded with zero bits to ceil(K / 4) bytes.
"""

from __future__ import annotations

import pytest
import torch

import bitcpm_kernels as bk


def random_codes(n: int, k: int) -> torch.Tensor:
    return torch.randint(-1, 2, (n, k), dtype=torch.int8)


@pytest.mark.parametrize("k", [*range(1, 10), 127, 4097], ids=lambda k: f"K={k}")
@pytest.mark.parametrize("n", [1, 3, 17], ids=lambda n: f"N={n}")
def test_round_trip(n, k):
    codes = random_codes(n, k)

    packed = bk.pack_ternary(codes)
    unpacked = bk.unpack_ternary(packed, k)

    assert packed.dtype == torch.uint8
    assert packed.shape == (n, (k + 3) // 4)
    assert unpacked.dtype == torch.int8
    assert torch.equal(unpacked, codes)


def test_round_trip_of_quantized_weight():
    codes, _ = bk.ternary_quantize(torch.randn(64, 4097), -1)

    assert torch.equal(bk.unpack_ternary(bk.pack_ternary(codes), 4097), codes)


def test_round_trip_of_non_contiguous_codes():
    codes = random_codes(9, 6).t()

    assert torch.equal(bk.unpack_ternary(bk.pack_ternary(codes), 9), codes)


def test_known_bytes_of_hand_written_row():
    # Row [+1, -1, 0, +1 | -1, -1, 0, 0 | +1]:
    #   byte 0: k=0 -> 0b01 at bits 0-1, k=1 -> 0b11 at bits 2-3,
    #           k=2 -> 0b00 at bits 4-5, k=3 -> 0b01 at bits 6-7 -> 0b01_00_11_01 = 0x4D
    #   byte 1: 0b11, 0b11, 0b00, 0b00 from the low bits up -> 0b00_00_11_11 = 0x0F
    #   byte 2: 0b01 then three zero-bit pads -> 0x01
    codes = torch.tensor([[1, -1, 0, 1, -1, -1, 0, 0, 1]], dtype=torch.int8)

    packed = bk.pack_ternary(codes)

    assert packed.tolist() == [[0x4D, 0x0F, 0x01]]


def test_known_bytes_of_constant_rows():
    codes = torch.tensor([[1] * 4, [-1] * 4, [0] * 4], dtype=torch.int8)

    packed = bk.pack_ternary(codes)

    assert packed.tolist() == [[0b01010101], [0b11111111], [0]]


def test_unpack_hand_written_bytes():
    packed = torch.tensor([[0x4D, 0x0F, 0x01]], dtype=torch.uint8)

    codes = bk.unpack_ternary(packed, 9)

    assert codes.tolist() == [[1, -1, 0, 1, -1, -1, 0, 0, 1]]


def test_empty_rows_round_trip():
    codes = torch.zeros(0, 5, dtype=torch.int8)

    packed = bk.pack_ternary(codes)

    assert packed.shape == (0, 2)
    assert bk.unpack_ternary(packed, 5).shape == (0, 5)


@pytest.mark.parametrize(
    "codes",
    [torch.zeros(2, 4, dtype=torch.int32), torch.zeros(2, 4), torch.zeros(8, dtype=torch.int8)],
    ids=["dtype=int32", "dtype=fp32", "shape=1d"],
)
def test_pack_rejects_wrong_tensor(codes):
    with pytest.raises(TypeError, match=r"codes must be a 2-D int8 tensor"):
        bk.pack_ternary(codes)


@pytest.mark.parametrize("value", [2, -2, 127], ids=lambda v: f"code={v}")
def test_pack_rejects_out_of_range_code(value):
    codes = torch.zeros(2, 5, dtype=torch.int8)
    codes[1, 3] = value

    with pytest.raises(ValueError, match=r"codes must be in \{-1, 0, 1\}"):
        bk.pack_ternary(codes)


@pytest.mark.parametrize(
    "packed",
    [torch.zeros(2, 2, dtype=torch.int8), torch.zeros(2, dtype=torch.uint8)],
    ids=["dtype=int8", "shape=1d"],
)
def test_unpack_rejects_wrong_tensor(packed):
    with pytest.raises(TypeError, match=r"packed codes must be a 2-D uint8 tensor"):
        bk.unpack_ternary(packed, 8)


@pytest.mark.parametrize("k", [4, 13, 16], ids=lambda k: f"K={k}")
def test_unpack_rejects_wrong_byte_count(k):
    packed = torch.zeros(2, 3, dtype=torch.uint8)

    with pytest.raises(ValueError, match=rf"3 bytes per row, but in_features={k}"):
        bk.unpack_ternary(packed, k)


@pytest.mark.parametrize("byte", [0b10, 0b1000, 0b10_000000], ids=lambda b: f"byte={b:#010b}")
def test_unpack_rejects_invalid_pattern(byte):
    packed = torch.zeros(2, 2, dtype=torch.uint8)
    packed[1, 1] = byte

    with pytest.raises(ValueError, match=r"invalid 2-bit pattern 0b10"):
        bk.unpack_ternary(packed, 8)
