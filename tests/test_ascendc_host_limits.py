"""The host AscendC subset rejects code that breaks Atlas A2 limits.

Each probe in ascendc_kernels/host/violation_probes.cpp breaks one rule; the
message must name the kernel, the block, the call and the numbers. The last
tests check the tiling arithmetic against the Unified Buffer and the NPU
build plan and backend on a machine without CANN.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HOST_DIR = REPO / "ascendc_kernels" / "host"
sys.path.insert(0, str(HOST_DIR))
import ascendc_host_runner as runner  # noqa: E402

needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is needed to build the host kernels")

PROBE_CASES = [
    ("misaligned_data_copy", ["DataCopy(GM->UB)", "100 x half = 200 bytes", "not a multiple of 32 bytes"]),
    ("unified_buffer_overflow", ["TPipe::InitBuffer", "102400 bytes", "196608 bytes"]),
    ("missing_free_tensor", ["end of kernel", "tensors not freed: 1"]),
    ("float_to_int8_cast", ["Cast", "float -> int8_t", "not in the Atlas A2 Cast table"]),
    ("partial_compare_span", ["Compare", "40 x float = 160 bytes", "256-byte span"]),
    ("use_after_free", ["Duplicate", "used after FreeTensor"]),
    ("global_out_of_bounds", ["DataCopyPad(GM->UB)", "[8, 264)", "256 elements"]),
    ("deque_without_enque", ["TQue::DeQue", "queue is empty"]),
    ("small_reduce_workspace", ["ReduceSum", "sharedTmpBuffer needs 64 x float = 256 bytes", "has 32 bytes"]),
    ("misaligned_operand", ["Abs", "byte 4", "not 32-byte aligned"]),
]


@pytest.fixture(scope="module")
def probe_library():
    return runner.build_library(runner.PROBE_SOURCES)


@needs_gxx
@pytest.mark.parametrize("name,fragments", PROBE_CASES, ids=[case[0] for case in PROBE_CASES])
def test_probe_violation_is_reported(probe_library, name, fragments):
    message = runner.run_probe(probe_library, name, block_num=3)
    assert message, f"probe {name} ran without an error"
    assert message.startswith(f"kernel {name} block 0/3: ")
    for fragment in fragments:
        assert fragment in message


@needs_gxx
def test_unknown_probe_raises(probe_library):
    with pytest.raises(ValueError, match="no probe named"):
        runner.run_probe(probe_library, "no_such_probe")


@needs_gxx
def test_host_tiling_error_reaches_python():
    import torch

    kernels = runner.HostKernels()
    a = torch.zeros((4, 0), dtype=torch.float16)
    b = torch.zeros((8, 0), dtype=torch.float16)
    c = torch.zeros((4, 8), dtype=torch.float32)
    with pytest.raises(runner.KernelLimitError, match="M, N and K must be positive, got 4, 8, 0"):
        kernels.ternary_matmul(a, b, c, True, 20)


# The largest tile of each kernel, from host_tiling.h. These runs reserve the
# most Unified Buffer the tiling ever requests, so a wrong budget fails in
# TPipe::InitBuffer.
FULL_TILE_CASES = [
    ("quantize", "float32", 9728),
    ("quantize", "bfloat16", 12032),
    ("act_quantize", "float32", 9728),
    ("dequantize", "float32", 12032),
    ("dequantize", "float16", 16128),
    ("epilogue", "float32", 5888),
]


@needs_gxx
@pytest.mark.parametrize("kernel,dtype_name,length", FULL_TILE_CASES, ids=lambda v: str(v))
def test_full_tile_fits_unified_buffer(kernel, dtype_name, length):
    import torch

    from bitcpm_kernels import reference

    kernels = runner.HostKernels()
    dtype = getattr(torch, dtype_name)
    generator = torch.Generator().manual_seed(13)
    data = torch.randn((2, length), generator=generator).to(dtype)
    if kernel == "quantize":
        codes, scales = runner.quantize(kernels, data, -1, 1e-5)
        ref_codes, ref_scales = reference.ternary_quantize(data, -1, 1e-5)
        assert torch.equal(codes, ref_codes)
        torch.testing.assert_close(scales, ref_scales, rtol=1e-6, atol=0.0)
    elif kernel == "act_quantize":
        codes = torch.empty((2, length), dtype=torch.int8)
        row_scale = torch.empty(2, dtype=torch.float32)
        kernels.act_quantize(data, codes, row_scale, 1e-5, 40)
        x_hat = (codes.float() / row_scale[:, None]).to(dtype)
        assert torch.equal(x_hat, reference.fake_quantize_activation(data, 8, 1e-5))
    elif kernel == "dequantize":
        codes, scales = reference.ternary_quantize(data.float(), -1, 1e-5)
        out = runner.dequantize(kernels, codes, scales, -1, dtype)
        assert torch.equal(out, reference.ternary_dequantize(codes, scales, -1, dtype))
    else:
        acc = torch.randint(-1000, 1000, (2, length), generator=generator, dtype=torch.int32)
        col = torch.rand(length, generator=generator)
        out = torch.empty((2, length), dtype=dtype)
        kernels.linear_epilogue(acc, col, None, None, out, 40)
        assert torch.equal(out, acc.float() * col)


def test_build_plan_skips_without_cann(monkeypatch, tmp_path):
    sys.path.insert(0, str(REPO / "tools"))
    import build_npu

    monkeypatch.setenv("ASCEND_HOME_PATH", str(tmp_path / "no_cann"))
    monkeypatch.delenv("BITCPM_BUILD_NPU", raising=False)
    enabled, reason = build_npu.npu_build_plan()
    assert not enabled
    assert f"no CANN toolkit at {tmp_path / 'no_cann'}" in reason


def test_build_plan_forced_without_cann_raises(monkeypatch, tmp_path):
    sys.path.insert(0, str(REPO / "tools"))
    import build_npu

    monkeypatch.setenv("ASCEND_HOME_PATH", str(tmp_path / "no_cann"))
    monkeypatch.setenv("BITCPM_BUILD_NPU", "1")
    with pytest.raises(RuntimeError, match="BITCPM_BUILD_NPU=1"):
        build_npu.npu_build_plan()


def test_build_plan_disabled_by_env(monkeypatch):
    sys.path.insert(0, str(REPO / "tools"))
    import build_npu

    monkeypatch.setenv("BITCPM_BUILD_NPU", "0")
    assert build_npu.npu_build_plan() == (False, "BITCPM_BUILD_NPU=0")


@pytest.mark.skipif(
    importlib.util.find_spec("bitcpm_kernels._npu_C") is not None, reason="the NPU extension is built here"
)
def test_npu_backend_import_leaves_torch_npu_alone():
    # In a fresh interpreter: importing the backend without the built
    # extension raises ImportError with the reason and never imports torch_npu.
    code = (
        "import sys\n"
        "try:\n"
        "    import bitcpm_kernels.backends.npu\n"
        "except ImportError as error:\n"
        "    print(error)\n"
        "assert 'torch_npu' not in sys.modules, 'torch_npu was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("bitcpm_kernels._npu_C was not built")


@pytest.mark.skipif(importlib.util.find_spec("torch_npu") is not None, reason="torch_npu is installed here")
def test_npu_rows_empty_without_npu():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import npu_rows

    rows, status = npu_rows.npu_rows()
    assert rows == []
    assert status.startswith("no NPU rows: ")
