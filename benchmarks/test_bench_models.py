"""CPU micro-benchmarks of one denoising forward pass (pytest-benchmark; not part of CI).

    pytest benchmarks/test_bench_models.py --benchmark-only      # timings (cpu wall clock, pytest-benchmark)
    python benchmarks/test_bench_models.py                        # + torch.profiler breakdown of DiM-S/2

CPU timings are for relative comparisons on the machine at hand (dimbench's measurement method: shared, noisy
machines; never asserted). Each benchmark records the scan backend and thread count in ``extra_info``.
"""

from __future__ import annotations

import pytest
import torch

import models

ROUNDS, WARMUP = 5, 2


def _forward_bench(benchmark, name: str, input_size: int, batch: int = 1) -> None:
    torch.manual_seed(0)
    model = models.create_model(name, input_size=input_size).eval()
    x = torch.randn(batch, model.in_channels, input_size, input_size)
    t = torch.full((batch,), 500.0)
    y = None  # null class (DiM) / DiT's null row: the unconditional branch

    def step():
        with torch.inference_mode():
            return model(x, t, y)

    out = benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    assert out.shape[0] == batch and out.shape[2:] == x.shape[2:]  # DiT with learned sigma has 2·C channels
    benchmark.extra_info.update(
        model=name,
        input_size=input_size,
        batch=batch,
        dtype="float32",
        threads=torch.get_num_threads(),
        method=f"cpu wall clock (pytest-benchmark), {ROUNDS} rounds after {WARMUP} warm-up, torch.inference_mode",
    )
    if name.startswith("dim"):
        benchmark.extra_info["scan_backend"] = models.scan_backend()


def test_dim_s_2_forward_32px(benchmark):
    """DiM-S/2 on CIFAR-size input (3×32×32, 366 tokens), batch 1, fp32; target <= 0.8 s on 2 cores."""
    _forward_bench(benchmark, "dim_s_2", 32)


def test_dit_s_2_forward_256px(benchmark):
    """DiT-S/2 at 256 px (4×32×32 latents, 256 tokens), batch 1, fp32: a transformer of similar width for scale."""
    if "dit_s_2" not in models.list_models():
        pytest.skip("models.dit does not register dit_s_2")
    _forward_bench(benchmark, "dit_s_2", 32)


# ---------------------------------------------------------------------------------------------------------------
# Profile breakdown (run this file as a script)

_SCAN_OP = "dimbench_scan::selective_scan"
_MATMUL_OPS = {"aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::matmul", "aten::linear"}


def profile_breakdown(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, repeats: int = 3) -> dict:
    """Self CPU time (ms per forward) by bucket: matmuls, scan (everything inside the scan op), convolutions,
    the rest; from torch.profiler over ``repeats`` forwards after one warm-up."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        model(x, t)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                model(x, t)
    buckets = {"matmul": 0.0, "scan": 0.0, "conv": 0.0, "rest": 0.0}
    rest_ops: dict[str, float] = {}
    for evt in prof.events():
        parent, in_scan = evt, False
        while parent is not None:
            if parent.name == _SCAN_OP:
                in_scan = True
                break
            parent = parent.cpu_parent
        ms = evt.self_cpu_time_total / 1e3 / repeats
        if in_scan:
            buckets["scan"] += ms
        elif evt.name in _MATMUL_OPS:
            buckets["matmul"] += ms
        elif "conv" in evt.name:
            buckets["conv"] += ms
        else:
            buckets["rest"] += ms
            rest_ops[evt.name] = rest_ops.get(evt.name, 0.0) + ms
    buckets["total"] = sum(buckets.values())
    buckets["top_rest"] = sorted(rest_ops.items(), key=lambda kv: -kv[1])[:8]
    return buckets


if __name__ == "__main__":
    torch.manual_seed(0)
    model = models.create_model("dim_s_2").eval()
    x, t = torch.randn(1, 3, 32, 32), torch.full((1,), 500.0)
    b = profile_breakdown(model, x, t)
    print(f"DiM-S/2, 3x32x32, batch 1, fp32, {torch.get_num_threads()} threads, scan backend {models.scan_backend()}")
    print("self CPU time per forward from torch.profiler (mean of 3 after 1 warm-up):")
    for k in ("matmul", "scan", "conv", "rest", "total"):
        print(f"  {k:7s} {b[k]:8.1f} ms  ({100 * b[k] / b['total']:4.1f} %)")
    print("  largest ops in 'rest':", ", ".join(f"{n} {ms:.1f} ms" for n, ms in b["top_rest"]))
