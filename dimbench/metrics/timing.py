"""Latency and throughput of one denoising forward pass, and of one training step.

CPU: wall clock (time.perf_counter) around each repeat, after warm-up; the CPU numbers are for smoke runs and
side-by-side ratios only (shared, noisy machines). CUDA: a pair of CUDA events around each repeat, recorded
back to back on the stream after warm-up and a synchronize, read after a final synchronize. Both report the
median, with p10/p90/min/max and every sample in extra.

Before warm-up, one untimed probe pass records which attention kernel and which scan backend ran (it goes
through a Python dispatch mode, so it is never timed).

On CUDA the forward metric also reports achieved TFLOP/s (the meta-device FLOP count of this forward divided by
the median time) and MFU (achieved / the card's measured dense bf16 matmul peak, see hardware.py).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from dimbench.environment import tf32
from dimbench.metrics.base import Measurement, Metric, MetricContext, Ratio, Row, Summary
from dimbench.metrics.common import (
    autocast_context,
    build_model,
    device_name,
    point_inputs,
    precision_label,
    probe_backends,
    resolve_device,
    resolve_dtype,
    synchronize,
)
from dimbench.metrics.flops import count_point_flops
from dimbench.metrics.hardware import bf16_peak
from dimbench.points import SweepPoint
from dimbench.schema import Field, Integer

#: The timed metrics' options; the suite's top-level ``warmup`` and ``repeats`` keys are these two.
WARMUP = Field("warmup", Integer(0), 2, "untimed iterations before the timed ones")
REPEATS = Field("repeats", Integer(1), 5, "timed iterations (the median is reported, with p10/p90/min/max)")


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of already sorted values."""
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize_ms(samples_ms: list[float]) -> dict[str, Any]:
    """Median and spread of timing samples in milliseconds."""
    s = sorted(samples_ms)
    return {
        "median_ms": statistics.median(s),
        "p10_ms": _quantile(s, 0.10),
        "p90_ms": _quantile(s, 0.90),
        "min_ms": s[0],
        "max_ms": s[-1],
        "n": len(s),
        "samples_ms": samples_ms,
    }


def time_callable(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> tuple[list[float], str]:
    """Run ``fn`` ``warmup`` times untimed, then time ``repeats`` calls; returns (samples in ms, method)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
        with torch.cuda.device(device):  # events record on the current device's current stream
            for start, end in events:
                start.record()
                fn()
                end.record()
        torch.cuda.synchronize(device)
        samples = [start.elapsed_time(end) for start, end in events]
        method = f"cuda events, median of {repeats} after {warmup} warm-up"
    else:
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
        method = f"{device.type} wall clock (perf_counter), median of {repeats} after {warmup} warm-up"
    return samples, method


def _common_extra(point: SweepPoint, device: torch.device, dtype: torch.dtype, backends: dict, stats: dict) -> dict:
    return {
        **stats,
        **backends,
        "batch": point.batch,
        "device_name": device_name(device),
        "precision": precision_label(dtype),
        "tf32": tf32(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def latency_metric(point: SweepPoint, ctx: MetricContext) -> list[Measurement]:
    """latency_ms and throughput of one forward pass (inference_mode); on CUDA also tflops_achieved and mfu."""
    device, dtype = resolve_device(point), resolve_dtype(point)
    warmup, repeats = ctx.options["warmup"], ctx.options["repeats"]
    model = build_model(point, device)
    x, t, y = point_inputs(point, model, device)

    def forward() -> torch.Tensor:
        with torch.inference_mode(), autocast_context(device, dtype):
            return model(x, t, y)

    backends = probe_backends(forward)
    samples, timer = time_callable(forward, device, warmup, repeats)
    stats = summarize_ms(samples)
    method = f"{timer} (+1 untimed probe pass); one forward pass, inference_mode, {precision_label(dtype)}"
    extra = _common_extra(point, device, dtype, backends, stats)
    median_s = stats["median_ms"] / 1e3
    rows = [
        Measurement("latency_ms", stats["median_ms"], "ms", method, extra),
        Measurement("throughput", point.batch / median_s, "img/s", f"batch / median latency; {method}", dict(extra)),
    ]
    if device.type != "cuda":
        reason = "CUDA only: achieved TFLOP/s and MFU are reported against a measured GPU bf16 peak"
        rows += [
            Measurement("tflops_achieved", None, "TFLOP/s", "not measured", status="skipped", error=reason),
            Measurement("mfu", None, "%", "not measured", status="skipped", error=reason),
        ]
        return rows

    flops = count_point_flops(point)
    achieved = flops.flops / median_s / 1e12
    peak = bf16_peak(device, ctx.out_dir)
    flop_extra = {
        **extra,
        "counted_gflops": flops.gflops,
        "peak_bf16_tflops": peak["bf16_dense_tflops"],
        "peak_method": peak["method"],
        "peak_cached": peak["cached"],
    }
    rows += [
        Measurement(
            "tflops_achieved",
            achieved,
            "TFLOP/s",
            f"meta-device FlopCounterMode FLOPs (2 per MAC) / median latency; {method}",
            flop_extra,
        ),
        Measurement(
            "mfu",
            100.0 * achieved / peak["bf16_dense_tflops"],
            "%",
            "achieved TFLOP/s / measured dense bf16 matmul peak of this card (whatever the point's dtype)",
            dict(flop_extra),
        ),
    ]
    return rows


def train_step_metric(point: SweepPoint, ctx: MetricContext) -> list[Measurement]:
    """train_step_ms and train_throughput: forward + MSE on eps + backward + AdamW step."""
    device, dtype = resolve_device(point), resolve_dtype(point)
    warmup, repeats = ctx.options["warmup"], ctx.options["repeats"]
    # At least one untimed step: AdamW allocates its state on the first step.
    warmup = max(warmup, 1)
    model = build_model(point, device).train()
    x, t, y = point_inputs(point, model, device)
    noise = torch.randn_like(x)
    channels = x.shape[1]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> torch.Tensor:
        with autocast_context(device, dtype):
            out = model(x, t, y)
        # DiT predicts (eps, sigma) on 2C channels: the loss is on the eps half, as in its simple loss term.
        loss = F.mse_loss(out[:, :channels].float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    backends = probe_backends(step)
    samples, timer = time_callable(step, device, warmup, repeats)
    stats = summarize_ms(samples)
    method = (
        f"{timer} (+1 untimed probe step); forward + MSE on eps + backward + AdamW step (torch defaults, no grad "
        f"scaler), {precision_label(dtype)}"
    )
    extra = _common_extra(point, device, dtype, backends, stats)
    return [
        Measurement("train_step_ms", stats["median_ms"], "ms", method, extra),
        Measurement(
            "train_throughput",
            point.batch / (stats["median_ms"] / 1e3),
            "img/s",
            f"batch / median step time; {method}",
            dict(extra),
        ),
    ]


LATENCY = Metric(
    name="latency",
    rows=(
        Row("latency_ms", "ms", "forward latency", per_pass=True, per_image_label="forward time per image",
            summary=Summary("fwd ms\n(median)"), ratio=Ratio("forward time per image", "#d1521f")),
        Row("throughput", "img/s", "forward throughput", summary=Summary("fwd img/s\n(batch/median)", "{:.2f}")),
        Row("tflops_achieved", "TFLOP/s", "achieved TFLOP/s", summary=Summary("TFLOP/s\n(achieved)")),
        Row("mfu", "%", "model FLOP utilisation", summary=Summary("MFU %\n(of bf16 peak)")),
    ),
    fn=latency_metric,
    description="time of one denoising forward pass (median and spread) and images per second; on CUDA also "
    "achieved TFLOP/s and MFU against the measured bf16 peak",
    options=(WARMUP, REPEATS),
)

TRAIN_STEP = Metric(
    name="train_step",
    rows=(
        Row("train_step_ms", "ms", "training-step time", task="train_step", per_pass=True,
            per_image_label="training-step time per image", summary=Summary("train step ms\n(median)"),
            ratio=Ratio("training-step time per image", "#8a5fb5")),
        Row("train_throughput", "img/s", "training throughput", task="train_step",
            summary=Summary("train img/s\n(batch/median)", "{:.2f}")),
    ),
    fn=train_step_metric,
    description="time of one training step (forward + MSE + backward + AdamW) and images per second",
    options=(WARMUP, REPEATS),
)
