"""Build bitcpm_kernels: the C++ CPU kernels always, the AscendC kernels on CANN hosts.

Install against the torch that is already there:

    pip install --no-build-isolation .
"""

from __future__ import annotations

import os
import sys

from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "tools"))

CPU_SOURCES = [
    "csrc/ops_cpu.cpp",
    "csrc/cpu/ternary_quantize.cpp",
    "csrc/cpu/ternary_dequantize.cpp",
    "csrc/cpu/act_quantize.cpp",
    "csrc/cpu/ternary_linear.cpp",
]

# -ffp-contract=off keeps a * b + c from becoming an FMA, so the kernels round
# exactly like the eager reference; the AVX2 code paths are selected at run
# time through function target attributes, so no -march flag is needed.
CPU_COMPILE_ARGS = [
    "-O3",
    "-std=c++17",
    "-fopenmp",
    "-ffp-contract=off",
    "-fno-math-errno",
    "-fno-trapping-math",
]


def cpu_extension() -> CppExtension:
    return CppExtension(
        name="bitcpm_kernels._C",
        sources=CPU_SOURCES,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": CPU_COMPILE_ARGS},
        extra_link_args=["-fopenmp"],
    )


def npu_extensions() -> list:
    """Return the NPU extension when CANN is present, after printing why or why not."""
    try:
        import build_npu
    except ImportError:
        print("bitcpm_kernels: NPU kernels skipped: tools/build_npu.py is missing")
        return []
    enabled, reason = build_npu.npu_build_plan()
    print(f"bitcpm_kernels: NPU kernels {'enabled' if enabled else 'skipped'}: {reason}")
    return build_npu.npu_extensions() if enabled else []


setup(
    name="bitcpm-kernels",
    version="0.1.0",
    description="Fused ternary (1.58-bit) quantization-aware-training kernels for Ascend NPUs and CPUs",
    packages=find_packages(include=["bitcpm_kernels", "bitcpm_kernels.*"]),
    package_data={"bitcpm_kernels": ["models/*.py"]},
    python_requires=">=3.9",
    install_requires=["torch>=2.4", "safetensors", "tqdm", "numpy"],
    extras_require={
        # The modeling file uses transformers 5 APIs; gguf and accelerate load
        # SmolLM2's GGUF file for the demo.
        "model": ["transformers>=5", "gguf", "accelerate", "matplotlib"],
        "bench": ["matplotlib"],
        "test": ["pytest", "transformers>=5", "gguf", "accelerate", "matplotlib"],
        "npu": ["torch_npu"],
    },
    entry_points={
        "console_scripts": [
            "bitcpm-convert = bitcpm_kernels.convert:main",
            "bitcpm-demo = bitcpm_kernels.demo:main",
        ]
    },
    ext_modules=[cpu_extension(), *npu_extensions()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
