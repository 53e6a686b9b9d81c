"""How fast are DiM, DiT and U-ViT, eager and compiled? Images per second of one denoising forward pass, model by
model and size by size, each row written the moment it is measured (phases 4 and 5 of ``scripts/gpu_check.sh``).

    python benchmarks/model_speed.py eager    [--points 1536:1,1024:2,512:8,256:32] [--summary OUT] [--json FILE]
    python benchmarks/model_speed.py compiled [--points 1536:1] [--models dim_h_2,dit_xl_2]

``eager`` (phase 4): DiM-H/2, DiT-XL/2 and U-ViT-H/2 at 1536 px batch 1, 1024/2, 512/8 and 256/32 (largest first:
the high-resolution answer is the one this project exists for), and the selective scan's share of DiM's forward
at the largest size. ``compiled`` (phase 5): DiM-H/2 and DiT-XL/2 at 1536 px batch 1 under ``torch.compile``
(mode "default", inductor; ``--compile-backend`` names another), with the first call's wall time (the compile),
the eager time in the same process for the ratio, and the graph breaks dynamo counted.

Method, the same as the harness's ``latency`` metric (dimbench.metrics.timing) where it overlaps: each model built
directly on the device (``with torch.device(...)``, float32 weights, eval mode, DiM-style random init), inputs from
``dimbench.metrics.common.point_inputs``, the point's dtype applied by ``torch.autocast`` (bfloat16 by default:
"eager bf16" means float32 weights under autocast, as these models are trained and sampled), ``torch.no_grad``.
One untimed probe pass records the scan and attention backends that ran (first size of each model only), then
``--warmup`` passes, then ``--repeats`` passes each between two CUDA events, read after one synchronize; the median
is reported, with img/s = batch / median, and the allocator's peak memory of the timed passes. Latent models see
resolution / 8 (1536 px = a 192×192 latent, 96×96 tokens at patch 2).

Scan share: one more set of ``--repeats`` passes at the first size with ``models.dim.selective_scan`` wrapped so
that a CUDA event pair brackets every scan call; share = Σ (scan call intervals) / (whole forward interval), the
median over the passes, with the backend that ran (DiM names none: the one "auto" picks, on a GPU machine without
mamba-ssm the ``triton`` kernel, with the fused conv1d + SiLU; or ``DIMBENCH_SCAN_BACKEND``'s, which the line then
names). The intervals are GPU time between the events, so they hold the scan kernels (and any
gap on the stream inside them); the forward at that size is GPU-bound, so launch gaps are not counted as the scan's.

Each (model, size) is guarded: an out-of-memory or an exception is a row with its error, and the next goes on;
``--deadline-s`` stops starting new points after that many seconds. ``--device cpu`` is the GPU check's dry run:
small models and sizes (the lines say TINY), the wall clock instead of CUDA events, and ``aot_eager`` for compile.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import torch  # noqa: E402
from gpu_report import Summary, write_json_atomic  # noqa: E402

import models  # noqa: E402
from dimbench.metrics.common import (  # noqa: E402
    autocast_context,
    build_model,
    point_inputs,
    probe_backends,
    synchronize,
)
from dimbench.points import SweepPoint  # noqa: E402

DEFAULTS = {
    "eager": {"models": "dim_h_2,dit_xl_2,uvit_h_2", "points": "1536:1,1024:2,512:8,256:32"},
    "compiled": {"models": "dim_h_2,dit_xl_2", "points": "1536:1"},
}
#: the CPU dry run's stand-ins: dimbench's tiny pixel models (5-6 blocks, width 64, patch 4) at 16 px.
TINY = {"eager": {"models": "dim_tiny_4,dit_tiny_4,uvit_tiny_4", "points": "16:1,16:2"},
        "compiled": {"models": "dim_tiny_4,dit_tiny_4", "points": "16:1"}}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["eager", "compiled"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--models", help="comma-separated model names")
    p.add_argument("--points", help="comma-separated RESOLUTION:BATCH")
    p.add_argument("--dtype", default=None, help="bfloat16 (default on CUDA) or float32 (default on the CPU)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile-mode", default="default")
    p.add_argument("--compile-backend", default=None, help="inductor (default on CUDA) or aot_eager (CPU default)")
    p.add_argument("--no-scan-share", action="store_true")
    p.add_argument("--deadline-s", type=float, default=None)
    p.add_argument("--json", help="write every row here (rewritten after each)")
    p.add_argument("--summary", help="append one line per row to SUMMARY/summary.{txt,jsonl}")
    p.add_argument("--phase", default=None)
    return p.parse_args(argv)


class Clock:
    """Milliseconds between marks: CUDA events on the GPU (read after one synchronize), the wall clock on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def elapsed_ms(self, a, b) -> float:
        return a.elapsed_time(b) if self.cuda else (b - a) * 1e3

    def settle(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def timed_passes(fn, clock: Clock, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    clock.settle()
    marks = []
    for _ in range(repeats):
        a = clock.mark()
        fn()
        marks.append((a, clock.mark()))
    clock.settle()
    return [clock.elapsed_ms(a, b) for a, b in marks]


def scan_share(fn, clock: Clock, repeats: int) -> dict:
    """The selective scan's share of ``fn()`` (a DiM forward): every call of ``models.dim.selective_scan``
    bracketed by a pair of marks (see the module docstring)."""
    from models import dim

    real = dim.selective_scan
    calls: list = []

    def bracketed(*args, **kwargs):
        a = clock.mark()
        out = real(*args, **kwargs)
        calls.append((a, clock.mark()))
        return out

    dim.selective_scan = bracketed
    try:
        fn()  # warm the wrapper's path once
        clock.settle()
        passes = []
        for _ in range(repeats):
            calls.clear()
            a = clock.mark()
            fn()
            b = clock.mark()
            clock.settle()
            scan_ms = sum(clock.elapsed_ms(x, y) for x, y in calls)
            passes.append((scan_ms, clock.elapsed_ms(a, b), len(calls)))
    finally:
        dim.selective_scan = real
    shares = [s / w for s, w, _ in passes]
    i = shares.index(statistics.median_low(shares))
    scan_ms, whole_ms, n = passes[i]
    return {"scan_share": shares[i], "scan_ms": scan_ms, "forward_ms": whole_ms, "scan_calls": n,
            "scan_ms_per_call": scan_ms / max(n, 1), "scan_backend": models.scan_backend(),
            "scan_backend_chosen_by": chosen_by()}


def chosen_by() -> str:
    """Who chose the scan's backend here: DiM asks for none, so "auto" unless DIMBENCH_SCAN_BACKEND names one."""
    from models.scan import ENV_VAR

    return ENV_VAR if os.environ.get(ENV_VAR, "").strip() not in ("", "auto") else "auto"


def measure_point(model_name: str, resolution: int, batch: int, args, device: torch.device, clock: Clock,
                  probe: bool, share: bool) -> dict:
    dtype = getattr(torch, args.dtype)
    point = SweepPoint("gpu_check", model_name, resolution, models.model_info(model_name).input_size(resolution), batch,
                       args.dtype, device.type, ("latency",))
    row: dict = {"model": model_name, "resolution": resolution, "batch": batch, "dtype": args.dtype,
                 "input_size": point.input_size, "error": None}
    t0 = time.perf_counter()
    model = build_model(point, device)
    synchronize(device)
    row["build_s"] = round(time.perf_counter() - t0, 2)
    x, t, y = point_inputs(point, model, device)

    def forward():
        with torch.no_grad(), autocast_context(device, dtype):
            return model(x, t, y)

    if args.mode == "compiled":
        row.update(compiled_timing(model, x, t, y, forward, args, device, clock))
        if models.model_info(model_name).family == "dim":
            row["scan_backend"] = models.scan_backend()
    else:
        if probe:
            row.update({k: v for k, v in probe_backends(forward).items() if k != "custom_ops"})
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        ms = timed_passes(forward, clock, args.warmup, args.repeats)
        row.update(_stats(ms, batch))
        if device.type == "cuda":
            row["peak_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        if share and models.model_info(model_name).family == "dim":
            row.update(scan_share(forward, clock, args.repeats))
    return row


def compiled_timing(model, x, t, y, eager_forward, args, device, clock) -> dict:
    import torch._dynamo

    dtype = getattr(torch, args.dtype)
    eager_ms = timed_passes(eager_forward, clock, args.warmup, args.repeats)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    backend = args.compile_backend
    compiled = torch.compile(model, backend=backend) if backend != "inductor" else \
        torch.compile(model, mode=args.compile_mode)

    def forward():
        with torch.no_grad(), autocast_context(device, dtype):
            return compiled(x, t, y)

    t0 = time.perf_counter()
    forward()
    synchronize(device)
    compile_s = time.perf_counter() - t0
    breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    ms = timed_passes(forward, clock, max(args.warmup, 1), args.repeats)
    out = _stats(ms, x.shape[0])
    out.update({"compile_backend": backend, "compile_mode": args.compile_mode if backend == "inductor" else None,
                "compile_first_call_s": compile_s, "graph_breaks": breaks,
                "eager_median_ms": statistics.median(eager_ms),
                "speedup_vs_eager": statistics.median(eager_ms) / out["median_ms"]})
    return out


def _stats(ms: list[float], batch: int) -> dict:
    med = statistics.median(ms)
    return {"median_ms": med, "min_ms": min(ms), "max_ms": max(ms), "repeats": len(ms),
            "img_per_s": batch / (med * 1e-3), "samples_ms": ms}


def describe(row: dict, args, tiny: bool) -> str:
    head = f"{row['model']} {row['resolution']}px b{row['batch']}{' TINY' if tiny else ''}"
    if row.get("error"):
        return f"{head}: FAILED {row['error'].splitlines()[0][:180]}"
    text = f"{head}: {row['img_per_s']:.2f} img/s ({row['median_ms']:.1f} ms"
    if args.mode == "compiled":
        text += (f", eager {row['eager_median_ms']:.1f} ms, x{row['speedup_vs_eager']:.2f}; compile "
                 f"{row['compile_first_call_s']:.0f} s, {row['graph_breaks']} graph breaks")
    elif row.get("peak_allocated_gib") is not None:
        text += f", peak {row['peak_allocated_gib']:.1f} GiB"
    backends = [f"scan {row['scan_backend']}" if row.get("scan_backend") else "",
                f"attn {row['attention_backend']}" if row.get("attention_backend") not in (None, "none") else ""]
    backends = ", ".join(b for b in backends if b)
    return text + (f"; {backends})" if backends else ")")


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    phase = args.phase or ("4 eager models" if args.mode == "eager" else "5 compiled pair")
    summary = Summary(args.summary, phase)
    if device.type == "cuda" and not torch.cuda.is_available():
        summary.record("skipped: needs a CUDA GPU (torch.cuda.is_available() is False)", skipped=True)
        return 2
    tiny = device.type != "cuda"
    chosen = TINY[args.mode] if tiny else DEFAULTS[args.mode]
    model_names = (args.models or chosen["models"]).split(",")
    points = [tuple(int(v) for v in p.split(":")) for p in (args.points or chosen["points"]).split(",")]
    args.dtype = args.dtype or ("float32" if tiny else "bfloat16")
    args.compile_backend = args.compile_backend or ("aot_eager" if tiny else "inductor")
    clock = Clock(device)
    t0 = time.time()
    record = {"mode": args.mode, "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "dtype": args.dtype, "tiny": tiny, "warmup": args.warmup,
              "repeats": args.repeats, "rows": []}
    probed: set[str] = set()
    for i, (resolution, batch) in enumerate(points):
        for name in model_names:
            if args.deadline_s is not None and time.time() - t0 > args.deadline_s:
                summary.record(f"stopped: past the {args.deadline_s:.0f} s deadline, before {name} {resolution}px",
                               stopped=True)
                return 0
            try:
                row = measure_point(name, resolution, batch, args, device, clock, probe=name not in probed,
                                    share=i == 0 and not args.no_scan_share)
                probed.add(name)
            except Exception as exc:  # an OOM or a failure of one point: its row, then the next point
                row = {"model": name, "resolution": resolution, "batch": batch, "dtype": args.dtype,
                       "error": f"{type(exc).__name__}: {str(exc).strip()[:600]}"}
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            record["rows"].append(row)
            if args.json:
                write_json_atomic(args.json, record)
            summary.record(describe(row, args, tiny), **{k: v for k, v in row.items() if k != "samples_ms"})
            if row.get("scan_share") is not None:
                summary.record(f"{name} {resolution}px b{batch}: the scan is {100 * row['scan_share']:.1f}% of the "
                               f"forward ({row['scan_calls']} calls, {row['scan_ms']:.1f} of {row['forward_ms']:.1f}"
                               f" ms, {row['scan_ms_per_call']:.3f} ms per call, {row['scan_backend']} chosen by "
                               f"{row['scan_backend_chosen_by']})",
                               **{k: row[k] for k in ("model", "resolution", "batch", "scan_share", "scan_ms",
                                                      "forward_ms", "scan_calls", "scan_backend",
                                                      "scan_backend_chosen_by")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
