"""Latency and throughput of one denoising forward pass, and of one training step.

CPU: wall clock (time.perf_counter) around each repeat, after warm-up; the CPU numbers are for smoke runs and
side-by-side ratios only (shared, noisy machines). CUDA: a pair of CUDA events around each repeat, recorded
back to back on the stream after warm-up and a synchronize, read after a final synchronize. Both report the
median, with p10/p90/min/max and every sample in extra.

Each repeat is followed by one run of a fixed reference workload (a matrix product of a set size, see
:func:`reference_workload`), timed the same way; ``latency_rel`` and ``train_step_rel`` are the median over
repeats of (time / reference time of the same round). Those ratios are what ``dimbench gate`` compares: they
cancel most of a machine's speed and load, which absolute times on a shared machine do not.

Before warm-up, one untimed probe pass records which attention kernel and which scan backend ran (it goes
through a Python dispatch mode, so it is never timed).

At a compiled point (the suite's ``compile`` key) the timed passes run ``torch.compile(model, mode=...)``; the
probe pass runs the eager model (a dispatch mode does not see inside compiled code), and the first compiled call,
which compiles, is made before the warm-up and never timed (its wall time is ``extra.compile_first_call_s``);
at least one warm-up iteration follows it (CUDA-graph modes record there).

On CUDA the forward metric also reports achieved TFLOP/s (the meta-device FLOP count of this forward divided by
the median time) and MFU (achieved / the card's measured dense bf16 matmul peak, see hardware.py).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from dimbench.environment import tf32
from dimbench.metrics.base import Gate, Measurement, Metric, MetricContext, Plot, PlotSection, Ratio, Row, Summary
from dimbench.metrics.common import (
    TF32_PINNED,
    autocast_context,
    build_model,
    compile_label,
    compile_model,
    device_name,
    first_call,
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


def time_interleaved(fns: Sequence[Callable[[], Any]], device: torch.device, warmup: int,
                     repeats: int) -> tuple[list[list[float]], str]:
    """Time several callables in turn: each round runs every one once (fn0, fn1, fn0, fn1, ...), so all of them
    see the same machine state (clock, load, thermal); ``warmup`` untimed rounds first. Returns the samples in
    ms of each callable, in ``fns`` order, and the method."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        for fn in fns:
            fn()
    synchronize(device)
    if device.type == "cuda":
        events = [[(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in fns]
                  for _ in range(repeats)]
        with torch.cuda.device(device):  # events record on the current device's current stream
            for round_events in events:
                for fn, (start, end) in zip(fns, round_events, strict=True):
                    start.record()
                    fn()
                    end.record()
        torch.cuda.synchronize(device)
        samples = [[events[r][i][0].elapsed_time(events[r][i][1]) for r in range(repeats)] for i in range(len(fns))]
        method = f"cuda events, median of {repeats} after {warmup} warm-up"
    else:
        samples = [[] for _ in fns]
        for _ in range(repeats):
            for fn, out in zip(fns, samples, strict=True):
                t0 = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t0) * 1e3)
        method = f"{device.type} wall clock (perf_counter), median of {repeats} after {warmup} warm-up"
    return samples, method


# The reference workload timed between the model's repeats. Regression gates compare time ratios (model time /
# reference time) rather than times: a slower or busier machine slows both, so the ratio moves much less than
# either time (docs/method.md). A fixed-size matrix product in a fixed dtype: CPU float32 512^3 (0.27 GFLOP, a few
# ms on one core), CUDA bfloat16 4096^3 (137 GFLOP, ~0.2 ms on an H100).
REFERENCE_SIDE = {"cpu": 512, "cuda": 4096}


def reference_workload(device: torch.device) -> tuple[Callable[[], Any], str]:
    """The reference matrix product on ``device`` and its description (recorded in every timed row)."""
    side = REFERENCE_SIDE.get(device.type, REFERENCE_SIDE["cpu"])
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)
    a = torch.randn(side, side, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(side, side, generator=g).to(device=device, dtype=dtype)

    def matmul() -> torch.Tensor:
        with torch.inference_mode():
            return a @ b

    name = str(dtype).removeprefix("torch.")
    return matmul, f"{name} matmul {side}x{side}x{side} on {device.type}, timed after each repeat"


def relative_times(samples_ms: list[float], reference_ms: list[float]) -> float:
    """Median over repeats of (model time / the reference time of the same round)."""
    return statistics.median(s / r for s, r in zip(samples_ms, reference_ms, strict=True))


def ratio_samples(extra: dict[str, Any]) -> list[float] | None:
    """The per-round ratios (time / the reference's time in the same round) whose median is a ``*_rel`` row's
    value, from the row's ``extra`` (``samples_ms``, ``reference_samples_ms``); None when it does not hold them."""
    samples, reference = extra.get("samples_ms"), extra.get("reference_samples_ms")
    if not (isinstance(samples, list) and isinstance(reference, list) and samples and len(samples) == len(reference)):
        return None
    try:
        return [float(s) / float(r) for s, r in zip(samples, reference, strict=True)]
    except (TypeError, ValueError, ZeroDivisionError):
        return None


def _time_against_reference(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int):
    """Time ``fn`` interleaved with the reference workload: (stats of fn, timer method, the relative-time
    Measurement fields (value, method, extra))."""
    reference, reference_desc = reference_workload(device)
    (samples, ref_samples), timer = time_interleaved([fn, reference], device, warmup, repeats)
    ref_stats = summarize_ms(ref_samples)
    relative = relative_times(samples, ref_samples)
    rel_extra = {"reference": reference_desc, "reference_median_ms": ref_stats["median_ms"],
                 "reference_samples_ms": ref_samples}
    rel_method = f"median over repeats of (time / the reference's time in the same round); reference: {reference_desc}"
    return summarize_ms(samples), timer, (relative, rel_method, rel_extra)


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


def _tf32_note(device: torch.device) -> str:
    return f", {TF32_PINNED}" if device.type == "cuda" else ""


def _compile_note(point: SweepPoint) -> str:
    return " and 1 untimed first compiled call, which compiles" if point.compile else ""


def latency_metric(point: SweepPoint, ctx: MetricContext) -> list[Measurement]:
    """latency_ms and throughput of one forward pass (inference_mode); on CUDA also tflops_achieved and mfu."""
    device, dtype = resolve_device(point), resolve_dtype(point)
    warmup, repeats = ctx.options["warmup"], ctx.options["repeats"]
    model = build_model(point, device)
    run = compile_model(model, point)
    x, t, y = point_inputs(point, model, device)

    def forward(net: torch.nn.Module = run) -> torch.Tensor:
        with torch.inference_mode(), autocast_context(device, dtype):
            return net(x, t, y)

    backends = probe_backends(lambda: forward(model))
    compiled = first_call(forward, point, device)
    if compiled:
        warmup = max(warmup, 1)
    stats, timer, (relative, rel_method, rel_extra) = _time_against_reference(forward, device, warmup, repeats)
    method = (f"{timer} (+1 untimed probe pass{_compile_note(point)}); one forward pass, inference_mode, "
              f"{precision_label(dtype)}{_tf32_note(device)}, {compile_label(point)}")
    extra = {**_common_extra(point, device, dtype, backends, stats), **compiled}
    median_s = stats["median_ms"] / 1e3
    rows = [
        Measurement("latency_ms", stats["median_ms"], "ms", method, extra),
        Measurement("throughput", point.batch / median_s, "img/s", f"batch / median latency; {method}", dict(extra)),
        Measurement("latency_rel", relative, "x ref", f"{rel_method}; {method}", {**extra, **rel_extra}),
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
    run = compile_model(model, point)
    x, t, y = point_inputs(point, model, device)
    noise = torch.randn_like(x)
    channels = x.shape[1]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(net: torch.nn.Module = run) -> torch.Tensor:
        with autocast_context(device, dtype):
            out = net(x, t, y)
        # DiT predicts (eps, sigma) on 2C channels: the loss is on the eps half, as in its simple loss term.
        loss = F.mse_loss(out[:, :channels].float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    backends = probe_backends(lambda: step(model))
    compiled = first_call(step, point, device)
    stats, timer, (relative, rel_method, rel_extra) = _time_against_reference(step, device, warmup, repeats)
    method = (
        f"{timer} (+1 untimed probe step{_compile_note(point)}); forward + MSE on eps + backward + AdamW step "
        f"(torch defaults, no grad scaler), {precision_label(dtype)}{_tf32_note(device)}, {compile_label(point)}"
    )
    extra = {**_common_extra(point, device, dtype, backends, stats), **compiled}
    return [
        Measurement("train_step_ms", stats["median_ms"], "ms", method, extra),
        Measurement(
            "train_throughput",
            point.batch / (stats["median_ms"] / 1e3),
            "img/s",
            f"batch / median step time; {method}",
            dict(extra),
        ),
        Measurement("train_step_rel", relative, "x ref", f"{rel_method}; {method}", {**extra, **rel_extra}),
    ]


# The report's sections of these rows against resolution (dimbench.report.plotted).
_CPU_NOISE = ("CPU timings come from a shared, noisy machine: compare models by their ratio in the same run, not by "
              "absolute values.")
SPEED = PlotSection(
    "speed", "Speed: forward pass", order=20, cpu_paragraph=_CPU_NOISE,
    caption="Latency and throughput (images per second) of one denoising forward pass vs resolution, log-log, "
    "{facet}. ")
TRAINING = PlotSection(
    "training", "Speed: training step", order=30, cpu_paragraph=_CPU_NOISE,
    caption="Time and throughput of one training step (forward + backward + optimizer step) vs resolution, log-log, "
    "{facet}. ")
EFFICIENCY = PlotSection(
    "efficiency", "Hardware efficiency", order=50,
    caption="How close each model runs to the hardware, {facet}: achieved TFLOP/s = counted FLOPs / measured time; "
    "MFU = achieved / the card's peak. ")

LATENCY = Metric(
    name="latency",
    rows=(
        Row("latency_ms", "ms", "forward latency", per_pass=True, per_image_label="forward time per image",
            summary=Summary("fwd ms\n(median)"), ratio=Ratio("forward time per image", "#d1521f"),
            plot=Plot(SPEED, spread=True)),
        Row("throughput", "img/s", "forward throughput", summary=Summary("fwd img/s\n(batch/median)", "{:.2f}"),
            plot=Plot(SPEED)),
        Row("tflops_achieved", "TFLOP/s", "achieved TFLOP/s", summary=Summary("TFLOP/s\n(achieved)"),
            plot=Plot(EFFICIENCY, scale="linear")),
        Row("mfu", "%", "model FLOP utilisation", summary=Summary("MFU %\n(of bf16 peak)"),
            plot=Plot(EFFICIENCY, scale="linear")),
        # What regression gates compare: a ratio measured in one run cancels most of the machine's speed and load.
        # 30 %: what a shared 2-core machine needs; a suite's baseline may set it tighter for a quiet GPU.
        Row("latency_rel", "x ref", "forward time / reference matmul time", per_pass=True,
            per_image_label="forward time per image / reference matmul time",
            gate=Gate(0.30, worse="higher", same_device=True, samples=ratio_samples)),
    ),
    fn=latency_metric,
    description="time of one denoising forward pass (median and spread) and images per second; on CUDA also "
    "achieved TFLOP/s and MFU against the measured bf16 peak",
    options=(WARMUP, REPEATS),
    compiles=True,
)

TRAIN_STEP = Metric(
    name="train_step",
    rows=(
        Row("train_step_ms", "ms", "training-step time", task="train_step", per_pass=True,
            per_image_label="training-step time per image", summary=Summary("train step ms\n(median)"),
            ratio=Ratio("training-step time per image", "#8a5fb5"), plot=Plot(TRAINING, spread=True)),
        Row("train_throughput", "img/s", "training throughput", task="train_step",
            summary=Summary("train img/s\n(batch/median)", "{:.2f}"), plot=Plot(TRAINING)),
        Row("train_step_rel", "x ref", "training-step time / reference matmul time", task="train_step",
            per_pass=True, per_image_label="training-step time per image / reference matmul time",
            gate=Gate(0.30, worse="higher", same_device=True, samples=ratio_samples)),
    ),
    fn=train_step_metric,
    description="time of one training step (forward + MSE + backward + AdamW) and images per second",
    options=(WARMUP, REPEATS),
    compiles=True,
)
