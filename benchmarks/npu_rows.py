"""NPU rows of the benchmark table.

``npu_rows(shapes)`` times, on the current NPU, for each ``(M, N, K)``:

- ``fused``: ``torch.ops.bitcpm_npu.ternary_linear`` (AscendC kernels), with
  ``act_bits=None`` and ``act_bits=8``;
- ``eager``: ``bitcpm_kernels.reference.ternary_linear``, the chain of
  PyTorch ops BitCPM runs today, on the same NPU tensors;
- ``torch_npu w8``: ``torch_npu.npu_weight_quant_batchmatmul`` with the int8
  codes and a per-channel scale (half/bfloat16 activations, int8 weight);
- ``torch_npu a8w8``: ``torch_npu.npu_quant_matmul`` with int8 activations,
  int8 codes, the weight scale and a per-token activation scale.

The two torch_npu rows take codes quantized ahead of time, so they time the
product only. The fused and eager rows include the weight quantizer, as
training does. Every row is a dict with the keys of ``ROW_KEYS``, the same
columns as the CPU rows. Without an NPU (or without the built NPU kernels)
``npu_rows`` returns ``([], reason)`` and runs nothing.

NOTE: never run: the development machine has no NPU. The torch_npu call
signatures follow ASCEND.md's summary of torch_npu 2.14.0 and are unchecked.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch

ROW_KEYS = ("device", "op", "impl", "dtype", "M", "N", "K", "group_size", "act_bits", "ms", "speedup")

DEFAULT_SHAPES = ((16, 4096, 4096), (512, 4096, 4096), (2048, 11008, 4096))


def npu_available() -> tuple[bool, str]:
    """Report whether the NPU rows can run here, with the reason when they cannot."""
    try:
        from bitcpm_kernels.backends import npu  # noqa: F401  (imports torch_npu when built)
    except ImportError as error:
        return False, f"no NPU rows: {error}"
    if not torch.npu.is_available():  # attribute added by torch_npu
        return False, "no NPU rows: torch_npu is loaded but no NPU device is visible"
    return True, "NPU rows on " + torch.npu.get_device_name()


def _time_ms(fn: Callable[[], object], warmup: int, repeats: int) -> float:
    """Median wall time of ``fn`` in milliseconds, synchronising the NPU around each call."""
    for _ in range(warmup):
        fn()
    torch.npu.synchronize()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.npu.synchronize()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def npu_rows(
    shapes: Sequence[tuple[int, int, int]] = DEFAULT_SHAPES,
    dtype: torch.dtype = torch.bfloat16,
    group_size: int = -1,
    warmup: int = 5,
    repeats: int = 20,
) -> tuple[list[dict], str]:
    """Benchmark rows for the NPU and a one-line status; no rows when no NPU is present."""
    available, reason = npu_available()
    if not available:
        return [], reason

    import torch_npu

    from bitcpm_kernels import reference

    rows: list[dict] = []
    device = torch.device("npu")
    for m, n, k in shapes:
        x = torch.randn(m, k, dtype=dtype, device=device)
        w = torch.randn(n, k, dtype=dtype, device=device) * 0.02
        codes, scales = torch.ops.bitcpm_npu.ternary_quantize(w, group_size, 1e-5)
        x_scale = 127.0 / x.float().abs().amax(dim=-1).clamp(min=1e-5)
        x_codes = torch.round(x.float() * x_scale[:, None]).clamp(-128, 127).to(torch.int8)

        candidates: list[tuple[str, int | None, Callable[[], object]]] = [
            ("eager", None, lambda: reference.ternary_linear(x, w, None, group_size, 1e-5, None)),
            ("fused", None, lambda: torch.ops.bitcpm_npu.ternary_linear(x, w, None, group_size, 1e-5, None)),
            ("eager", 8, lambda: reference.ternary_linear(x, w, None, group_size, 1e-5, 8)),
            ("fused", 8, lambda: torch.ops.bitcpm_npu.ternary_linear(x, w, None, group_size, 1e-5, 8)),
        ]
        if group_size == -1:
            weight_scale = scales.reshape(n).to(dtype)
            codes_kn = codes.t().contiguous()
            candidates.append((
                "torch_npu w8",
                None,
                lambda: torch_npu.npu_weight_quant_batchmatmul(x, codes_kn, weight_scale),
            ))
            candidates.append((
                "torch_npu a8w8",
                8,
                lambda: torch_npu.npu_quant_matmul(
                    x_codes, codes_kn, scales.reshape(n).float(),
                    pertoken_scale=(1.0 / x_scale).float(), output_dtype=dtype,
                ),
            ))

        eager_ms: dict[int | None, float] = {}
        for impl, act_bits, fn in candidates:
            ms = _time_ms(fn, warmup, repeats)
            if impl == "eager":
                eager_ms[act_bits] = ms
            rows.append({
                "device": "npu",
                "op": "ternary_linear",
                "impl": impl,
                "dtype": str(dtype).replace("torch.", ""),
                "M": m,
                "N": n,
                "K": k,
                "group_size": group_size,
                "act_bits": act_bits,
                "ms": ms,
                "speedup": eager_ms.get(act_bits, ms) / ms,
            })
    return rows, reason


if __name__ == "__main__":
    import sys
    from pathlib import Path

    # Let `python benchmarks/npu_rows.py` find the package in a source checkout.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    found_rows, status = npu_rows()
    print(status)
    for row in found_rows:
        print(" | ".join(str(row[key]) for key in ROW_KEYS))
