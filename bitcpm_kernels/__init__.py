"""Fused ternary (1.58-bit) quantization-aware-training kernels for PyTorch.

    import bitcpm_kernels as bk
    codes, scales = bk.ternary_quantize(w, group_size=-1)
    y = bk.ternary_linear(x, w, bias=None, group_size=-1)
    bk.replace_linears(model)            # nn.Linear -> BitLinear, lm_head excluded
    bk.backend_info()                    # which kernels run, and why
"""

from __future__ import annotations

import os
import sys

# torch_npu registers a torch.backends entry point that `import torch` loads
# automatically (torch >= 2.5). Where torch_npu is installed without the CANN
# libraries that import fails and takes torch down with it. When this package
# is imported before torch on a machine with no CANN environment
# (set_env.sh of CANN sets ASCEND_HOME_PATH or ASCEND_TOOLKIT_HOME), autoload
# is turned off unless the user set it. It has no effect once torch is imported.
if (
    "torch" not in sys.modules
    and not os.environ.get("ASCEND_HOME_PATH")
    and not os.environ.get("ASCEND_TOOLKIT_HOME")
):
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
