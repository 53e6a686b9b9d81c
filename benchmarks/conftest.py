"""Benchmark-session hooks: a comparison with a saved baseline (tox -e bench-gate) is refused when the baseline
was measured on another CPU model or core count, instead of pytest-benchmark's warning: medians from another
machine say nothing about a regression here."""

from __future__ import annotations

import pytest


def _cpu(info: dict) -> tuple:
    cpu = info.get("cpu") or {}
    return cpu.get("brand_raw"), cpu.get("count")


def pytest_benchmark_compare_machine_info(config, benchmarksession, machine_info, compared_benchmark):
    ours, theirs = _cpu(machine_info), _cpu(compared_benchmark.get("machine_info") or {})
    if ours != theirs:
        raise pytest.UsageError(
            f"the benchmark baseline was measured on CPU {theirs[0]!r} with {theirs[1]} cores, this machine is "
            f"{ours[0]!r} with {ours[1]} cores: not comparable. Save a baseline here (see "
            "benchmarks/test_bench_blocks.py) or compare on the baseline's machine.")
