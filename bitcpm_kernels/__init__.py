"""Fused ternary (1.58-bit) quantization-aware-training kernels for PyTorch.

    import bitcpm_kernels as bk
    codes, scales = bk.ternary_quantize(w, group_size=-1)
    y = bk.ternary_linear(x, w, bias=None, group_size=-1)
    bk.replace_linears(model)            # nn.Linear -> BitLinear, lm_head excluded
    bk.backend_info()                    # which kernels run, and why
"""

from __future__ import annotations

import os

# torch_npu registers a torch.backends entry point that `import torch` loads
# automatically (torch >= 2.5); without the CANN libraries that import fails
# and takes torch down with it. Only a process that can use the NPU should
# autoload it, so turn autoload off unless the user set it explicitly.
os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

from . import reference  # noqa: E402
from ._backend import backend_info, get_backend, set_backend  # noqa: E402
from .bitlinear import BitLinear, replace_linears  # noqa: E402
from .ops import ternary_dequantize, ternary_linear, ternary_quantize  # noqa: E402
from .packing import pack_ternary, unpack_ternary  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BitLinear",
    "backend_info",
    "get_backend",
    "pack_ternary",
    "reference",
    "replace_linears",
    "set_backend",
    "ternary_dequantize",
    "ternary_linear",
    "ternary_quantize",
    "unpack_ternary",
]
