"""Compile-only checks of the NPU host code and source rules of the kernels.

Without CANN, csrc/npu/*.cpp cannot be built for real. These tests compile
them with g++ against the installed torch headers and the stand-in CANN and
torch_npu declarations in ascendc_kernels/host/npu_stubs. That catches
mistakes in the torch-side code (op schemas, ATen calls, the launch
signatures), but not mismatches with the real CANN headers.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KERNEL_DIR = REPO / "ascendc_kernels"
STUB_DIR = KERNEL_DIR / "host" / "npu_stubs"
KERNEL_FILES = sorted(KERNEL_DIR.glob("*.cpp"))


def _torch_includes() -> list[str]:
    from torch.utils.cpp_extension import include_paths

    return [f"-I{path}" for path in include_paths()]


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is needed for the compile check")
@pytest.mark.parametrize("source", ["ops.cpp", "kernel_launch.cpp"])
def test_npu_host_code_compiles(source):
    # TORCH_EXTENSION_NAME is what torch's BuildExtension defines for the
    # bitcpm_kernels._npu_C extension, which turns on the Python module init.
    command = [
        "g++", "-std=c++20", "-fsyntax-only", "-Wall", "-Werror=return-type", "-DTORCH_EXTENSION_NAME=_npu_C",
        *_torch_includes(), f"-I{sysconfig.get_paths()['include']}", f"-I{STUB_DIR}", f"-I{KERNEL_DIR}",
        f"-I{REPO / 'csrc' / 'npu'}", str(REPO / "csrc" / "npu" / source),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]


def test_kernel_files_are_listed():
    names = [path.name for path in KERNEL_FILES]
    assert names == [
        "act_quantize.cpp",
        "linear_epilogue.cpp",
        "ternary_dequantize.cpp",
        "ternary_matmul.cpp",
        "ternary_quantize.cpp",
    ]


@pytest.mark.parametrize("path", KERNEL_FILES, ids=lambda p: p.name)
def test_kernel_file_opens_with_math_and_memory(path):
    text = path.read_text()
    header = text.split("#include", 1)[0]
    assert header.startswith(f"// {path.stem}: "), "the file must open with its kernel name and purpose"
    assert "Math" in header
    assert "Memory" in header


@pytest.mark.parametrize("path", KERNEL_FILES, ids=lambda p: p.name)
def test_kernel_file_avoids_host_only_code(path):
    # Kernel sources use only the AscendC API and plain C++: the host runs
    # cannot show which standard-library parts the device compiler accepts.
    code = "\n".join(line.split("//", 1)[0] for line in path.read_text().splitlines())
    assert "std::" not in code
    assert not re.search(r"#include\s*<", code)
    assert "ascendc_host" not in code
    assert re.search(rf'extern "C" __global__ __aicore__ void {path.stem}\(', code)
