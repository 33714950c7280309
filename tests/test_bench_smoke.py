"""Smoke test of benchmarks/bench_cpu.py on tiny shapes: it runs and writes its outputs.

No timing is asserted: the ratios depend on the machine and its load.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_cpu.py"


@pytest.fixture(scope="module")
def bench_output(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, PYTHONPATH=str(REPO), MPLBACKEND="Agg")
    command = [
        sys.executable, str(SCRIPT), "--quick", "--tiny", "--threads", "1",
        "--max-reps", "3", "--seconds", "0.01", "--out", str(out),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"bench_cpu.py failed:\n{result.stdout}\n{result.stderr}"
    return out, result.stdout


def read_rows(out: Path) -> list[dict]:
    with (out / "results.csv").open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_bench_writes_outputs(bench_output):
    out, _ = bench_output
    assert (out / "results.csv").stat().st_size > 0
    png = (out / "speedup.png").read_bytes()
    assert png.startswith(b"\x89PNG"), "speedup.png is not a PNG file"


def test_bench_covers_every_section(bench_output):
    out, _ = bench_output
    sections = {row["section"] for row in read_rows(out)}
    assert sections == {"quantize", "forward", "forward+backward", "act8"}


def test_bench_ratios_finite(bench_output):
    out, _ = bench_output
    for row in read_rows(out):
        for column in ("fused_median_ms", "baseline_median_ms", "ratio_median", "ratio_min"):
            value = float(row[column])
            assert math.isfinite(value), f"{column}={row[column]} in {row}"
            assert value > 0, f"{column}={row[column]} in {row}"


def test_bench_saved_bytes_counted(bench_output):
    out, _ = bench_output
    rows = [row for row in read_rows(out) if row["section"] == "forward+backward"]
    assert rows, "no forward+backward rows"
    for row in rows:
        eager = int(row["baseline_saved_bytes"])
        n, k = int(row["N"]), int(row["K"])
        bytes_per_element = 2 if row["dtype"] == "bfloat16" else 4
        # The eager chain saves the weight-sized W + (W_hat - W).detach() for F.linear.
        assert eager >= n * k * bytes_per_element, row
        assert math.isfinite(float(row["saved_ratio"])), row


def test_bench_act8_outputs_agree(bench_output):
    out, _ = bench_output
    rows = [row for row in read_rows(out) if row["section"] == "act8"]
    assert {row["dtype"] for row in rows} == {"bfloat16", "float32"}
    for row in rows:
        # The int8 product and the fused float path quantize identically, so
        # outputs differ only by x_hat's rounding to bfloat16 and summation order.
        assert float(row["max_rel_diff"]) < 2e-2, row


def test_bench_machine_json(bench_output):
    out, stdout = bench_output
    info = json.loads((out / "machine.json").read_text(encoding="utf-8"))
    assert info["torch_threads"] == 1
    assert "cpu" in info["backend_info"]
    assert info["npu_status"], "npu_rows gave no status line"
    assert len(info["targets"]) == 5
    assert "PASS" in stdout or "MISS" in stdout
