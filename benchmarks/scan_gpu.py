"""GPU microbenchmark of every selective-scan backend side by side at DiM-H's shapes, against the card's measured
limits (phase 3 of ``scripts/gpu_check.sh``).

    python benchmarks/scan_gpu.py --out scan_gpu.json [--batches 1,32] [--lengths ...] [--summary OUT] [--sweep]

Shapes: d_inner 3072, N 16, L = 9806, 4494, 1230, 366 (DiM-H/2 at 1536, 1024, 512, 256 px; measured in that
order, batch 1 then 32), inputs in bfloat16 (``--dtype``) laid out as DiM passes them (``scan_inputs``: z, B and C
strided views; ``--contiguous`` for plain tensors), with DiM's initial A, D and Δ-bias, softplus on. Directions:
``forward``, ``backward`` (the gradients of all eight inputs) and ``both`` (one forward then its backward: a
training step's scan).

Backends: every one ``models.scan.available_backends("cuda")`` says can run (on a GPU machine ``triton``, the new
kernel, beside ``triton_v1``, its predecessor, and mamba_ssm where it imports; a kernel registered later is
measured without a change here), fused ones first; the ``reference`` recurrence is never timed (an oracle, L
sequential steps), ``chunked`` last and only at batch <= ``--slow-batch`` (1: at batch 32 and L 9806 its float32
intermediates outgrow any GPU). Each is called directly, not through the op: forward ``fn(...)`` without autograd;
backward its analytic ``backward`` when it has one, given what its forward keeps when it keeps something (the
triton backend's chunk states, made once beforehand, as the op keeps them from the forward: its backward does not
run the forward again), else autograd through a retained graph (mamba_ssm); "both" is its forward (keeping what it
keeps) then its backward; so the op's dispatch is not timed.

Timing (METHOD.md): CUDA events around each call, the L2 flushed before each repeat by writing a 512 MiB buffer,
the median over ``--repeats`` after ``--warmup`` (``--slow-repeats`` for chunked).

Bounds, per direction: bytes the scan must move over the card's measured copy bandwidth (a 2 GiB device-to-device
copy, bytes read plus written, timed the same way): forward u, Δ, z, y (batch·d_inner·L each) and B, C
(batch·N·L), backward those plus dy, du, dΔ, dz and dB, dC, both the sum, all in the input dtype; and exponentials
over the measured exp2 rate (a Triton kernel of 4 independent chains of 64 dependent exp2 per element, 2^24
elements): batch·L·d_inner·N for the forward, as many again for the backward (it must recompute the decays: saving
them would move 4 bytes each, far more), both the sum. The tighter bound is the larger of the two times; "% of
bound" is that time over the measured one. Every backend's forward output is also compared with the first
measured backend's (‖Δ‖/‖ref‖, ``agrees_with``; above 2e-2 the summary line says DISAGREES): a kernel fast
because wrong shows there.

Written as it goes: ``--out`` is rewritten (atomically) after every measurement, and with ``--summary`` each
measurement is a JSON line of SUMMARY/summary.jsonl at once, and each backend at one (batch, L) one short line of
SUMMARY/summary.txt once its three directions are done (20-odd lines, so that they fit a device call's output);
each (backend, length, batch, direction) is guarded, so an
exception or an out-of-memory is a row with its error and the rest goes on; ``--deadline-s`` stops starting new
measurements after that many seconds. Prints a table last.

``--device cpu`` is the GPU check's dry run: tiny shapes (d_inner 8, N 4, L 12, batch 1 and 2), the wall clock,
no bounds; the backends the CPU has (chunked, and triton and triton_v1 under TRITON_INTERPRET=1). Its numbers mean
nothing.
``--sweep`` also times the ``triton_v1`` kernel by chunk size and backward programs per multiprocessor.
"""

from __future__ import annotations

import argparse
import platform
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
from scan_inputs import CPU_ONLY, DIM_H, dim_scan_inputs, runnable_backends  # noqa: E402

from models.scan.registry import get_backend  # noqa: E402

#: the longest first: DiM's claim is speed at high resolution, and a deadline cuts the last ones
LENGTHS = (9806, 4494, 1230, 366)
BATCHES = (1, 32)
DIRECTIONS = ("forward", "backward", "both")
FLUSH_BYTES = 512 << 20
NOT_TIMED = {"reference": "the sequential recurrence (L steps): the oracle, not a speed backend", **CPU_ONLY}
SLOW = ("chunked",)
#: forward outputs of two backends further apart than this (‖Δ‖/‖ref‖) are flagged in the summary line; bf16 outputs
#: of correct backends differ by about 4e-3 (one rounding each).
DISAGREE = 2e-2
TINY = {"d_inner": 8, "N": 4, "rank": 4, "lengths": (12,), "batches": (1, 2)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON file to write (rewritten after every measurement)")
    p.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run at tiny shapes")
    p.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    p.add_argument("--batches", default=",".join(map(str, BATCHES)))
    p.add_argument("--d-inner", type=int, default=DIM_H["d_inner"])
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--contiguous", action="store_true", help="contiguous inputs instead of DiM's strided views")
    p.add_argument("--backends", help="comma-separated backends (default: every available one)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--slow-repeats", type=int, default=3, help="repeats for the chunked backend")
    p.add_argument("--slow-batch", type=int, default=1, help="largest batch the chunked backend is timed at")
    p.add_argument("--deadline-s", type=float, default=None, help="start no measurement after this many seconds")
    p.add_argument("--summary", help="append one line per measurement to SUMMARY/summary.{txt,jsonl}")
    p.add_argument("--phase", default="3 scan speed")
    p.add_argument("--sweep", action="store_true", help="also sweep the triton_v1 kernel's chunk sizes")
    return p.parse_args(argv)


class Timer:
    """Median milliseconds of ``fn()``: CUDA events with the L2 flushed before every repeat; the wall clock on the
    CPU (dry runs only)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.flush = torch.empty(FLUSH_BYTES // 4, dtype=torch.float32, device=device) if self.cuda else None

    def __call__(self, fn, repeats: int, warmup: int) -> dict:
        for _ in range(warmup):
            fn()
        ms = []
        if self.cuda:
            torch.cuda.synchronize()
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(repeats)]
            for s, e in events:
                self.flush.fill_(1.0)          # evicts the inputs from the L2 (50-60 MB on an H100/H200)
                s.record()
                fn()
                e.record()
            torch.cuda.synchronize()           # raises here if a kernel failed
            ms = [s.elapsed_time(e) for s, e in events]
        else:
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                ms.append((time.perf_counter() - t0) * 1e3)
        ms.sort()
        return {"median_ms": statistics.median(ms), "p10_ms": ms[len(ms) // 10], "p90_ms": ms[(9 * len(ms)) // 10],
                "repeats": repeats, "timer": "cuda events, L2 flushed" if self.cuda else "wall clock (CPU dry run)"}


def copy_bandwidth(timer: Timer) -> float:
    """Bytes per second of a 2 GiB device-to-device copy, counting bytes read plus written."""
    n = (2 << 30) // 4
    src = torch.rand(n, device="cuda")
    dst = torch.empty_like(src)
    t = timer(lambda: dst.copy_(src), repeats=10, warmup=2)
    assert torch.equal(dst[:1000], src[:1000])
    return 2 * n * 4 / (t["median_ms"] * 1e-3)


def exp_rate(timer: Timer) -> float:
    """exp2 evaluations per second: a Triton kernel with 4 independent chains of 64 dependent exp2 per element."""
    import triton
    import triton.language as tl

    @triton.jit
    def exp_kernel(x_ptr, y_ptr, ITERS: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        a = tl.load(x_ptr + offs)
        b, c, d = a + 0.25, a + 0.5, a + 0.75
        for _ in range(ITERS):               # x ← 2^-x keeps every value in (0.5, 1): no overflow, no folding
            a = tl.exp2(-a)
            b = tl.exp2(-b)
            c = tl.exp2(-c)
            d = tl.exp2(-d)
        tl.store(y_ptr + offs, a + b + c + d)

    n, iters, block = 1 << 24, 64, 1024
    x = torch.rand(n, device="cuda")
    y = torch.full_like(x, float("nan"))
    t = timer(lambda: exp_kernel[(n // block,)](x, y, ITERS=iters, BLOCK=block), repeats=10, warmup=2)
    assert torch.isfinite(y).all() and (y > 1.9).all() and (y < 4.1).all(), "exp kernel wrote wrong values"
    return n * iters * 4 / (t["median_ms"] * 1e-3)


def scan_bytes(batch, d_inner, N, L, elt) -> dict:
    """Bytes each direction must move (see the module docstring). The backward's count includes y, which an
    analytic backward need not read: its % of the memory bound is about 12 % optimistic."""
    big, small = batch * d_inner * L * elt, batch * N * L * elt
    fwd = 4 * big + 2 * small                   # u, Δ, z, y; B, C
    bwd = fwd + 4 * big + 2 * small             # + dy, du, dΔ, dz; dB, dC
    return {"forward": fwd, "backward": bwd, "both": fwd + bwd}


def scan_exps(batch, d_inner, N, L) -> dict:
    once = batch * L * d_inner * N
    return {"forward": once, "backward": once, "both": 2 * once}


def choose_backends(device: torch.device, named: str | None) -> tuple[list[str], dict[str, str]]:
    """(backends to time, fused first and the slow ones last; {backend: why not timed})."""
    timed, skipped = runnable_backends(device, named.split(",") if named else None, exclude=NOT_TIMED)
    return sorted(timed, key=lambda n: n in SLOW), skipped


def direction_fn(name: str, direction: str, inputs: dict, go: torch.Tensor):
    """A no-argument callable running one direction of backend ``name`` on ``inputs``, as the operator does: a
    backend whose forward keeps something for its backward (``triton``: the chunk states) has it made once, by its
    own forward, for the timed backward, and "both" times that forward then the backward given what it kept."""
    backend = get_backend(name)
    args = [inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]

    def forward():
        with torch.no_grad():
            return backend.fn(*args, True)

    if direction == "forward":
        return forward
    if backend.backward is not None and backend.forward_saving is not None:
        with torch.no_grad():
            saved = backend.forward_saving(*args, True)[1]

        def backward():
            with torch.no_grad():
                return backend.backward(go, *args, True, [True] * 8, saved=saved)

        def both():
            with torch.no_grad():
                out, kept = backend.forward_saving(*args, True)
                return out, backend.backward(go, *args, True, [True] * 8, saved=kept)

        return backward if direction == "backward" else both
    if backend.backward is not None:
        def backward():
            with torch.no_grad():
                return backend.backward(go, *args, True, [True] * 8)
        if direction == "backward":
            return backward
        return lambda: (forward(), backward())
    leaves = [t.detach().requires_grad_() for t in args]   # no analytic backward: autograd of the backend's graph
    if direction == "backward":
        y = backend.fn(*leaves, True)
        return lambda: torch.autograd.grad(y, leaves, go, retain_graph=True)
    return lambda: torch.autograd.grad(backend.fn(*leaves, True), leaves, go)


def rel_err(x, ref) -> float:
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    summary = Summary(args.summary, args.phase)
    if device.type == "cuda" and not torch.cuda.is_available():
        summary.record("skipped: needs a CUDA GPU (torch.cuda.is_available() is False); nothing measured",
                       skipped=True)
        return 2
    t0 = time.time()
    tiny = device.type != "cuda"
    dtype = getattr(torch, args.dtype)
    elt = torch.empty((), dtype=dtype).element_size()
    if tiny:
        shape = {k: TINY[k] for k in ("d_inner", "N", "rank")}
        lengths, batches = TINY["lengths"], TINY["batches"]
    else:
        shape = {**DIM_H, "d_inner": args.d_inner}
        lengths = [int(x) for x in args.lengths.split(",") if x]
        batches = [int(x) for x in args.batches.split(",") if x]
    d_inner, N = shape["d_inner"], shape["N"]
    timer = Timer(device)
    backends, skipped = choose_backends(device, args.backends)
    record = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (dry run: tiny shapes, no bounds)",
        "torch": torch.__version__, "python": platform.python_version(), "triton": _version("triton"),
        "mamba_ssm": _version("mamba_ssm"), "tiny": tiny,
        "config": {"batches": batches, "d_inner": d_inner, "N": N, "dtype": args.dtype, "lengths": lengths,
                   "layout": "contiguous" if args.contiguous else "DiM's (z, B, C strided views)",
                   "repeats": args.repeats, "warmup": args.warmup, "slow_repeats": args.slow_repeats,
                   "slow_batch": args.slow_batch, "flush_bytes": FLUSH_BYTES},
        "backends": backends, "unavailable": skipped, "rows": [], "sweep": [],
        "bytes_definition": "forward u, Δ, z, y, B, C; backward + dy, du, dΔ, dz, dB, dC; both the sum",
        "exps_definition": "one exp per (batch, step, channel, state) per direction; both the sum",
    }
    bw = rate = None
    if not tiny:
        try:
            bw, rate = copy_bandwidth(timer), exp_rate(timer)
            summary.record(f"measured copy bandwidth {bw / 1e12:.2f} TB/s (read + write), exp2 rate "
                           f"{rate / 1e12:.2f} T/s", copy_bandwidth_bytes_per_s=bw, exp2_per_s=rate)
        except Exception as exc:
            summary.record(f"the card's limits could not be measured ({type(exc).__name__}: {exc}); no bounds",
                           error=str(exc))
    record["copy_bandwidth_bytes_per_s"], record["exp2_per_s"] = bw, rate
    for name, reason in skipped.items():
        # (a CPU-only kernel left out of a CPU dry run: in the JSON only, the human summary is a GPU call's tail)
        summary.record(f"{name}: not timed ({reason})", in_txt=name not in CPU_ONLY, backend=name, skipped=True)
    write_json_atomic(args.out, record)

    stopped = False
    for batch in batches:
        for L in lengths:
            if stopped:
                break
            try:
                inputs, _ = dim_scan_inputs(batch, L, dtype, device, seed=L, **shape)
                if args.contiguous:
                    inputs = {k: v.contiguous() for k, v in inputs.items()}
                go = torch.randn(batch, d_inner, L, device=device).to(dtype)
            except Exception as exc:
                error = f"{type(exc).__name__}: {str(exc).strip()[:600]}"
                record["rows"].append({"L": L, "batch": batch, "backend": "(inputs)", "error": error})
                summary.record(f"b{batch} L{L}: the inputs could not be made: {error[:160]}", batch=batch, L=L,
                               error=error)
                continue
            first_out = None
            for name in backends:
                if name in SLOW and batch > args.slow_batch:
                    continue
                group = []
                for direction in DIRECTIONS:
                    if args.deadline_s is not None and time.time() - t0 > args.deadline_s:
                        summary.record(f"stopped: past the {args.deadline_s:.0f} s deadline, before {name} L={L} "
                                       f"b{batch} {direction}", stopped=True)
                        stopped = True
                        break
                    row = {"L": L, "batch": batch, "backend": name, "direction": direction, "error": None}
                    try:
                        reps = args.slow_repeats if name in SLOW else args.repeats
                        row.update(timer(direction_fn(name, direction, inputs, go), reps, min(args.warmup, reps)))
                        row.update(bounds(scan_bytes(batch, d_inner, N, L, elt)[direction],
                                          scan_exps(batch, d_inner, N, L)[direction], bw, rate, row["median_ms"]))
                        if direction == "forward":
                            out = direction_fn(name, "forward", inputs, go)()
                            if first_out is None:
                                first_out = (name, out)
                            else:
                                row["agrees_with"] = {first_out[0]: rel_err(out, first_out[1])}
                            del out
                    except Exception as exc:  # a compile error, a kernel fault, an OOM: this row, then the rest
                        row["error"] = f"{type(exc).__name__}: {str(exc).strip()[:600]}"
                    finally:
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                    _row(record, summary, args, row)
                    group.append(row)
                if group:
                    _group_line(record, summary, group)
                if stopped:
                    break
            del inputs, go, first_out
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if args.sweep and not stopped and device.type == "cuda" and "triton_v1" in backends:
        try:
            record["sweep"] = sweep(timer, max(lengths), dtype, args)
        except Exception as exc:
            record["sweep_error"] = f"{type(exc).__name__}: {exc}"
    record["seconds"] = time.time() - t0
    write_json_atomic(args.out, record)
    print_table(record)
    return 0


def bounds(nbytes: int, exps: int, bw: float | None, rate: float | None, measured_ms: float) -> dict:
    if bw is None or rate is None:
        return {"bytes": nbytes, "exps": exps, "pct_of_bound": None}
    mem_ms, exp_ms = nbytes / bw * 1e3, exps / rate * 1e3
    return {"bytes": nbytes, "exps": exps, "memory_bound_ms": mem_ms, "exp_bound_ms": exp_ms,
            "binds": "memory" if mem_ms >= exp_ms else "exp", "pct_of_bound": 100 * max(mem_ms, exp_ms) / measured_ms,
            "achieved_bytes_per_s": nbytes / (measured_ms * 1e-3)}


SHORT = {"forward": "fwd", "backward": "bwd", "both": "f+b"}


def _row(record: dict, summary: Summary, args, row: dict) -> None:
    """One measurement: into ``--out`` and a JSON line of the summary (the human line comes per group)."""
    record["rows"].append(row)
    write_json_atomic(args.out, record)
    text = f"{row['backend']} b{row['batch']} L{row['L']} {SHORT.get(row['direction'], row['direction'])}: " + (
        f"FAILED {row['error'].splitlines()[0][:160]}" if row.get("error") else f"{row['median_ms']:.3f} ms")
    summary.record(text, in_txt=False, **row)


def _group_line(record: dict, summary: Summary, rows: list[dict]) -> None:
    """One human line for a backend at one (batch, L): its directions side by side. Short on purpose: up to 20 of
    these must fit in a device call's 12,000-character output tail with every other phase's lines."""
    r0 = rows[0]
    parts = []
    for r in rows:
        d = SHORT[r["direction"]]
        if r.get("error"):
            parts.append(f"{d} FAILED {r['error'].splitlines()[0][:100]}")
        elif r.get("pct_of_bound") is None:
            parts.append(f"{d} {r['median_ms']:.3f} ms")
        else:
            parts.append(f"{d} {r['median_ms']:.3f} ms {r['pct_of_bound']:.1f}% {r['binds'][:3]}")
    text = f"{r0['backend']} b{r0['batch']} L{r0['L']}{' TINY' if record['tiny'] else ''}: " + ", ".join(parts)
    for other, err in next((r["agrees_with"] for r in rows if r.get("agrees_with")), {}).items():
        if not err <= DISAGREE:
            text += f"; forward DISAGREES with {other}: {err:.0e}"
    summary.record(text, backend=r0["backend"], batch=r0["batch"], L=r0["L"],
                   directions=[r["direction"] for r in rows], group=True)


def sweep(timer, L, dtype, args) -> list[dict]:
    """The triton_v1 kernel (its chunk sizes are parameters; the triton backend's tiles are fixed): forward by chunk
    size; backward by chunk size and programs per multiprocessor."""
    from models.scan import triton_backend as tb

    inputs, _ = dim_scan_inputs(1, L, dtype, "cuda", seed=L)
    a = [inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    go = torch.randn_like(inputs["u"])
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    with torch.no_grad():
        for T in sorted({16, 32, 64, 128, 256, 512, 1024, L}):
            if T <= L:
                t = timer(lambda T=T: tb.triton_scan(*a, True, chunk_size=T), args.repeats, args.warmup)
                rows.append({"L": L, "direction": "forward", "chunk": T, **t})
        for T in (16, 32, 64):
            for per_sm in (4, 8, 16):
                t = timer(lambda T=T, p=per_sm: tb.triton_scan_backward(go, *a, True, (True,) * 8, chunk_size=T,
                                                                        programs=p * sms), args.repeats, args.warmup)
                rows.append({"L": L, "direction": "backward", "chunk": T, "programs_per_sm": per_sm, **t})
    return rows


def print_table(rec: dict) -> None:
    c = rec["config"]
    print(f"\nscan_gpu on {rec['device']} (torch {rec['torch']}, triton {rec['triton']}); d_inner {c['d_inner']}, "
          f"N {c['N']}, {c['dtype']}, {c['layout']}")
    if rec.get("copy_bandwidth_bytes_per_s"):
        print(f"measured copy bandwidth {rec['copy_bandwidth_bytes_per_s'] / 1e12:.2f} TB/s (read + write); "
              f"exp2 rate {rec['exp2_per_s'] / 1e12:.2f} T/s")
    for name, reason in rec["unavailable"].items():
        print(f"{name}: not timed ({reason})")
    for r in rec["sweep"]:
        print(f"  sweep {r['L']:>5} {r['direction']:<8} T={r['chunk']:<5} {r.get('programs_per_sm', ''):>3} "
              f"{r['median_ms']:9.3f} ms")
    print(f"\n{'batch':>5} {'L':>5}  {'backend':<11}{'dir':<9}{'median ms':>10}{'mem ms':>8}{'exp ms':>8}"
          f"{'binds':>7}{'% bound':>8}")
    for r in rec["rows"]:
        if r.get("error"):
            print(f"{r['batch']:>5} {r['L']:>5}  {r['backend']:<11}{r['direction']:<9} FAILED: {r['error'][:60]}")
        elif r.get("pct_of_bound") is None:
            print(f"{r['batch']:>5} {r['L']:>5}  {r['backend']:<11}{r['direction']:<9}{r['median_ms']:10.3f}")
        else:
            print(f"{r['batch']:>5} {r['L']:>5}  {r['backend']:<11}{r['direction']:<9}{r['median_ms']:10.3f}"
                  f"{r['memory_bound_ms']:8.3f}{r['exp_bound_ms']:8.3f}{r['binds']:>7}{r['pct_of_bound']:7.1f}%")


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:
        return None


if __name__ == "__main__":
    sys.exit(main())
