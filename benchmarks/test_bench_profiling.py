"""The named ranges (models/profiling.py) cost nothing measurable when nobody profiles (pytest-benchmark; not CI).

    pytest benchmarks/test_bench_profiling.py --benchmark-only --benchmark-columns=median,iqr,min

Per model, the same forward pass three ways: as shipped (ranges present, off), with ``component`` replaced by a
bare function returning a ``nullcontext`` (``stubbed``: the least a ``with`` site can cost), and with the ranges on
under a counter (no profiler: the name stack only). The first two should be indistinguishable within the
benchmark's spread; the third shows what turning them on costs. Small models, where per-range overhead weighs
most against the arithmetic.

Against a model with no ``with`` sites at all: ``test_one_range_when_off`` times 1000 entries of an idle range
against 1000 empty loop turns, and records how many ranges one forward pass opens; ranges per pass x the cost of
one is the whole overhead of the ranges per forward pass, to set beside the forward times above.
CPU wall clock on a shared machine: comparisons side by side, never asserted.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import models
import models.dim
import models.dit
import models.uvit
from models import profiling

ROUNDS, WARMUP = 20, 3
SIZES = {"dim_tiny_4": 16, "dit_tiny_4": 16, "uvit_tiny_4": 16, "dim_s_2": 16}
_NULL = contextlib.nullcontext()


def _without_ranges(name: str) -> None:
    return _NULL


@pytest.mark.parametrize("mode", ["ranges_off", "stubbed", "ranges_on"])
@pytest.mark.parametrize("model", list(SIZES))
def test_forward_with_and_without_named_ranges(benchmark, monkeypatch, model, mode):
    torch.manual_seed(0)
    size = SIZES[model]
    net = models.create_model(model, input_size=size).eval()
    x = torch.randn(1, net.in_channels, size, size)
    t = torch.full((1,), 500.0)
    if mode == "stubbed":  # each site a bare function returning one nullcontext: no flag check at all
        for module in (models.dim, models.dit, models.uvit):
            monkeypatch.setattr(module, "component", _without_ranges)
    stack = profiling.listening(record=False) if mode == "ranges_on" else contextlib.nullcontext()

    def step():
        with torch.inference_mode():
            return net(x, t)

    with stack:
        out = benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    assert out.shape[-2:] == x.shape[-2:]
    benchmark.extra_info.update(
        model=model, input_size=size, mode=mode, threads=torch.get_num_threads(),
        method=f"cpu wall clock (pytest-benchmark), {ROUNDS} rounds after {WARMUP} warm-up, torch.inference_mode",
    )


def _ranges_per_forward(model: str, size: int) -> int:
    """How many named ranges one forward pass opens (counted on the meta device)."""
    opened = []
    real = profiling._Range.__enter__

    def counting(self):
        opened.append(self.name)
        return real(self)

    with torch.device("meta"):
        net = models.create_model(model, input_size=size).eval()
    x = torch.empty(1, net.in_channels, size, size, device="meta")
    profiling._Range.__enter__ = counting
    try:
        with profiling.listening(record=False), torch.inference_mode():
            net(x, torch.full((1,), 500.0, device="meta"))
    finally:
        profiling._Range.__enter__ = real
    return len(opened)


@pytest.mark.parametrize("mode", ["idle_range", "empty_loop"])
def test_one_range_when_off(benchmark, mode):
    component = profiling.component
    assert not profiling.enabled()

    def ranges():
        for _ in range(1000):
            with component("scan"):
                pass

    def empty():
        for _ in range(1000):
            pass

    benchmark.pedantic(ranges if mode == "idle_range" else empty, rounds=50, warmup_rounds=5, iterations=1)
    benchmark.extra_info.update(
        mode=mode, per="1000 loop turns",
        ranges_per_forward={m: _ranges_per_forward(m, size) for m, size in {**SIZES, "dim_h_2": 32}.items()},
        method="cpu wall clock (pytest-benchmark), 50 rounds after 5 warm-up",
    )

