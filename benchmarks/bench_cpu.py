"""CPU benchmark: fused kernels (``bitcpm_kernels``) against the eager reference chain.

Every case times the fused op and its baseline in one run, interleaved call by
call so that load from other processes hits both, and reports the ratio
baseline / fused (above 1 means the fused op is faster):

- ``quantize``: ``bk.ternary_quantize`` against ``bk.reference.ternary_quantize``;
- ``forward`` and ``forward+backward``: ``bk.ternary_linear`` against
  ``bk.reference.ternary_linear`` (the detach-form chain a BitCPM modeling.py
  runs), with gradients of both ``x`` and ``W`` in the backward;
- ``act8``: the fused ``act_bits=8`` forward (fake-quantized floats through
  a float GEMM) against an int8 product through ATen's ``torch._int_mm`` on
  int8 codes followed by scaling. Both include quantizing ``x`` and ``W``.

For the forward+backward cases the script also counts the bytes that autograd
keeps for the backward, apart from ``x`` and the weight parameter themselves.

Usage::

    PYTHONPATH=. python benchmarks/bench_cpu.py              # full run
    PYTHONPATH=. python benchmarks/bench_cpu.py --quick      # 1B shapes, 1 token
    PYTHONPATH=. python benchmarks/bench_cpu.py --tiny --quick --out /tmp/b

Writes ``results.csv``, ``machine.json`` and ``speedup.png`` into ``--out``.

NOTE: on CPUs without native bfloat16 GEMM the full run takes well over an
hour: one eager bfloat16 forward+backward at a 3B MLP target shape took 11
to 25 minutes on a shared 2-core AVX2 machine (1 thread). ``--quick`` took
about 1.5 minutes there.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

_HERE = Path(__file__).resolve().parent
# Let `python benchmarks/bench_cpu.py` find the package and npu_rows.py in a source checkout.
sys.path.insert(0, str(_HERE.parent))
sys.path.insert(0, str(_HERE))

import bitcpm_kernels as bk  # noqa: E402

EPS = 1e-5
GROUP_SIZE = -1

# (hidden size, FFN intermediate size) of the BitCPM-CANN checkpoints.
MODELS = {"1B": (2048, 6144), "3B": (2560, 10240), "8B": (4096, 16384)}
TINY_MODELS = {"tiny": (64, 192)}

# The 3B MLP at 2048 tokens in bfloat16 is the forward+backward target, so
# the full run includes it at any --max-gflop.
TARGET_MODEL = "3B"
TARGET_TOKENS = 2048

# Calls at least this long (seconds) use their first run as a timed sample.
LONG_CALL_S = 2.0

SHORT_DTYPE = {"bfloat16": "bf16", "float32": "fp32"}

CSV_COLUMNS = (
    "section", "model", "layer", "M", "N", "K", "dtype", "act_bits",
    "fused_impl", "baseline_impl",
    "fused_median_ms", "fused_min_ms", "baseline_median_ms", "baseline_min_ms", "reps",
    "ratio_median", "ratio_min",
    "fused_saved_bytes", "baseline_saved_bytes", "saved_ratio",
    "max_rel_diff",
)


@dataclasses.dataclass
class Case:
    """One benchmark row: a fused callable and its baseline on the same inputs."""

    section: str
    model: str
    layer: str
    m: int
    n: int
    k: int
    dtype: torch.dtype
    act_bits: int | None
    fused_impl: str
    baseline_impl: str
    gflop: float
    # Returns the fused callable, the baseline callable and a function that
    # returns extra CSV fields once both have run.
    build: Callable[[], tuple[Callable[[], object], Callable[[], object], Callable[[], dict]]]


@dataclasses.dataclass
class Timing:
    median_ms: float
    min_ms: float
    reps: int


# --- inputs and callables --------------------------------------------------


def make_weight(n: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    # Latent weights of trained layers are small, but the scale does not change the timing.
    return (torch.randn(n, k) * 0.02).to(dtype)


def quantize_case(model: str, layer: str, n: int, k: int, dtype: torch.dtype) -> Case:
    def build():
        w = make_weight(n, k, dtype)
        fused = lambda: bk.ternary_quantize(w, GROUP_SIZE, EPS)  # noqa: E731
        eager = lambda: bk.reference.ternary_quantize(w, GROUP_SIZE, EPS)  # noqa: E731
        return fused, eager, dict

    return Case("quantize", model, layer, 0, n, k, dtype, None, "bk.ternary_quantize",
                "reference.ternary_quantize", 0.0, build)


def linear_case(
    section: str, model: str, layer: str, m: int, n: int, k: int, dtype: torch.dtype
) -> Case:
    """Build a ``forward`` or ``forward+backward`` case for x (m, k) and W (n, k)."""
    backward = section == "forward+backward"

    def build():
        w = torch.nn.Parameter(make_weight(n, k, dtype))
        x = torch.randn(m, k).to(dtype).requires_grad_(backward)
        grad_y = torch.randn(m, n).to(dtype)

        if not backward:
            def forward(linear) -> Callable[[], object]:
                def call():
                    with torch.no_grad():
                        return linear(x, w, None, GROUP_SIZE, EPS, None)
                return call

            return forward(bk.ternary_linear), forward(bk.reference.ternary_linear), dict

        fused_bytes = SavedBytes(x, w)
        eager_bytes = SavedBytes(x, w)

        def forward_backward(linear, saved: SavedBytes) -> Callable[[], object]:
            def call():
                x.grad = None
                w.grad = None
                # The first call (a warm-up unless the call is long) counts the saved bytes.
                if saved.total is None:
                    with saved.hooks():
                        y = linear(x, w, None, GROUP_SIZE, EPS, None)
                else:
                    y = linear(x, w, None, GROUP_SIZE, EPS, None)
                y.backward(grad_y)
            return call

        def extra() -> dict:
            return {"fused_saved_bytes": fused_bytes.total, "baseline_saved_bytes": eager_bytes.total}

        return (
            forward_backward(bk.ternary_linear, fused_bytes),
            forward_backward(bk.reference.ternary_linear, eager_bytes),
            extra,
        )

    flop_factor = 6 if backward else 2
    return Case(section, model, layer, m, n, k, dtype, None, "bk.ternary_linear",
                "reference.ternary_linear", flop_factor * m * n * k / 1e9, build)


class SavedBytes:
    """Count the bytes autograd saves for the backward, apart from ``x`` and ``w``.

    Saved tensors are deduplicated by storage, so two views of one buffer
    count once. ``total`` is None until one forward ran under ``hooks()``.
    """

    def __init__(self, x: torch.Tensor, w: torch.Tensor):
        self._own = {x.untyped_storage().data_ptr(), w.untyped_storage().data_ptr()}
        self._storages: dict[int, int] = {}
        self.total: int | None = None

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self._own:
            self._storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @contextlib.contextmanager
    def hooks(self):
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor):
            yield
        self.total = sum(self._storages.values())


def int8_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Compute the W1.58A8 forward as an int8 product: int32 accumulation, then both scales.

    Only valid for one scale per output row (``group_size=-1``).
    """
    codes, w_scales = bk.ternary_quantize(w, -1, EPS)
    xf = x.float()
    x_scales = 127.0 / xf.abs().amax(dim=-1, keepdim=True).clamp(min=EPS)
    x_codes = torch.round(xf * x_scales).clamp(-128, 127).to(torch.int8)
    accumulator = torch._int_mm(x_codes, codes.t())
    return (accumulator.float() * w_scales.view(1, -1) / x_scales).to(x.dtype)


def act8_case(model: str, m: int, n: int, k: int, dtype: torch.dtype) -> Case:
    def build():
        w = make_weight(n, k, dtype)
        x = torch.randn(m, k).to(dtype)

        def fused():
            with torch.no_grad():
                return bk.ternary_linear(x, w, None, -1, EPS, 8)

        def int8():
            with torch.no_grad():
                return int8_linear(x, w)

        # Both paths quantize x and W identically, so they differ only by the
        # rounding of x_hat to x's dtype and by float summation order.
        y_fused = fused().float()
        y_int8 = int8().float()
        rel = float((y_fused - y_int8).abs().max() / y_fused.abs().max().clamp(min=1e-12))
        return fused, int8, lambda: {"max_rel_diff": rel}

    return Case("act8", model, f"{m}x{n}x{k}", m, n, k, dtype, 8, "bk.ternary_linear fp",
                "torch._int_mm int8", 2 * m * n * k / 1e9, build)


# --- the plan ----------------------------------------------------------------


def layer_shapes(hidden: int, ffn: int) -> list[tuple[str, int, int]]:
    """Weight shapes (name, N, K) of one decoder layer: gate/up, down and attention projections."""
    return [("gate/up", ffn, hidden), ("down", hidden, ffn), ("attn", hidden, hidden)]


def plan_cases(args: argparse.Namespace) -> tuple[list[Case], list[str]]:
    """Return the cases to run and a description of each case left out by --max-gflop."""
    models = TINY_MODELS if args.tiny else MODELS
    if args.quick and not args.tiny:
        models = {"1B": MODELS["1B"]}
    if args.tiny:
        tokens = [1, 16]
    elif args.quick:
        # One token only: ATen's bfloat16 GEMM on CPUs without native bfloat16
        # instructions makes the eager backward take tens of seconds at 128 tokens.
        tokens = [1]
    else:
        tokens = [1, 512, TARGET_TOKENS]
    dtypes = [torch.bfloat16, torch.float32]

    cases: list[Case] = []
    skipped: list[str] = []

    big = 256 if args.tiny else 4096
    for dtype in dtypes:
        cases.append(quantize_case("-", f"{big}x{big}", big, big, dtype))
        for model, (hidden, ffn) in models.items():
            for layer, n, k in layer_shapes(hidden, ffn):
                cases.append(quantize_case(model, layer, n, k, dtype))

    for section in ("forward", "forward+backward"):
        for model, (hidden, ffn) in models.items():
            for layer, n, k in layer_shapes(hidden, ffn):
                for m in tokens:
                    for dtype in dtypes:
                        case = linear_case(section, model, layer, m, n, k, dtype)
                        is_target = (
                            section == "forward+backward" and model == TARGET_MODEL
                            and layer != "attn" and m == TARGET_TOKENS
                        )
                        if is_target and dtype != torch.bfloat16:
                            skipped.append(describe(case) + " (target shape: bfloat16 only)")
                        elif case.gflop > args.max_gflop and not is_target:
                            skipped.append(describe(case) + f" ({case.gflop:.0f} GFLOP)")
                        else:
                            cases.append(case)

    if args.tiny:
        m, n, k = 16, 64, 64
    elif args.quick:
        m, n, k = 32, 2048, 2048
    else:
        m, n, k = 128, 2048, 2048
    for dtype in dtypes:
        cases.append(act8_case("-", m, n, k, dtype))

    if args.filter:
        cases = [case for case in cases if any(text in describe(case) for text in args.filter)]
        skipped = [line for line in skipped if any(text in line for text in args.filter)]
    return cases, skipped


def describe(case: Case) -> str:
    dtype = dtype_name(case.dtype)
    if case.section == "quantize":
        return f"quantize {case.model} {case.layer} {case.n}x{case.k} {dtype}"
    if case.section == "act8":
        return f"act8 {case.layer} {dtype}"
    return f"{case.section} {case.model} {case.layer} M={case.m} {case.n}x{case.k} {dtype}"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# --- timing --------------------------------------------------------------------


def time_call(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_pair(
    fused: Callable[[], object],
    baseline: Callable[[], object],
    min_reps: int,
    max_reps: int,
    seconds_per_impl: float,
) -> tuple[Timing, Timing]:
    """Time two callables alternately: warm up, size the repetitions, then interleave.

    The first call of each is a warm-up. Calls shorter than 0.1 s get two more
    warm-up calls, and calls longer than ``LONG_CALL_S`` keep their first
    call as a sample because a warm-up would change nothing but the run time.
    The repetition count makes the slower of the two run for about
    ``seconds_per_impl``, within ``[min_reps, max_reps]``.
    """
    first_fused = time_call(fused)
    first_baseline = time_call(baseline)
    first = max(first_fused, first_baseline)
    if first < 0.1:
        for _ in range(2):
            time_call(fused)
            time_call(baseline)
    reps = min(max_reps, max(min_reps, math.ceil(seconds_per_impl / max(first, 1e-6))))
    keep_first = first >= LONG_CALL_S

    fused_s = [first_fused] if keep_first else []
    baseline_s = [first_baseline] if keep_first else []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for rep in range(len(fused_s), reps):
            # Alternate which one goes first, so neither always follows the other's cache state.
            if rep % 2 == 0:
                fused_s.append(time_call(fused))
                baseline_s.append(time_call(baseline))
            else:
                baseline_s.append(time_call(baseline))
                fused_s.append(time_call(fused))
    finally:
        if gc_was_enabled:
            gc.enable()

    def summary(samples: list[float]) -> Timing:
        return Timing(statistics.median(samples) * 1e3, min(samples) * 1e3, len(samples))

    return summary(fused_s), summary(baseline_s)


def run_case(case: Case, args: argparse.Namespace) -> dict:
    fused, baseline, finish = case.build()
    fused_t, baseline_t = time_pair(fused, baseline, args.min_reps, args.max_reps, args.seconds)
    extra = finish()
    row = {
        "section": case.section,
        "model": case.model,
        "layer": case.layer,
        "M": case.m,
        "N": case.n,
        "K": case.k,
        "dtype": dtype_name(case.dtype),
        "act_bits": case.act_bits if case.act_bits is not None else "",
        "fused_impl": case.fused_impl,
        "baseline_impl": case.baseline_impl,
        "fused_median_ms": fused_t.median_ms,
        "fused_min_ms": fused_t.min_ms,
        "baseline_median_ms": baseline_t.median_ms,
        "baseline_min_ms": baseline_t.min_ms,
        "reps": fused_t.reps,
        "ratio_median": baseline_t.median_ms / fused_t.median_ms,
        "ratio_min": baseline_t.min_ms / fused_t.min_ms,
        "fused_saved_bytes": "",
        "baseline_saved_bytes": "",
        "saved_ratio": "",
        "max_rel_diff": "",
    }
    row.update(extra)
    if "fused_saved_bytes" in extra:
        eager_bytes = extra["baseline_saved_bytes"]
        row["saved_ratio"] = extra["fused_saved_bytes"] / eager_bytes if eager_bytes else float("nan")
    return row


# --- machine info, targets, output -------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(args: argparse.Namespace) -> dict:
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "backend_info": bk.backend_info(),
        "load_average_at_start": os.getloadavg(),
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "arguments": {key: value for key, value in vars(args).items() if key != "out"},
    }


def evaluate_targets(rows: list[dict], tiny: bool) -> list[tuple[str, str, str]]:
    """Return (target, measured value, PASS | MISS | NOT RUN) for each target."""
    results = []
    big = 256 if tiny else 4096
    for dtype in ("bfloat16", "float32"):
        name = f"quantize {big}x{big} {dtype}: eager/fused >= 10x"
        found = [r for r in rows if r["section"] == "quantize" and r["N"] == big
                 and r["K"] == big and r["model"] == "-" and r["dtype"] == dtype]
        results.append(ratio_target(name, found, 10.0))

    for layer in ("gate/up", "down"):
        name = f"forward+backward {TARGET_MODEL} {layer} M={TARGET_TOKENS} bfloat16: eager/fused >= 1.5x"
        hidden, ffn = MODELS[TARGET_MODEL]
        n, k = (ffn, hidden) if layer == "gate/up" else (hidden, ffn)
        found = [r for r in rows if r["section"] == "forward+backward" and r["M"] == TARGET_TOKENS
                 and r["N"] == n and r["K"] == k and r["dtype"] == "bfloat16"]
        results.append(ratio_target(name, found, 1.5))

    saved = [r for r in rows if r["saved_ratio"] != ""]
    name = "saved bytes for backward (apart from x and W): fused <= 0.5 x eager"
    if not saved:
        results.append((name, "-", "NOT RUN"))
    else:
        worst = max(saved, key=lambda r: r["saved_ratio"])
        verdict = "PASS" if worst["saved_ratio"] <= 0.5 else "MISS"
        value = (f"max fused/eager {worst['saved_ratio']:.3f} over {len(saved)} cases "
                 f"(e.g. {worst['fused_saved_bytes']} vs {worst['baseline_saved_bytes']} bytes)")
        results.append((name, value, verdict))
    return results


def ratio_target(name: str, found: list[dict], threshold: float) -> tuple[str, str, str]:
    if not found:
        return name, "-", "NOT RUN"
    row = found[0]
    value = f"{row['ratio_median']:.2f}x median, {row['ratio_min']:.2f}x min"
    return name, value, "PASS" if row["ratio_median"] >= threshold else "MISS"


def format_table(rows: list[dict]) -> str:
    header = ("case", "dtype", "fused ms", "baseline ms", "ratio med", "ratio min", "reps", "saved MiB f/e")
    lines = []
    for row in rows:
        if row["section"] == "quantize":
            label = f"quantize {row['model']} {row['layer']} {row['N']}x{row['K']}"
        elif row["section"] == "act8":
            label = f"act8 {row['layer']} (fp vs _int_mm)"
        else:
            label = f"{row['section']} {row['model']} {row['layer']} M={row['M']} {row['N']}x{row['K']}"
        saved = ""
        if row["saved_ratio"] != "":
            saved = f"{row['fused_saved_bytes'] / 2**20:.1f}/{row['baseline_saved_bytes'] / 2**20:.1f}"
        lines.append((
            label, row["dtype"], f"{row['fused_median_ms']:.2f}", f"{row['baseline_median_ms']:.2f}",
            f"{row['ratio_median']:.2f}", f"{row['ratio_min']:.2f}", str(row["reps"]), saved,
        ))
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    out = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)) for line in [header, *lines]]
    out.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(out)


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict], path: Path) -> None:
    """Draw speedup bars per case and saved-bytes bars per forward+backward case into one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"quantize": "tab:blue", "forward": "tab:orange",
              "forward+backward": "tab:green", "act8": "tab:purple"}
    labels = []
    for row in rows:
        if row["section"] == "quantize":
            labels.append(f"quant {row['model']} {row['layer']} {SHORT_DTYPE[row['dtype']]}")
        elif row["section"] == "act8":
            labels.append(f"act8 int_mm/fp {row['layer']} {SHORT_DTYPE[row['dtype']]}")
        else:
            short = "fwd" if row["section"] == "forward" else "fwd+bwd"
            labels.append(f"{short} {row['model']} {row['layer']} M={row['M']} {SHORT_DTYPE[row['dtype']]}")
    saved = [row for row in rows if row["saved_ratio"] != ""]

    height = max(4.0, 0.22 * len(rows))
    figure, (left, right) = plt.subplots(
        1, 2, figsize=(15, height), gridspec_kw={"width_ratios": [3, 2]}
    )
    positions = range(len(rows))
    left.barh(positions, [row["ratio_median"] for row in rows],
              color=[colors[row["section"]] for row in rows])
    left.set_yticks(list(positions), labels, fontsize=7)
    left.invert_yaxis()
    left.set_xscale("log")
    left.axvline(1.0, color="black", linewidth=0.8)
    left.set_xlabel("baseline time / fused time (median; > 1: fused is faster)")
    left.set_title("Speedup of the fused CPU kernels")

    if saved:
        saved_positions = range(len(saved))
        mib = 2**20
        right.barh([p - 0.2 for p in saved_positions], [r["baseline_saved_bytes"] / mib for r in saved],
                   height=0.4, label="eager", color="tab:red")
        right.barh([p + 0.2 for p in saved_positions], [r["fused_saved_bytes"] / mib for r in saved],
                   height=0.4, label="fused", color="tab:green")
        right.set_yticks(
            list(saved_positions),
            [f"{r['model']} {r['layer']} M={r['M']} {SHORT_DTYPE[r['dtype']]}" for r in saved],
            fontsize=7,
        )
        for position, row in zip(saved_positions, saved):
            right.annotate(f"{row['fused_saved_bytes'] / mib:.1f}", (0, position + 0.2),
                           xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
        right.invert_yaxis()
        right.legend()
    right.set_xlabel("MiB saved for backward, apart from x and W")
    right.set_title("Memory kept between forward and backward")

    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="run a small subset for smoke runs (1B shapes at 1 token, act_bits=8 at 32x2048x2048)")
    parser.add_argument("--tiny", action="store_true",
                        help="use tiny shapes (hidden 64, FFN 192) for smoke tests, where the targets do not apply")
    parser.add_argument("--out", type=Path, default=_HERE / "results",
                        help="directory for results.csv, machine.json and speedup.png (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's own choice)")
    parser.add_argument("--max-gflop", type=float, default=20.0,
                        help="skip linear cases above this many GFLOP per call, except the "
                             "forward+backward target shape (default: %(default)s)")
    parser.add_argument("--filter", action="append", default=None, metavar="TEXT",
                        help="run only the cases whose description (as printed under 'left out') "
                             "contains TEXT; repeat to allow several")
    parser.add_argument("--min-reps", type=int, default=3,
                        help="minimum timed calls per implementation (default: %(default)s)")
    parser.add_argument("--max-reps", type=int, default=50,
                        help="maximum timed calls per implementation (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="time budget in seconds per implementation and case, which sets "
                             "the repetitions (default: 1.0, or 0.2 with --quick)")
    args = parser.parse_args(argv)
    if args.seconds is None:
        args.seconds = 0.2 if args.quick else 1.0
    if args.min_reps < 1 or args.max_reps < args.min_reps:
        parser.error(f"need 1 <= --min-reps <= --max-reps, got {args.min_reps} and {args.max_reps}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from tqdm import tqdm

    from npu_rows import npu_rows

    args.out.mkdir(parents=True, exist_ok=True)
    info = machine_info(args)
    cases, skipped = plan_cases(args)
    if bk.backend_info()["cpu"]["backend"] != "cpu":
        print(f"warning: fused kernels are not active on the CPU: {bk.backend_info()['cpu']}",
              file=sys.stderr)

    rows = []
    for case in tqdm(cases, desc="bench_cpu", unit="case"):
        rows.append(run_case(case, args))
        # Rewrite the CSV after every case so that an interrupted run keeps its rows.
        write_csv(rows, args.out / "results.csv")
        gc.collect()

    info["load_average_at_end"] = os.getloadavg()
    info["finished_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    info["skipped_cases"] = skipped
    found_npu_rows, npu_status = npu_rows()
    info["npu_status"] = npu_status
    targets = evaluate_targets(rows, args.tiny)
    info["targets"] = [{"target": t, "measured": v, "verdict": verdict} for t, v, verdict in targets]

    write_csv(rows, args.out / "results.csv")
    if found_npu_rows:
        with (args.out / "npu_results.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(found_npu_rows[0]))
            writer.writeheader()
            writer.writerows(found_npu_rows)
    (args.out / "machine.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    plot(rows, args.out / "speedup.png")

    print(format_table(rows))
    print()
    if skipped:
        print(f"left out ({len(skipped)} cases over --max-gflop={args.max_gflop:g} or not a target dtype):")
        for line in skipped:
            print(f"  {line}")
        print()
    for row in rows:
        if row["section"] == "act8":
            winner = "fused fp path" if row["ratio_median"] > 1 else "int8 _int_mm path"
            factor = max(row["ratio_median"], 1 / row["ratio_median"])
            print(f"act_bits=8 {row['layer']} {row['dtype']}: {winner} wins by {factor:.2f}x "
                  f"(max relative difference of outputs {row['max_rel_diff']:.2e})")
    print(npu_status)
    print()
    if args.tiny:
        print("--tiny: the targets below are defined for the real shapes; these verdicts only smoke-test the code")
    for target, value, verdict in targets:
        print(f"{verdict:7s} {target}: {value}")
    print(f"\nwrote {args.out / 'results.csv'}, {args.out / 'machine.json'}, {args.out / 'speedup.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
