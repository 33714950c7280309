"""Shared fixtures and parametrize ids for the tests of the core ternary ops."""

from __future__ import annotations

import pytest
import torch

import bitcpm_kernels as bk

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def dtype_id(dtype: torch.dtype) -> str:
    return f"dtype={DTYPE_NAMES[dtype]}"


def group_id(group_size: int) -> str:
    return f"group={group_size}"


def shape_id(shape: tuple[int, ...]) -> str:
    return "shape=" + "x".join(str(size) for size in shape)


@pytest.fixture(autouse=True)
def _seed_and_restore_state():
    """Seed torch for every test and restore the backend choice and thread count after it."""
    torch.manual_seed(0)
    backend = bk.get_backend()
    threads = torch.get_num_threads()
    yield
    bk.set_backend(backend)
    torch.set_num_threads(threads)
