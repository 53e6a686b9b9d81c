"""The ``profile`` metric: where one forward pass spends its time, FLOPs, bytes and energy, per named component of
the model.

The models mark their components with :func:`models.profiling.component` (names and meanings in
``models.profiling.COMPONENTS``; ranges are flat, so they partition a forward pass; what runs outside every range
is ``other``). Three measurements, each in its own module and labelled in its rows:

- **Time per component** (:mod:`dimbench.metrics.component_timing`): mean over profiled forward passes of each
  range's CUDA kernel time, or its wall time on the CPU; the components and ``other`` add up to the forward. A
  Chrome/Perfetto trace is saved beside the results, on CUDA also a memory snapshot.
- **FLOPs and bytes per component** (:mod:`dimbench.metrics.component_count`), on the meta device: the flops
  metric's count attributed to the ranges, and the bytes each op reads and writes. Achieved FLOP/s (FLOPs / time)
  and arithmetic intensity (FLOPs / bytes) place each component on a roofline whose ceilings are measured
  (:mod:`dimbench.metrics.roofline`).
- **Energy per image** (CUDA, :mod:`dimbench.metrics.energy`): NVML sampled during a timed run of forward
  passes, divided by the images computed; device-wide. Without a GPU or NVML the row is skipped with the reason.

This module is the metric: its options, which size to time, and its rows. On the CPU a size whose forward pass
counts more than ``cpu_max_gflop`` GFLOP (meta count, at the point's batch) is not timed: the FLOP and byte shares
come from the meta count at the requested size and the time shares from the largest resolution under that bound
(the rows say which, in ``extra["timed_resolution"]`` and their method).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import models
from dimbench.metrics.base import Measurement, Metric, MetricContext, Row, slug
from dimbench.metrics.common import (
    build_model,
    device_name,
    point_inputs,
    precision_label,
    resolve_device,
    resolve_dtype,
)
from dimbench.metrics.component_count import COUNT_METHOD, count_components
from dimbench.metrics.component_timing import profile_model
from dimbench.metrics.flops import count_point_flops
from dimbench.metrics.roofline import measure_ceilings
from dimbench.points import SweepPoint
from dimbench.schema import Field, Integer, Number
from models.profiling import COMPONENTS

PROFILE_DIR = "profiles"

#: The suite's top-level ``warmup`` and ``repeats`` keys set these too (same names as the timed metrics' options).
WARMUP = Field("warmup", Integer(0), 2, "untimed forward passes before the profiled ones (after one probe pass)")
REPEATS = Field("repeats", Integer(1), 5, "profiled forward passes (each component's mean over them is reported: "
                "means add up to the forward's)")
CPU_MAX_GFLOP = Field(
    "cpu_max_gflop", Number(0, "GFLOP"), 200.0,
    "on the CPU, the largest forward pass (meta-count GFLOP at the point's batch) that is timed; above it the time "
    "shares come from the largest resolution under this bound (FLOP and byte shares stay at the requested size)",
)
ENERGY_SECONDS = Field("energy_seconds", Number(0, "seconds"), 2.0,
                       "CUDA: the least time forward passes run under the NVML sampler for the energy per image")


# ------------------------------------------------------------------------------------------------------------------
# Which size the CPU can afford to time


def affordable_resolution(point: SweepPoint, max_gflop: float) -> tuple[int, float]:
    """The largest resolution <= the point's (a multiple of the model's step) whose forward at the point's batch
    counts at most ``max_gflop`` GFLOP, and its count; the smallest resolution when none is under the bound.
    FLOPs grow with the resolution, so a bisection over the multiples of the step finds it."""
    step = models.model_info(point.model).resolution_step

    def gflop(k: int) -> float:
        return count_point_flops(point.at_resolution(k * step)).gflops

    lo, hi = 1, point.resolution // step
    best = (lo, gflop(lo))
    if best[1] > max_gflop:
        return lo * step, best[1]
    while lo < hi:  # invariant: lo is affordable
        mid = (lo + hi + 1) // 2
        g = gflop(mid)
        if g <= max_gflop:
            lo, best = mid, (mid, g)
        else:
            hi = mid - 1
    return best[0] * step, best[1]


# ------------------------------------------------------------------------------------------------------------------
# The metric


def _rel(path: Path | None, out_dir: str | None) -> str | None:
    """A saved file's path relative to the run folder (the report links it), absolute outside a run."""
    if path is None:
        return None
    if out_dir:
        try:
            return str(path.resolve().relative_to(Path(out_dir).resolve()))
        except ValueError:
            pass
    return str(path)


def profile_point(point: SweepPoint, options: dict[str, Any], out_dir: str | None,
                  folder: Path | None = None) -> dict[str, Any]:
    """Everything the profile metric reports at a point, as plain data (the CLI prints it, the metric writes it)."""
    device = resolve_device(point) if point.device.startswith("cuda") else torch.device(point.device)
    dtype = resolve_dtype(point)
    counts = count_components(point)
    requested_gflop = counts.total_flops / 1e9
    timed = point
    note = f"timed at the requested {point.resolution} px"
    if device.type == "cpu" and requested_gflop > options["cpu_max_gflop"]:
        res, g = affordable_resolution(point, options["cpu_max_gflop"])
        timed = point.at_resolution(res)
        under = "the largest" if g <= options["cpu_max_gflop"] else "none is under the bound: the smallest"
        note = (f"timed at {res} px ({under} resolution whose forward counts ≤ {options['cpu_max_gflop']:g} GFLOP on "
                f"the CPU; {g:.1f} GFLOP there), not at the requested {point.resolution} px ({requested_gflop:.1f} "
                "GFLOP): time shares are those of the smaller size, FLOP and byte shares those of the requested one")
    timed_counts = counts if timed is point else count_components(timed)
    if folder is None:
        base = Path(out_dir) if out_dir else Path(".")
        folder = base / PROFILE_DIR / slug(point.key)
    model = build_model(timed, device)
    inputs = point_inputs(timed, model, device)
    timing = profile_model(model, inputs, device, dtype, warmup=options["warmup"], repeats=options["repeats"],
                           folder=folder, energy_seconds=options.get("energy_seconds", 0.0))
    del model, inputs
    ceilings = measure_ceilings(device, out_dir)
    return {"ceilings": ceilings, "point": point, "timed": timed, "note": note, "counts": counts,
            "timed_counts": timed_counts, "timing": timing, "device": device, "dtype": dtype, "out_dir": out_dir}


def component_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per component (names in COMPONENTS order, then any other): time, share, FLOPs, bytes, rates."""
    counts, timed_counts, timing = result["counts"], result["timed_counts"], result["timing"]
    names = [c for c in COMPONENTS if c in timing.ms or c in counts.flops]
    names += [c for c in {**timing.ms, **counts.flops} if c not in names]
    total_ms = sum(timing.ms.values())
    total_flops, total_bytes = counts.total_flops, counts.total_bytes
    table = []
    for c in names:
        ms = timing.ms.get(c, 0.0)
        f_t, b_t = timed_counts.flops.get(c, 0), timed_counts.bytes.get(c, 0)
        table.append({
            "component": c,
            "ms": ms,
            "share_pct": 100.0 * ms / total_ms if total_ms else 0.0,
            "gflop": counts.flops.get(c, 0) / 1e9,
            "gbytes": counts.bytes.get(c, 0) / 1e9,
            "flop_share_pct": 100.0 * counts.flops.get(c, 0) / total_flops if total_flops else 0.0,
            "byte_share_pct": 100.0 * counts.bytes.get(c, 0) / total_bytes if total_bytes else 0.0,
            "gflop_timed": f_t / 1e9,
            "gbytes_timed": b_t / 1e9,
            "achieved_gflops": f_t / 1e9 / (ms / 1e3) if ms > 0 else None,
            "achieved_gbps": b_t / 1e9 / (ms / 1e3) if ms > 0 else None,
            "intensity": f_t / b_t if b_t else None,  # FLOP per byte, at the timed size
            "intensity_requested": counts.flops.get(c, 0) / counts.bytes[c] if counts.bytes.get(c) else None,
        })
    return table


def profile_metric(point: SweepPoint, ctx: MetricContext) -> list[Measurement]:
    options = ctx.options
    result = profile_point(point, options, ctx.out_dir,
                           None if ctx.out_dir else ctx.state_dir)
    return measurements(result)


def measurements(result: dict[str, Any]) -> list[Measurement]:
    """The profile's rows (declared in :data:`PROFILE`) from :func:`profile_point`'s result."""
    point, timed, timing = result["point"], result["timed"], result["timing"]
    out_dir = result["out_dir"]
    table = component_table(result)
    where = {
        "timed_resolution": timed.resolution,
        "timed_input_size": timed.input_size,
        "requested_resolution": point.resolution,
        "timing_note": result["note"],
        "time_kind": timing.kind,
        "device_name": device_name(result["device"]),
        "precision": precision_label(result["dtype"]),
        "batch": point.batch,
        "scan_backend": timing.backends.get("scan_backend"),
        "attention_backend": timing.backends.get("attention_backend"),
        "trace": _rel(timing.trace, out_dir),
        "memory_snapshot": _rel(timing.memory_snapshot, out_dir),
    }
    time_method = f"{timing.method}; {result['note']}"
    rows = [Measurement("profile_forward_ms", sum(timing.ms.values()), "ms",
                        f"{time_method}; the sum of the component times (= the profiled forward pass)",
                        {**where, "components": table, "forward_range_ms": timing.forward_ms,
                         "gflop": result["counts"].total_flops / 1e9, "gbytes": result["counts"].total_bytes / 1e9,
                         "count_method": COUNT_METHOD, "roofline": result["ceilings"]})]
    for row in table:
        step = list(COMPONENTS).index(row["component"]) if row["component"] in COMPONENTS else len(COMPONENTS)
        extra = {**where, **row, "step": step}
        rows += [
            Measurement("profile_ms", row["ms"], "ms", time_method, dict(extra)),
            Measurement("profile_share", row["share_pct"], "%", f"component time / profiled forward; {time_method}",
                        dict(extra)),
            Measurement("profile_gflop", row["gflop"], "GFLOP", f"{COUNT_METHOD}, at {point.resolution} px",
                        dict(extra)),
            Measurement("profile_gbytes", row["gbytes"], "GB", f"{COUNT_METHOD}, at {point.resolution} px",
                        dict(extra)),
        ]
    energy = timing.energy
    if energy is None:
        rows.append(Measurement("profile_energy_j", None, "J", "not measured", status="skipped",
                                error="not measured: the option energy_seconds is 0"))
    elif energy.get("energy_per_forward_j") is None:
        rows.append(Measurement("profile_energy_j", None, "J", "not measured", status="skipped",
                                error=energy.get("reason", "not available: no energy reading")))
    else:
        per_image = energy["energy_per_forward_j"] / point.batch
        rows.append(Measurement(
            "profile_energy_j", per_image, "J",
            f"{energy['energy_method']}, over {energy['forwards']} forward passes ({energy['seconds']:.2f} s) at "
            f"{timed.resolution} px, divided by the images computed; NVML sampled every "
            f"{energy['interval_s'] * 1e3:g} ms in a background thread; device-wide (anything else on the card counts)",
            {**where, **{k: v for k, v in energy.items() if k != "available"}}))
    return rows


PROFILE = Metric(
    name="profile",
    rows=(
        Row("profile_forward_ms", "ms", "profiled forward time (sum of the components)", per_pass=True,
            per_image_label="profiled forward time per image"),
        Row("profile_ms", "ms", "component time per forward", per_pass=True, series=True,
            per_image_label="component time per image"),
        Row("profile_share", "%", "component share of the forward time", series=True),
        Row("profile_gflop", "GFLOP", "component GFLOPs (2 per multiply-add)", task="count", per_pass=True,
            deterministic=True, series=True, per_image_label="component GFLOPs per image"),
        Row("profile_gbytes", "GB", "component bytes moved (each op reads its inputs, writes its outputs)",
            task="count", per_pass=True, deterministic=True, series=True,
            per_image_label="component bytes moved per image"),
        Row("profile_energy_j", "J", "energy per image (NVML)"),
    ),
    fn=profile_metric,
    description="per named component of the model (models.profiling.COMPONENTS): time (CUDA kernel time, or CPU "
    "time), share of the forward, FLOPs and bytes moved (meta count), a Chrome trace; on CUDA a memory snapshot and "
    "the energy per image from NVML",
    options=(WARMUP, REPEATS, CPU_MAX_GFLOP, ENERGY_SECONDS),
)
