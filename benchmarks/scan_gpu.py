"""GPU microbenchmark of the selective scan at DiM-H's shapes, against the card's measured limits.

    python benchmarks/scan_gpu.py --out scan_gpu.json [--sweep]

Shapes: d_inner 3072, N 16, batch 1 (``--batch``), L = 366, 1230, 4494, 9806 (DiM-H/2 at 256, 512, 1024, 1536 px),
u, Δ, z, B, C in bfloat16 (``--dtype``), A = DiM's initial -[1..16], D and Δ-bias float32, softplus on.

Timing (the method of the device library's METHOD.md): CUDA events around each call, the L2 flushed before each
repeat by writing a 512 MiB buffer, the median over repeats after warm-up; every backend is called directly
(forward without autograd; backward: the backend's analytic backward, or autograd of a retained graph for
mamba-ssm), so the op's dispatch is not timed.

Bounds, per direction: bytes the scan must move (forward: u, Δ, z, y of batch·d_inner·L elements each and B, C
of batch·N·L; backward: those plus dy, du, dΔ, dz of batch·d_inner·L and dB, dC of batch·N·L; all in the input
dtype) over the card's measured copy bandwidth (a 2 GiB device-to-device copy, bytes read plus written, timed the
same way); and batch·L·d_inner·N exponentials over the measured exp2 rate (a Triton kernel doing 64 dependent
exp2 per element on 4 independent chains, 2**24 elements). The tighter bound is the larger of the two times;
"% of bound" is that time over the measured one. Backends: triton, chunked (fewer repeats: it is slow) and
mamba_ssm when it imports. ``--sweep`` also times the triton forward at several chunk sizes and the backward at
several chunk sizes and programs per multiprocessor (what ``models/scan/triton_backend.py``'s defaults should be
set from). Prints a table last; writes every number to ``--out``. Without CUDA: one line, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from models.scan.triton_backend import default_chunk_size  # noqa: E402

D_INNER, N = 3072, 16
LENGTHS = (366, 1230, 4494, 9806)
FLUSH_BYTES = 512 << 20


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--d-inner", type=int, default=D_INNER)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--chunked-repeats", type=int, default=3, help="repeats for the slow chunked backend")
    p.add_argument("--no-chunked", action="store_true")
    p.add_argument("--sweep", action="store_true", help="also sweep the triton chunk sizes / programs")
    return p.parse_args(argv)


class Timer:
    """Median milliseconds of ``fn()`` by CUDA events, the L2 flushed before every repeat."""

    def __init__(self):
        self.flush = torch.empty(FLUSH_BYTES // 4, dtype=torch.float32, device="cuda")

    def __call__(self, fn, repeats: int, warmup: int) -> dict:
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        for s, e in zip(starts, ends, strict=True):
            self.flush.fill_(1.0)          # evicts the inputs from the L2 (60 MB on an H200)
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize()           # raises here if a kernel failed
        ms = sorted(s.elapsed_time(e) for s, e in zip(starts, ends, strict=True))
        return {"median_ms": statistics.median(ms), "p10_ms": ms[len(ms) // 10], "p90_ms": ms[(9 * len(ms)) // 10],
                "repeats": repeats}


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


def make_inputs(batch, d_inner, L, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, device="cuda", generator=g)

    return dict(
        u=randn(batch, d_inner, L).to(dtype),
        delta=(randn(batch, d_inner, L) * 0.5 - 2.0).to(dtype),      # softplus(·) ≈ 0.13: DiM's Δ range
        A=-torch.arange(1, N + 1, device="cuda", dtype=torch.float32).repeat(d_inner, 1),
        B=randn(batch, N, L).to(dtype),
        C=randn(batch, N, L).to(dtype),
        D=torch.ones(d_inner, device="cuda"),
        z=randn(batch, d_inner, L).to(dtype),
        delta_bias=randn(d_inner) * 0.1,
    )


def scan_bytes(batch, d_inner, L, elt) -> dict:
    """Bytes the scan must move, as issue 11 defines them. The backward's count includes y (the issue's "those"),
    which the kernel's backward neither reads nor writes: its % of the memory bound is about 12 % optimistic."""
    big, small = batch * d_inner * L * elt, batch * N * L * elt
    fwd = 4 * big + 2 * small                   # u, Δ, z, y; B, C
    return {"forward": fwd, "backward": fwd + 4 * big + 2 * small}   # + dy, du, dΔ, dz; dB, dC


def exps_executed(batch, d_inner, L, chunks: int) -> dict:
    """Exponentials the triton kernel actually evaluates per (b, t, d, n): the forward computes each decay twice
    when it chunks (K > 1: the chunk summary and the output pass), the backward three times (boundary states of the
    forward and adjoint recurrences, the chunk's states, the adjoint steps). The exp bound counts one."""
    once = batch * L * d_inner * N
    return {"forward": once * (2 if chunks > 1 else 1), "backward": 3 * once}


def backends():
    from models.scan.chunked import chunked_scan, chunked_scan_backward
    from models.scan.mamba_ssm_backend import mamba_ssm_scan, mamba_ssm_status
    from models.scan.triton_backend import triton_scan, triton_scan_backward, triton_status

    out = {}
    ok, reason = triton_status("cuda")
    out["triton"] = (triton_scan, triton_scan_backward) if ok else reason
    out["chunked"] = (chunked_scan, chunked_scan_backward)
    ok, reason = mamba_ssm_status("cuda")
    out["mamba_ssm"] = (mamba_ssm_scan, None) if ok else reason
    return out


def time_backend(timer, fwd, bwd, inputs, repeats, warmup) -> dict:
    args = list(inputs.values())
    with torch.no_grad():
        out = fwd(*args, True)
    go = torch.randn_like(out)
    res = {"forward": timer(lambda: fwd(*args, True), repeats, warmup)}
    if bwd is not None:
        with torch.no_grad():
            res["backward"] = timer(lambda: bwd(go, *args, True, (True,) * 8), repeats, warmup)
    else:   # no analytic backward (mamba_ssm): autograd of a retained graph, backward alone
        leaves = [t.detach().requires_grad_() for t in args]
        y = fwd(*leaves, True)
        res["backward"] = timer(lambda: torch.autograd.grad(y, leaves, go, retain_graph=True), repeats, warmup)
    return res, out


def rel_err(x, ref) -> float:
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("scan_gpu: needs a CUDA GPU (torch.cuda.is_available() is False); nothing measured", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    elt = torch.empty((), dtype=dtype).element_size()
    lengths = [int(x) for x in args.lengths.split(",") if x]
    timer = Timer()
    t0 = time.time()
    bw = copy_bandwidth(timer)
    rate = exp_rate(timer)
    impls = backends()
    record = {
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "python": platform.python_version(),
        "triton": _version("triton"), "mamba_ssm": _version("mamba_ssm"),
        "config": {"batch": args.batch, "d_inner": args.d_inner, "N": N, "dtype": args.dtype,
                   "lengths": lengths, "repeats": args.repeats, "warmup": args.warmup,
                   "chunked_repeats": args.chunked_repeats, "flush_bytes": FLUSH_BYTES},
        "copy_bandwidth_bytes_per_s": bw, "exp2_per_s": rate,
        "unavailable": {k: v for k, v in impls.items() if isinstance(v, str)},
        "rows": [], "sweep": [],
    }
    for L in lengths:
        inputs = make_inputs(args.batch, args.d_inner, L, dtype, seed=L)
        nbytes = scan_bytes(args.batch, args.d_inner, L, elt)
        exps = args.batch * L * args.d_inner * N
        outs = {}
        for name, impl in impls.items():
            if isinstance(impl, str) or (name == "chunked" and args.no_chunked):
                continue
            reps = args.chunked_repeats if name == "chunked" else args.repeats
            res, outs[name] = time_backend(timer, *impl, inputs, reps, min(args.warmup, reps))
            for direction, t in res.items():
                mem_ms, exp_ms = nbytes[direction] / bw * 1e3, exps / rate * 1e3
                bound_ms = max(mem_ms, exp_ms)
                executed = (exps_executed(args.batch, args.d_inner, L,
                                          -(-L // default_chunk_size(args.batch, args.d_inner, L)))[direction]
                            if name == "triton" else None)
                record["rows"].append({
                    "L": L, "backend": name, "direction": direction, **t, "bytes": nbytes[direction],
                    "bytes_definition": "issue 11's: u, Δ, z, y, B, C (+ dy, du, dΔ, dz, dB, dC backward)",
                    "exps": exps, "exps_executed": executed, "memory_bound_ms": mem_ms, "exp_bound_ms": exp_ms,
                    "binds": "memory" if mem_ms >= exp_ms else "exp", "pct_of_bound": 100 * bound_ms / t["median_ms"],
                    "achieved_bytes_per_s": nbytes[direction] / (t["median_ms"] * 1e-3),
                })
        if "triton" in outs and "chunked" in outs:
            record.setdefault("triton_vs_chunked_rel_err", {})[L] = rel_err(outs["triton"], outs["chunked"])
        if args.sweep and "triton" in outs:
            record["sweep"] += sweep(timer, inputs, args)
        del inputs, outs
        torch.cuda.empty_cache()
    record["seconds"] = time.time() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1))
    print_table(record)
    return 0


def sweep(timer, inputs, args) -> list[dict]:
    """Triton forward by chunk size; backward by chunk size and persistent programs per multiprocessor."""
    from models.scan import triton_backend as tb

    L = inputs["u"].shape[-1]
    a = list(inputs.values())
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
    print(f"\nscan_gpu on {rec['device']} (torch {rec['torch']}, triton {rec['triton']}); batch "
          f"{rec['config']['batch']}, d_inner {rec['config']['d_inner']}, N {N}, {rec['config']['dtype']}")
    print(f"measured copy bandwidth {rec['copy_bandwidth_bytes_per_s'] / 1e12:.2f} TB/s (read + write); "
          f"exp2 rate {rec['exp2_per_s'] / 1e12:.2f} T/s")
    for name, reason in rec["unavailable"].items():
        print(f"{name}: not measured ({reason})")
    if rec["sweep"]:
        print("\nsweep (triton): L, direction, chunk, programs/SM, median ms")
        for r in rec["sweep"]:
            print(f"  {r['L']:>5} {r['direction']:<8} T={r['chunk']:<5} {r.get('programs_per_sm', ''):>3} "
                  f"{r['median_ms']:9.3f}")
    print(f"\n{'L':>5}  {'backend':<10}{'dir':<9}{'median ms':>10}{'GB/s':>8}{'mem ms':>8}{'exp ms':>8}"
          f"{'binds':>7}{'% bound':>8}")
    for r in rec["rows"]:
        print(f"{r['L']:>5}  {r['backend']:<10}{r['direction']:<9}{r['median_ms']:10.3f}"
              f"{r['achieved_bytes_per_s'] / 1e9:8.0f}{r['memory_bound_ms']:8.3f}{r['exp_bound_ms']:8.3f}"
              f"{r['binds']:>7}{r['pct_of_bound']:7.1f}%")
    if rec.get("triton_vs_chunked_rel_err"):
        print("triton vs chunked forward, ‖Δ‖/‖ref‖: "
              + ", ".join(f"L={k}: {v:.1e}" for k, v in rec["triton_vs_chunked_rel_err"].items()))


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:
        return None


if __name__ == "__main__":
    sys.exit(main())
