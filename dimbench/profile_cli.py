"""``dimbench profile``: where one forward pass of a model spends its time, FLOPs, bytes and energy, per component.

    dimbench profile dim_h_2 --resolution 1536     # CPU: meta shares at 1536 px, timing at a size it affords
    dimbench profile dit_xl_2 --resolution 256 --device cuda --dtype bf16 --batch 8 --out results/profile

Rows go to OUT/results.jsonl like a suite's (metric ``profile``; ``dimbench report OUT`` draws them), the Chrome
trace (and on CUDA the memory snapshot) to OUT/profiles/<point>/. Profiles of several models and resolutions in
one OUT make the report's share-of-time chart across resolutions. Method: dimbench/metrics/profile.py.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import time
from pathlib import Path

from rich.table import Table

from dimbench import results
from dimbench.console import console
from dimbench.errors import UserError
from dimbench.points import SweepPoint

# The profiler library (kineto) reads its log level when torch loads it: its start/stop chatter stays off stderr.
os.environ.setdefault("KINETO_LOG_LEVEL", "5")

DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
               "float16": "float16", "fp16": "float16"}


def add_profile_command(sub) -> None:
    # heavy (torch): imported when the parser is built, not when this module loads
    from dimbench.metrics.profile import CPU_MAX_GFLOP, ENERGY_SECONDS, REPEATS, WARMUP

    p = sub.add_parser("profile", help="time, FLOPs, bytes and energy of one forward pass, per model component",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n")[1])
    p.add_argument("model", metavar="MODEL", help="registered model name (dimbench list)")
    p.add_argument("--resolution", type=int, required=True, metavar="PX",
                   help="image side in pixels (latent models see PX / their latent factor: PX/8 on SD-VAE latents)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--dtype", default="float32", help="float32, bf16 or fp16 (autocast; weights stay float32)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--out", metavar="DIR", default="results/profile",
                   help="folder of results.jsonl and the traces (default: results/profile)")
    p.add_argument("--warmup", type=int, default=1,
                   help=f"untimed passes before the profiled ones, besides the probe pass (suite default "
                   f"{WARMUP.default})")
    p.add_argument("--repeats", type=int, default=2,
                   help=f"profiled forward passes, times are their mean (suite default {REPEATS.default})")
    p.add_argument("--cpu-max-gflop", type=float, default=CPU_MAX_GFLOP.default, metavar="GFLOP",
                   help=CPU_MAX_GFLOP.doc)
    p.add_argument("--energy-seconds", type=float, default=ENERGY_SECONDS.default, metavar="S",
                   help=ENERGY_SECONDS.doc)
    p.add_argument("--fresh", action="store_true",
                   help="start over in OUT (its results, record and traces are kept as .bak)")
    p.add_argument("--allow-mixed", action="store_true",
                   help="add to a folder that holds another suite's or command's results, or profiles taken with "
                   "other options (refused otherwise)")
    p.set_defaults(func=cmd_profile)


def _point(args: argparse.Namespace):
    """The sweep point of the command, or a UserError naming the bad argument."""
    # heavy (torch, the models): imported when the command runs
    import models
    # heavy (torch, the models): imported when the command runs

    if args.model not in models.list_models():
        raise UserError(f"unknown model {args.model!r}; registered: {', '.join(models.list_models())}")
    info = models.model_info(args.model)
    step = info.resolution_step
    if args.resolution < step or args.resolution % step:
        raise UserError(f"--resolution {args.resolution}: {args.model} needs a positive multiple of {step} px "
                        f"({info.resolution_rule()})")
    if args.batch < 1:
        raise UserError(f"--batch {args.batch}: expected a positive number of images")
    if args.repeats < 1 or args.warmup < 0:
        raise UserError("--repeats must be >= 1 and --warmup >= 0")
    if not (math.isfinite(args.cpu_max_gflop) and args.cpu_max_gflop > 0):
        raise UserError(f"--cpu-max-gflop {args.cpu_max_gflop}: expected a number of GFLOP > 0")
    if not (math.isfinite(args.energy_seconds) and args.energy_seconds >= 0):
        raise UserError(f"--energy-seconds {args.energy_seconds}: expected a number of seconds >= 0")
    dtype = DTYPE_NAMES.get(args.dtype.lower())
    if dtype is None:
        raise UserError(f"--dtype {args.dtype}: expected one of {', '.join(DTYPE_NAMES)}")
    device = _device(args.device)
    return SweepPoint(suite="profile", model=args.model, resolution=args.resolution,
                      input_size=info.input_size(args.resolution), batch=args.batch, dtype=dtype,
                      device=device, metrics=("profile",))


def _device(requested: str) -> str:
    # heavy (torch, the models): imported when the command runs
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return "cpu"
    if requested == "cuda" or requested.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {requested}: CUDA is not available here (torch sees no GPU)")
        index = requested.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise UserError(f"--device {requested}: torch sees {torch.cuda.device_count()} CUDA GPU(s)")
        return requested
    raise UserError(f"--device {requested}: expected auto, cpu, cuda or cuda:N")


def cmd_profile(args: argparse.Namespace) -> int:
    point = _point(args)

    # heavy (torch, the models): imported when the command runs
    from dimbench.metrics.profile import PROFILE, component_table, measurements, profile_point
    from dimbench.runfolder import CommandRun
    from dimbench.worker import make_row

    out = Path(args.out)
    options = {"warmup": args.warmup, "repeats": args.repeats, "cpu_max_gflop": args.cpu_max_gflop,
               "energy_seconds": args.energy_seconds}
    con = console()
    # The run folder's rule (lock, record, rows once), as for a suite: a point profiled already is not again.
    with CommandRun(out, command="profile", argv=["dimbench", *getattr(args, "argv", [])], device=point.device,
                    settings={"profile": options}, allow_mixed=args.allow_mixed, fresh=args.fresh,
                    also_fresh=("profiles",), warn=lambda line: console(stderr=True).print(line, markup=False)) as run:
        if run.complete(point.key, PROFILE.final_rows):
            con.print(f"{point.model} at {point.resolution} px, batch {point.batch}, {point.dtype} on {point.device} "
                      f"is profiled already in {out / results.RESULTS_FILE} (--fresh to profile again)", markup=False)
            return 0
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        t0 = time.perf_counter()
        con.print(f"profiling {point.model} at {point.resolution} px, batch {point.batch}, {point.dtype} on "
                  f"{point.device} ...")
        result = profile_point(point, options, str(out))
        rows = [make_row(point, PROFILE, m, started_at=started, duration_s=time.perf_counter() - t0)
                for m in measurements(result)]
        run.write(rows)
    print_profile(con, result, component_table(result), rows)
    return 0


def print_profile(con, result, table, rows) -> None:
    """The component table, every number labelled: how measured, on which device, with which backends."""
    timing, point, timed = result["timing"], result["point"], result["timed"]
    b = timing.backends
    title = (f"{point.model}: one forward pass per component — {point.resolution} px, batch {point.batch}, "
             f"{point.dtype}, {result['device']}")
    t = Table(title=title, title_justify="left")
    time_head = "time ms\n(" + ("CUDA kernels" if timing.kind.startswith("cuda") else "CPU range wall time") + \
        (f", at {timed.resolution} px" if timed is not point else "") + ")"
    heads = [("component", "left"), (time_head, "right"), ("share %\n(of time)", "right"),
             (f"GFLOPs\n(meta, {point.resolution} px)", "right"),
             (f"GB moved\n(meta, {point.resolution} px)", "right"), ("FLOP %\n(meta)", "right"),
             ("bytes %\n(meta)", "right"),
             ("achieved\nGFLOP/s", "right"), ("intensity\nFLOP/byte", "right")]
    for head, justify in heads:
        t.add_column(head, justify=justify, no_wrap=True)

    def num(v, f="{:.2f}"):
        return "—" if v is None else f.format(v)

    for r in table:
        t.add_row(r["component"], num(r["ms"], "{:.3f}"), num(r["share_pct"], "{:.1f}"), num(r["gflop"], "{:.4g}"),
                  num(r["gbytes"], "{:.4g}"), num(r["flop_share_pct"], "{:.1f}"), num(r["byte_share_pct"], "{:.1f}"),
                  num(r["achieved_gflops"], "{:.1f}"), num(r["intensity"], "{:.1f}"))
    t.add_row("total", num(sum(r["ms"] for r in table), "{:.3f}"), "100.0",
              num(sum(r["gflop"] for r in table), "{:.4g}"), num(sum(r["gbytes"] for r in table), "{:.4g}"), "100.0",
              "100.0", "", "",
              style="bold")
    con.print(t)
    lines = [
        f"time: {timing.method}",
        f"timing size: {result['note']}",
        f"GFLOPs, GB moved: meta-device count at {point.resolution} px — FLOPs by FlopCounterMode (2 per "
        "multiply-add; they add up to the flops metric's count), bytes = each non-view op reading its inputs once "
        "and writing its outputs once",
        "achieved GFLOP/s and intensity: at the timed size (its own meta count / the component's time, FLOPs / bytes)",
        f"backends: scan={b.get('scan_backend') or 'none ran'}, attention={b.get('attention_backend')}",
    ]
    roof = result.get("ceilings") or {}
    if roof:
        lines.append(f"roofline ceilings ({roof['device']}): {roof['peak_gflops']:,.0f} GFLOP/s "
                     f"({roof['peak_method']}); {roof['bandwidth_gbps']:,.1f} GB/s ({roof['bandwidth_method']})")
    energy = timing.energy or {}
    if energy.get("energy_per_forward_j") is not None:
        lines.append(f"energy: {energy['energy_per_forward_j'] / point.batch:.3f} J per image "
                     f"({energy['energy_method']}; mean power {energy.get('mean_power_w') or 0:.0f} W, "
                     f"utilisation {energy.get('mean_util_pct') or 0:.0f} %, SM clock "
                     f"{energy.get('mean_sm_clock_mhz') or 0:.0f} MHz over {energy['forwards']} passes)")
    else:
        lines.append(f"energy per image: {energy.get('reason', 'not measured')}")
    if timing.trace:
        lines.append(f"trace (chrome://tracing or https://ui.perfetto.dev): {timing.trace}")
    if timing.memory_snapshot:
        lines.append(f"memory snapshot (https://pytorch.org/memory_viz): {timing.memory_snapshot}")
    bad = [r for r in rows if r["status"] == "error"]
    for r in bad:
        lines.append(f"row {r['metric']} not written as measured: {r['error']}")
    for line in lines:
        con.print(line, markup=False)
