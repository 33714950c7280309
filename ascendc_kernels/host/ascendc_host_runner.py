"""Compile the AscendC kernel sources with g++ against the host AscendC subset
and run them on CPU tensors.

The build goes to a cache directory keyed by a hash of the sources and the
compiler flags (``BITCPM_ASCENDC_HOST_CACHE``, default
``<tempdir>/bitcpm_ascendc_host``), so repeated test runs link nothing again.

The op-level functions at the bottom (``quantize``, ``linear_forward``,
``linear_grad_x``) chain the kernels the way ``csrc/npu/ops.cpp`` does on an
NPU. They are a Python copy of that orchestration, so these host runs check
the kernels and their tiling, not the C++ wrapper.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

HOST_DIR = Path(__file__).resolve().parent
KERNEL_DIR = HOST_DIR.parent

KERNEL_SOURCES = [
    KERNEL_DIR / "ternary_quantize.cpp",
    KERNEL_DIR / "ternary_dequantize.cpp",
    KERNEL_DIR / "act_quantize.cpp",
    KERNEL_DIR / "linear_epilogue.cpp",
    KERNEL_DIR / "ternary_matmul.cpp",
]
HOST_SOURCES = [HOST_DIR / "launch.cpp"]
HEADERS = [
    KERNEL_DIR / "tiling_data.h",
    KERNEL_DIR / "host_tiling.h",
    KERNEL_DIR / "kernel_common.h",
    HOST_DIR / "kernel_operator.h",
    HOST_DIR / "lib" / "matmul_intf.h",
    HOST_DIR / "kernel_tiling" / "kernel_tiling.h",
]
CXX_FLAGS = ["-std=c++17", "-O2", "-fPIC", "-Wall", "-Wextra", "-Werror"]

# Element type codes of tiling_data.h.
DTYPE_CODES = {
    torch.float32: 0,
    torch.float16: 1,
    torch.bfloat16: 2,
    torch.int8: 3,
    torch.int32: 4,
}

QUANTIZE_FROM_GROUP = 0
QUANTIZE_ABS_SUM = 1
QUANTIZE_GIVEN_SCALE = 2
DEQUANTIZE_CODES_ONLY = 0
DEQUANTIZE_PER_GROUP = 1
DEQUANTIZE_SHARED_SCALE = 2
EPILOGUE_COL_SCALE = 1
EPILOGUE_ROW_DIV = 2
EPILOGUE_BIAS = 4

# Atlas A2 (910B) core counts: 20 cube cores, each paired with 2 vector cores.
# NOTE: 910B parts differ (the 910B1 has 24 cube cores). The NPU wrapper queries
# the device, and the host runs use these defaults unless a test passes others.
DEFAULT_VECTOR_CORES = 40
DEFAULT_CUBE_CORES = 20


class KernelLimitError(RuntimeError):
    """A kernel broke an Atlas A2 limit (or failed otherwise) in a host run."""


def _cache_root() -> Path:
    configured = os.environ.get("BITCPM_ASCENDC_HOST_CACHE")
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / "bitcpm_ascendc_host"


def _digest(paths: list[Path], flags: list[str]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    digest.update(" ".join(flags).encode())
    return digest.hexdigest()[:16]


def _compile(source: Path, output: Path, include_dirs: list[Path]) -> None:
    command = ["g++", *CXX_FLAGS, *[f"-I{d}" for d in include_dirs], "-c", str(source), "-o", str(output)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"g++ failed on {source.name}:\n{result.stderr}")


PROBE_SOURCES = [HOST_DIR / "violation_probes.cpp"]


def build_library(sources: list[Path] | None = None, jobs: int = 2) -> Path:
    """Compile ``sources`` (default: the kernels and launch.cpp) into a shared library; return its path."""
    if shutil.which("g++") is None:
        raise RuntimeError("g++ was not found; the host runs of the AscendC kernels need it")
    if sources is None:
        sources = [*KERNEL_SOURCES, *HOST_SOURCES]
    build_dir = _cache_root() / _digest([*sources, *HEADERS], CXX_FLAGS)
    library = build_dir / "libbitcpm_ascendc_host.so"
    if library.exists():
        return library

    build_dir.mkdir(parents=True, exist_ok=True)
    include_dirs = [HOST_DIR, KERNEL_DIR]
    objects = [build_dir / f"{source.stem}.o" for source in sources]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(lambda pair: _compile(pair[0], pair[1], include_dirs), zip(sources, objects)))

    partial = build_dir / f"partial-{os.getpid()}.so"
    command = ["g++", "-shared", "-o", str(partial), *[str(o) for o in objects]]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"linking the host kernels failed:\n{result.stderr}")
    partial.replace(library)
    return library


def _pointer(tensor: torch.Tensor | None) -> ctypes.c_void_p:
    if tensor is None:
        return ctypes.c_void_p(0)
    if not tensor.is_contiguous() or tensor.device.type != "cpu":
        raise ValueError("host kernel buffers must be contiguous CPU tensors")
    return ctypes.c_void_p(tensor.data_ptr())


def run_probe(library: Path, name: str, block_num: int = 1) -> str:
    """Run one kernel of violation_probes.cpp; return its error message ("" when it passed)."""
    lib = ctypes.CDLL(str(library))
    err = ctypes.create_string_buffer(4096)
    status = lib.bitcpm_host_run_probe(name.encode(), ctypes.c_uint32(block_num), err, ctypes.c_size_t(len(err)))
    if status == 2:
        raise ValueError(f"no probe named {name!r} in violation_probes.cpp")
    return err.value.decode() if status == 1 else ""


class HostKernels:
    """The five AscendC kernels compiled for the host, one method per kernel."""

    def __init__(self, library: Path | None = None):
        self.library_path = library or build_library()
        self.lib = ctypes.CDLL(str(self.library_path))
        self.last_used_cores = 0

    def _call(self, name: str, *args) -> None:
        err = ctypes.create_string_buffer(4096)
        used = ctypes.c_uint32(0)
        status = getattr(self.lib, name)(*args, ctypes.byref(used), err, ctypes.c_size_t(len(err)))
        self.last_used_cores = used.value
        if status != 0:
            raise KernelLimitError(err.value.decode())

    def ternary_quantize(self, w, num_groups, group_len, mode, eps, codes, scales, core_num, tile_cap=0):
        self._call(
            "bitcpm_host_ternary_quantize",
            _pointer(w), ctypes.c_uint32(DTYPE_CODES[w.dtype]), ctypes.c_uint64(num_groups),
            ctypes.c_uint32(group_len), ctypes.c_uint32(mode), ctypes.c_float(eps),
            _pointer(codes), _pointer(scales), ctypes.c_uint32(core_num), ctypes.c_uint32(tile_cap),
        )

    def ternary_dequantize(self, codes, scales, out, num_groups, group_len, scale_mode, core_num, tile_cap=0):
        self._call(
            "bitcpm_host_ternary_dequantize",
            _pointer(codes), _pointer(scales), _pointer(out), ctypes.c_uint32(DTYPE_CODES[out.dtype]),
            ctypes.c_uint64(num_groups), ctypes.c_uint32(group_len), ctypes.c_uint32(scale_mode),
            ctypes.c_uint32(core_num), ctypes.c_uint32(tile_cap),
        )

    def act_quantize(self, x, codes, row_scale, eps, core_num, tile_cap=0):
        rows, row_len = x.shape
        self._call(
            "bitcpm_host_act_quantize",
            _pointer(x), ctypes.c_uint32(DTYPE_CODES[x.dtype]), ctypes.c_uint64(rows), ctypes.c_uint32(row_len),
            ctypes.c_float(eps), _pointer(codes), _pointer(row_scale), ctypes.c_uint32(core_num),
            ctypes.c_uint32(tile_cap),
        )

    def linear_epilogue(self, acc, col_scale, row_divisor, bias, out, core_num, tile_cap=0):
        rows, cols = acc.shape
        flags = (
            (EPILOGUE_COL_SCALE if col_scale is not None else 0)
            | (EPILOGUE_ROW_DIV if row_divisor is not None else 0)
            | (EPILOGUE_BIAS if bias is not None else 0)
        )
        self._call(
            "bitcpm_host_linear_epilogue",
            _pointer(acc), _pointer(col_scale), _pointer(row_divisor), _pointer(bias), _pointer(out),
            ctypes.c_uint32(DTYPE_CODES[acc.dtype]), ctypes.c_uint32(DTYPE_CODES[out.dtype]),
            ctypes.c_uint32(flags), ctypes.c_uint64(rows), ctypes.c_uint32(cols), ctypes.c_uint32(core_num),
            ctypes.c_uint32(tile_cap),
        )

    def ternary_matmul(self, a, b, c, transpose_b, core_num):
        m, k = a.shape
        n = b.shape[0] if transpose_b else b.shape[1]
        self._call(
            "bitcpm_host_ternary_matmul",
            _pointer(a), _pointer(b), _pointer(c), ctypes.c_uint32(DTYPE_CODES[a.dtype]),
            ctypes.c_int32(m), ctypes.c_int32(n), ctypes.c_int32(k), ctypes.c_uint32(1 if transpose_b else 0),
            ctypes.c_uint32(core_num),
        )


# ---------------------------------------------------------------------------
# Op-level chains, the same steps as csrc/npu/ops.cpp.


def _groups_of(n: int, k: int, group_size: int) -> tuple[int, int]:
    """(number of groups, elements per group) for group_size -1 or g > 0."""
    if group_size == -1:
        return n, k
    return n * k // group_size, group_size


def _scale_shape(n: int, k: int, group_size: int) -> tuple[int, int]:
    if group_size == -1:
        return (n, 1)
    if group_size == 0:
        return (1, 1)
    return (n, k // group_size)


def quantize(kernels: HostKernels, w, group_size=-1, eps=1e-5, vector_cores=DEFAULT_VECTOR_CORES, tile_cap=0):
    """Codes and scales of ``w`` (N, K) from ternary_quantize, as the NPU wrapper computes them."""
    n, k = w.shape
    codes = torch.empty((n, k), dtype=torch.int8)
    if group_size == 0:
        # Per-tensor: row sums of |W| on the device, their total on the host
        # side of the op (a torch reduction), then codes with that one scale.
        row_sums = torch.empty(n, dtype=torch.float32)
        kernels.ternary_quantize(w, n, k, QUANTIZE_ABS_SUM, eps, None, row_sums, vector_cores, tile_cap)
        mean = row_sums.sum() / float(n * k)
        scales = torch.clamp(mean, min=eps).reshape(1, 1).to(torch.float32).contiguous()
        kernels.ternary_quantize(w, n, k, QUANTIZE_GIVEN_SCALE, eps, codes, scales, vector_cores, tile_cap)
        return codes, scales

    num_groups, group_len = _groups_of(n, k, group_size)
    scales = torch.empty(_scale_shape(n, k, group_size), dtype=torch.float32)
    kernels.ternary_quantize(w, num_groups, group_len, QUANTIZE_FROM_GROUP, eps, codes, scales, vector_cores, tile_cap)
    return codes, scales


def dequantize(kernels: HostKernels, codes, scales, group_size, dtype, vector_cores=DEFAULT_VECTOR_CORES, tile_cap=0):
    """``(Q * s).to(dtype)`` from ternary_dequantize."""
    n, k = codes.shape
    out = torch.empty((n, k), dtype=dtype)
    if group_size == 0:
        kernels.ternary_dequantize(codes, scales, out, n, k, DEQUANTIZE_SHARED_SCALE, vector_cores, tile_cap)
    else:
        num_groups, group_len = _groups_of(n, k, group_size)
        kernels.ternary_dequantize(codes, scales, out, num_groups, group_len, DEQUANTIZE_PER_GROUP, vector_cores, tile_cap)
    return out


def _column_scales(scales, n: int, group_size: int):
    """Per-output-channel scale vector (N,) for group_size -1 or 0."""
    return scales.reshape(-1).expand(n).contiguous() if group_size == 0 else scales.reshape(n).contiguous()


def linear_forward(
    kernels: HostKernels,
    x,
    w,
    bias=None,
    group_size=-1,
    eps=1e-5,
    act_bits=None,
    vector_cores=DEFAULT_VECTOR_CORES,
    cube_cores=DEFAULT_CUBE_CORES,
    tile_cap=0,
):
    """``y = x_hat @ W_hat^T + bias`` through the kernel chain of the NPU forward."""
    n, k = w.shape
    x2 = x.reshape(-1, k).contiguous()
    m = x2.shape[0]
    if m == 0 or n == 0 or k == 0:
        # Nothing to launch: an empty product is zero, plus the bias.
        y = torch.zeros((*x.shape[:-1], n), dtype=x.dtype)
        return y if bias is None else y + bias.to(x.dtype)

    codes, scales = quantize(kernels, w, group_size, eps, vector_cores, tile_cap)
    bias_f = None if bias is None else bias.float().contiguous()
    y = torch.empty((m, n), dtype=x.dtype)

    if act_bits == 8:
        x_codes = torch.empty((m, k), dtype=torch.int8)
        x_scale = torch.empty(m, dtype=torch.float32)
        kernels.act_quantize(x2, x_codes, x_scale, eps, vector_cores, tile_cap)
        if group_size > 0:
            # A group scale changes along K, so the int32 product cannot be
            # rescaled per output channel: multiply x_hat by W_hat instead.
            x_hat = (x_codes.float() / x_scale[:, None]).to(x.dtype)
            w_hat = dequantize(kernels, codes, scales, group_size, x.dtype, vector_cores, tile_cap)
            acc = torch.empty((m, n), dtype=torch.float32)
            kernels.ternary_matmul(x_hat, w_hat, acc, True, cube_cores)
            kernels.linear_epilogue(acc, None, None, bias_f, y, vector_cores, tile_cap)
            return y.reshape(*x.shape[:-1], n)
        acc = torch.empty((m, n), dtype=torch.int32)
        kernels.ternary_matmul(x_codes, codes, acc, True, cube_cores)
        kernels.linear_epilogue(acc, _column_scales(scales, n, group_size), x_scale, bias_f, y, vector_cores, tile_cap)
        return y.reshape(*x.shape[:-1], n)

    acc = torch.empty((m, n), dtype=torch.float32)
    if group_size > 0:
        w_hat = dequantize(kernels, codes, scales, group_size, x.dtype, vector_cores, tile_cap)
        kernels.ternary_matmul(x2, w_hat, acc, True, cube_cores)
        kernels.linear_epilogue(acc, None, None, bias_f, y, vector_cores, tile_cap)
    else:
        q = torch.empty((n, k), dtype=x.dtype)
        kernels.ternary_dequantize(codes, None, q, n, k, DEQUANTIZE_CODES_ONLY, vector_cores, tile_cap)
        kernels.ternary_matmul(x2, q, acc, True, cube_cores)
        kernels.linear_epilogue(acc, _column_scales(scales, n, group_size), None, bias_f, y, vector_cores, tile_cap)
    return y.reshape(*x.shape[:-1], n)


def linear_grad_x(
    kernels: HostKernels,
    grad_y,
    w,
    group_size=-1,
    eps=1e-5,
    vector_cores=DEFAULT_VECTOR_CORES,
    cube_cores=DEFAULT_CUBE_CORES,
    tile_cap=0,
):
    """``grad_x = grad_y @ W_hat``: ``(grad_y * s) @ Q`` for row/tensor scales, ``grad_y @ W_hat`` for groups."""
    n, k = w.shape
    g2 = grad_y.reshape(-1, n).contiguous()
    m = g2.shape[0]
    codes, scales = quantize(kernels, w, group_size, eps, vector_cores, tile_cap)
    acc = torch.empty((m, k), dtype=torch.float32)

    if group_size > 0:
        w_hat = dequantize(kernels, codes, scales, group_size, grad_y.dtype, vector_cores, tile_cap)
        kernels.ternary_matmul(g2, w_hat, acc, False, cube_cores)
    else:
        scaled = torch.empty((m, n), dtype=grad_y.dtype)
        kernels.linear_epilogue(g2, _column_scales(scales, n, group_size), None, None, scaled, vector_cores, tile_cap)
        q = torch.empty((n, k), dtype=grad_y.dtype)
        kernels.ternary_dequantize(codes, None, q, n, k, DEQUANTIZE_CODES_ONLY, vector_cores, tile_cap)
        kernels.ternary_matmul(scaled, q, acc, False, cube_cores)

    grad_x = torch.empty((m, k), dtype=grad_y.dtype)
    kernels.linear_epilogue(acc, None, None, None, grad_x, vector_cores, tile_cap)
    return grad_x.reshape(*grad_y.shape[:-1], k)


def linear_backward(
    kernels: HostKernels,
    grad_y,
    x,
    w,
    group_size=-1,
    eps=1e-5,
    act_bits=None,
    output_mask=(True, True, True),
    vector_cores=DEFAULT_VECTOR_CORES,
    cube_cores=DEFAULT_CUBE_CORES,
    tile_cap=0,
):
    """``(grad_x, grad_w, grad_bias)``, each an empty tensor when its mask flag is false."""
    n, k = w.shape
    g2 = grad_y.reshape(-1, n).contiguous()
    m = g2.shape[0]
    grad_x = torch.empty(0, dtype=x.dtype)
    grad_w = torch.empty(0, dtype=w.dtype)
    grad_bias = torch.empty(0, dtype=grad_y.dtype)

    if output_mask[0] and (m == 0 or n == 0 or k == 0):
        grad_x = torch.zeros_like(x)
    elif output_mask[0]:
        grad_x = linear_grad_x(kernels, grad_y, w, group_size, eps, vector_cores, cube_cores, tile_cap)
        grad_x = grad_x.reshape(x.shape)
    if output_mask[1]:
        # grad_W = grad_y^T @ x_hat through the ordinary matmul.
        x2 = x.reshape(-1, k).contiguous()
        x_hat = x2
        if act_bits == 8 and m > 0:
            x_codes = torch.empty((m, k), dtype=torch.int8)
            x_scale = torch.empty(m, dtype=torch.float32)
            kernels.act_quantize(x2, x_codes, x_scale, eps, vector_cores, tile_cap)
            x_hat = (x_codes.float() / x_scale[:, None]).to(x.dtype)
        grad_w = (g2.t() @ x_hat).to(w.dtype)
    if output_mask[2]:
        grad_bias = g2.sum(0)
    return grad_x, grad_w, grad_bias
