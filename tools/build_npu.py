"""Decide whether to build the NPU backend and build it with CMake.

``setup.py`` imports this module (it never imports torch_npu) and calls::

    enabled, reason = npu_build_plan()
    extensions = npu_extensions() if enabled else []

Environment variables:

``BITCPM_BUILD_NPU``
    ``1`` forces the NPU build (a missing CANN toolkit or torch_npu is then an
    error), ``0`` skips it, unset or ``auto`` builds when both are present.
``ASCEND_HOME_PATH``
    CANN install directory (``set_env.sh`` of CANN sets it); default
    ``/usr/local/Ascend/ascend-toolkit/latest``.
``SOC_VERSION``
    Ascend part the kernels are compiled for, default ``Ascend910B3``
    (an Atlas A2 / 910B part).
``BITCPM_NPU_BUILD_JOBS``
    parallel build jobs for CMake, default 2.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CANN_PATH = "/usr/local/Ascend/ascend-toolkit/latest"
DEFAULT_SOC_VERSION = "Ascend910B3"

# Locations of ascendc.cmake in CANN 8.x, relative to the install directory.
_ASCENDC_CMAKE_DIRS = (
    "compiler/tikcpp/ascendc_kernel_cmake",
    "tools/tikcpp/ascendc_kernel_cmake",
    "ascendc_devkit/tikcpp/samples/cmake",
)


def cann_path() -> Path:
    """Return the CANN install directory: ``ASCEND_HOME_PATH``, else the default install path."""
    return Path(os.environ.get("ASCEND_HOME_PATH") or DEFAULT_CANN_PATH)


def _asc_module_dir(root: Path) -> Path | None:
    """Directory of CANN 9's FindASC.cmake under ``root``, or None."""
    # NOTE: the install location of FindASC.cmake is a guess from asc-devkit's
    # source layout (cmake/asc/asc_modules); the search covers the whole tree.
    for candidate in root.glob("**/FindASC.cmake"):
        return candidate.parent
    return None


def _cann_cmake_support(root: Path) -> str | None:
    """Return the CANN CMake route found under ``root``, or None."""
    for relative in _ASCENDC_CMAKE_DIRS:
        if (root / relative / "ascendc.cmake").is_file():
            return f"ascendc.cmake in {root / relative}"
    module_dir = _asc_module_dir(root)
    if module_dir is not None:
        return f"ASC CMake package in {module_dir}"
    return None


def _torch_npu_dir() -> Path | None:
    """Directory of the installed torch_npu package, found without importing it."""
    spec = importlib.util.find_spec("torch_npu")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def npu_build_plan() -> tuple[bool, str]:
    """Return whether to build the NPU kernels and the reason, for one line of the build log."""
    request = os.environ.get("BITCPM_BUILD_NPU", "auto").strip().lower()
    if request in ("0", "off", "false", "no"):
        return False, "BITCPM_BUILD_NPU=0"
    if request not in ("1", "on", "true", "yes", "auto", ""):
        raise ValueError(f"BITCPM_BUILD_NPU={request!r} is invalid; use 1, 0 or auto")
    forced = request in ("1", "on", "true", "yes")

    root = cann_path()
    problems = []
    if not root.is_dir():
        problems.append(f"no CANN toolkit at {root} (set ASCEND_HOME_PATH)")
    else:
        route = _cann_cmake_support(root)
        if route is None:
            problems.append(f"CANN at {root} has neither ascendc.cmake nor the ASC CMake package")
    if _torch_npu_dir() is None:
        problems.append("torch_npu is not installed")
    if shutil.which("cmake") is None:
        problems.append("cmake is not on PATH")

    if problems:
        reason = "; ".join(problems)
        if forced:
            raise RuntimeError(f"BITCPM_BUILD_NPU=1 but the NPU kernels cannot be built: {reason}")
        return False, reason

    soc = os.environ.get("SOC_VERSION", DEFAULT_SOC_VERSION)
    return True, f"{soc} with CANN at {root} ({route})"


def cmake_arguments(build_temp: Path, output_dir: Path) -> list[str]:
    """Build the CMake configure command line for the NPU build."""
    import torch  # setup.py builds with --no-build-isolation, so torch is installed

    torch_npu_dir = _torch_npu_dir()
    if torch_npu_dir is None:
        raise RuntimeError("torch_npu is not installed; the NPU build needs it")
    return [
        "cmake",
        "-S",
        str(REPO_ROOT),
        "-B",
        str(build_temp),
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DSOC_VERSION={os.environ.get('SOC_VERSION', DEFAULT_SOC_VERSION)}",
        f"-DASCEND_CANN_PACKAGE_PATH={cann_path()}",
        f"-DBITCPM_TORCH_NPU_DIR={torch_npu_dir}",
        f"-DBITCPM_OUTPUT_DIR={output_dir}",
        f"-DBITCPM_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
        f"-DPython3_EXECUTABLE={sys.executable}",
        f"-DBITCPM_ASC_MODULE_DIR={_asc_module_dir(cann_path()) or ''}",
    ]


# CANN and torch_npu libraries the extension links against. The CANN list is
# the link interface of ascendc_library in asc-devkit's FindASC.cmake plus
# the tiling libraries of the Matmul API (tiling_api, register, platform).
# NOTE: not checked against a CANN install; a missing name fails the link.
_NPU_LIBRARIES = [
    "torch_npu",
    "ascendcl",
    "runtime",
    "ascendc_runtime",
    "tiling_api",
    "register",
    "platform",
    "error_manager",
    "profapi",
    "ge_common_base",
    "unified_dlog",
    "mmpa",
    "ascend_dump",
    "c_sec",
]


def _build_kernel_library(build_dir: Path) -> Path:
    """Compile the AscendC kernels with CMake (target bitcpm_ascendc_kernels); return the static library."""
    build_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(cmake_arguments(build_dir, build_dir), check=True)
    jobs = os.environ.get("BITCPM_NPU_BUILD_JOBS", "2")
    subprocess.run(
        ["cmake", "--build", str(build_dir), "--target", "bitcpm_ascendc_kernels", "--parallel", jobs],
        check=True,
    )
    libraries = sorted(build_dir.glob("**/libbitcpm_ascendc_kernels.a"))
    if not libraries:
        raise RuntimeError(f"the AscendC kernel build finished but no libbitcpm_ascendc_kernels.a is under {build_dir}")
    return libraries[0]


def npu_extensions() -> list:
    """Build the AscendC kernels and return the ``bitcpm_kernels._npu_C`` extension that wraps them.

    setup.py calls this only when ``npu_build_plan()`` enabled the build, and
    it does so while evaluating ``setup()``, so CMake runs on every setup.py
    command (incrementally after the first). The extension compiles
    csrc/npu/*.cpp with torch's BuildExtension and links the kernel library
    that CMake built.
    """
    from torch.utils.cpp_extension import CppExtension

    torch_npu_dir = _torch_npu_dir()
    if torch_npu_dir is None:
        raise RuntimeError("torch_npu is not installed; the NPU build needs it")
    root = cann_path()
    build_dir = REPO_ROOT / "build" / "npu"
    kernel_library = _build_kernel_library(build_dir)

    return [
        CppExtension(
            name="bitcpm_kernels._npu_C",
            sources=["csrc/npu/ops.cpp", "csrc/npu/kernel_launch.cpp"],
            include_dirs=[
                str(REPO_ROOT / "ascendc_kernels"),
                str(REPO_ROOT / "csrc" / "npu"),
                # aclrtlaunch_<kernel>.h, generated by ascendc_library.
                str(build_dir / "include" / "bitcpm_ascendc_kernels"),
                str(torch_npu_dir / "include"),
                str(root / "include"),
            ],
            library_dirs=[str(torch_npu_dir / "lib"), str(root / "lib64")],
            libraries=_NPU_LIBRARIES,
            extra_objects=[str(kernel_library)],
            extra_compile_args={"cxx": ["-O2"]},
        )
    ]
