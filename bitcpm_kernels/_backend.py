"""Backend selection: which kernels run for each device type, and why.

The native kernels run when their extension loaded; otherwise the eager
reference runs and ``backend_info()`` reports the reason. Setting
``BITCPM_BACKEND=reference`` (or calling ``set_backend("reference")``)
forces the reference on every device.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from types import ModuleType

from .backends import reference as _reference_backend

logger = logging.getLogger(__name__)

ENV_VAR = "BITCPM_BACKEND"
CHOICES = ("auto", "reference")

# Native backend module per device type, imported on first use.
_NATIVE_MODULES = {
    "cpu": "bitcpm_kernels.backends.cpu",
    "npu": "bitcpm_kernels.backends.npu",
}


@dataclass
class _NativeState:
    module: ModuleType | None = None
    error: str | None = None
    loaded: bool = False


_native: dict[str, _NativeState] = {}
_requested = "auto"
_logged: set[str] = set()


def _choice_from_env() -> str:
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(
            f"{ENV_VAR}={value!r} is invalid: use 'auto' (native kernels when built) or "
            f"'reference' (eager PyTorch everywhere)"
        )
    return value


def set_backend(name: str) -> None:
    """Choose ``"auto"`` (native kernels where built) or ``"reference"`` for every device."""
    global _requested
    if name not in CHOICES:
        raise ValueError(f"backend {name!r} is invalid: use one of {', '.join(CHOICES)}")
    _requested = name
    _logged.clear()


def get_backend() -> str:
    return _requested


def _load_native(device_type: str) -> _NativeState:
    state = _native.setdefault(device_type, _NativeState())
    if state.loaded:
        return state
    state.loaded = True
    module_name = _NATIVE_MODULES.get(device_type)
    if module_name is None:
        state.error = f"no native kernels exist for device type '{device_type}'"
        return state
    try:
        state.module = importlib.import_module(module_name)
    except ImportError as error:
        state.error = f"the {device_type} extension is not available ({error})"
    return state


def select(device_type: str) -> ModuleType:
    """Return the backend module for tensors on ``device_type``."""
    if _requested == "reference":
        module, reason = _reference_backend, f"forced by {ENV_VAR} or set_backend()"
    else:
        state = _load_native(device_type)
        if state.module is not None:
            module, reason = state.module, "native kernels loaded"
        else:
            module, reason = _reference_backend, state.error or "unknown"

    if device_type not in _logged:
        _logged.add(device_type)
        # The CPU kernels are always built, so falling back from them means a
        # broken install, or the source tree imported in place of the build.
        fell_back = device_type == "cpu" and module is _reference_backend and _requested == "auto"
        log = logger.warning if fell_back else logger.info
        log("bitcpm_kernels: %s tensors use the %s backend: %s", device_type, module.NAME, reason)
    return module


def backend_info() -> dict[str, dict[str, str]]:
    """Report, per device type, the active backend and the reason for the choice.

    The NPU entry never imports torch_npu: it only looks for the built
    extension, because importing torch_npu without CANN can break torch.
    """
    info: dict[str, dict[str, str]] = {}

    cpu = _load_native("cpu")
    if _requested == "reference":
        info["cpu"] = {"backend": "reference", "reason": f"forced by {ENV_VAR} or set_backend()"}
    elif cpu.module is not None:
        info["cpu"] = {"backend": "cpu", "reason": cpu.module.describe()}
    else:
        info["cpu"] = {"backend": "reference", "reason": cpu.error or "unknown"}

    info["npu"] = _npu_info()

    info["other"] = {"backend": "reference", "reason": "no native kernels for other devices"}
    info["requested"] = {"backend": _requested, "reason": f"{ENV_VAR} / set_backend()"}
    return info


def _npu_info() -> dict[str, str]:
    # Loading the NPU backend imports torch_npu, so it is only looked up here.
    state = _native.get("npu")
    if _requested == "reference":
        return {"backend": "reference", "reason": f"forced by {ENV_VAR} or set_backend()"}
    if state is not None and state.module is not None:
        return {"backend": "npu", "reason": "AscendC kernels loaded"}
    if state is not None:
        return {"backend": "reference", "reason": state.error or "unknown"}
    if importlib.util.find_spec("bitcpm_kernels._npu_C") is None:
        return {
            "backend": "reference",
            "reason": "the AscendC kernels were not built (no CANN toolkit at install time)",
        }
    return {"backend": "npu (not loaded yet)", "reason": "built; loads on the first npu tensor"}


_requested = _choice_from_env()
