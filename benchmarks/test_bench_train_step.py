"""CPU micro-benchmarks of one training step of the quality suite's tiny models (pytest-benchmark; not part of CI).

    pytest benchmarks/test_bench_train_step.py --benchmark-only
    pytest benchmarks/test_bench_train_step.py --benchmark-only -k dim          # DiM with each scan backend

One step = forward, ε-MSE loss, backward, AdamW step, at the size suites/quality_small.yaml trains: 1-channel 8 px,
patch 2 (16 tokens; DiM 54 with its pads and front tokens), 5 blocks (DiG 4), width 64, batch 32, float32.

Every benchmark also records ``ratio_to_dit`` in its extra info: the median over rounds of (this model's step
time / DiT's step time), the two timed back to back in each round, so a busy machine slows both alike (the
ratio is the number to read on a shared machine; the absolute times are not). Times are the calling thread's
CPU time (time.thread_time) with one torch thread, for the same reason; ``wall_ratio_to_dit`` is the same ratio
in wall-clock time. Also recorded: the scan backend that ran (DiM), the forward FLOPs per image (FlopCounterMode,
2 per multiply-add) and their ratio to DiT's, so a step ratio can be read against the arithmetic it does.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import models

BATCH, RESOLUTION, ROUNDS, STEPS_PER_ROUND = 32, 8, 7, 3
REFERENCE = "dit_tiny_2"


def _trainer(name: str):
    """A closure running one optimizer step of ``name`` on a fixed random batch."""
    torch.manual_seed(0)
    model = models.create_model(name, input_size=RESOLUTION).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 1, RESOLUTION, RESOLUTION, generator=g)
    t = torch.rand(BATCH, generator=g) * 998 + 1
    y = torch.randint(0, 10, (BATCH,), generator=g)

    def step() -> None:
        out = model(x, t, y)
        loss = out[:, :1].float().sub(x).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return model, step


def _forward_flops(model: torch.nn.Module) -> float:
    x = torch.randn(1, 1, RESOLUTION, RESOLUTION)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, torch.tensor([500.0]), torch.tensor([3]))
    return float(counter.get_total_flops())


def _ratio(step, reference) -> tuple[float, float]:
    """Median over rounds of (step time / reference time), in thread CPU time and in wall time."""
    cpu, wall = [], []
    for _ in range(ROUNDS):
        times = []
        for fn in (step, reference):
            c0, w0 = time.thread_time(), time.perf_counter()
            for _ in range(STEPS_PER_ROUND):
                fn()
            times.append((time.thread_time() - c0, time.perf_counter() - w0))
        cpu.append(times[0][0] / times[1][0])
        wall.append(times[0][1] / times[1][1])
    return statistics.median(cpu), statistics.median(wall)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name, scan", [
    ("dim_tiny_2", "auto"), ("dim_tiny_2", "chunked"), ("dit_tiny_2", None), ("uvit_tiny_2", None),
    ("dig_tiny_2", None), ("sana_tiny_2_cc", None), ("dico_tiny", None),
])
def test_tiny_train_step(benchmark, one_thread, monkeypatch, name, scan):
    """One training step at the quality suite's size, and its ratio to DiT's (see the module docstring)."""
    if scan is not None:
        monkeypatch.setenv("DIMBENCH_SCAN_BACKEND", scan)
    model, step = _trainer(name)
    reference_model, reference = _trainer(REFERENCE)
    for _ in range(2):  # warm-up: first-call allocations, the scan kernel's build
        step()
        reference()
    cpu_ratio, wall_ratio = _ratio(step, reference)
    benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=1, iterations=STEPS_PER_ROUND)
    flops, reference_flops = _forward_flops(model), _forward_flops(reference_model)
    benchmark.extra_info.update(
        model=name, batch=BATCH, resolution=RESOLUTION, dtype="float32", threads=torch.get_num_threads(),
        ratio_to_dit=round(cpu_ratio, 3), wall_ratio_to_dit=round(wall_ratio, 3),
        forward_gflops_per_image=round(flops / 1e9, 5), flops_ratio_to_dit=round(flops / reference_flops, 3),
        method=f"cpu wall clock (pytest-benchmark), {ROUNDS} rounds of {STEPS_PER_ROUND} steps; ratio_to_dit: "
        f"median over {ROUNDS} back-to-back rounds of thread CPU time, one torch thread",
    )
    if name.startswith("dim"):
        benchmark.extra_info["scan_backend"] = models.scan_backend()
    assert cpu_ratio > 0
