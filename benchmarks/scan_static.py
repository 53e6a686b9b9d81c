"""Static efficiency of the Triton selective-scan kernels, measured without a GPU.

    python benchmarks/scan_static.py [--json FILE] [--dtypes bf16,fp32] [--check]

Compiles every kernel the ``triton`` backend launches (``models.scan.triton_fused``: forward, backward, and the
backward's deterministic variant) and, for comparison, those of ``triton_v1`` (``models.scan.triton_backend``),
for an H100/H200 (sm_90) with the signatures a call at DiM-H/2's shapes makes (batch 1, d_inner 3072, L = 9806 at
1536 px, N 16; u, Δ, z, B, C laid out as ``models/dim.py`` hands them: z a view of in_proj's product, B and C
slices of x_proj's), in bfloat16 and float32, and prints per kernel:

- registers per thread, spills (STL/LDL instructions in the SASS, and the stack frame in bytes), shared memory;
- MUFU (special-function unit) operations and SASS instructions per element of (channel, step, state) in the
  steady-state loop, and a modelled time at 1536 px, batch 1, on an H100 against the bound.

Method. Triton compiles each kernel (``triton_runtime.compile_for_gpu``: the launcher's own specialization
rules, so an argument equal to 1 is a constant and multiples of 16 are marked divisible, as at run time);
``cuobjdump`` (bundled with Triton) gives the SASS and the resource usage. Loops are the ranges closed by a
backward branch. The steady state is every outermost loop that holds MUFU instructions (the chunk loop; v1's
step or tile loop), each instruction counted as often as it runs per iteration of that loop: once, times the
trip count of each loop nested in it (the state loop: N; v1's step loops: T steps); the inner loops' MUFU.EX2
count per iteration is checked against the design (one per element, plus one per lane in the backward), so a
compiler that unrolls or restructures them stops the script instead of skewing it. Dividing by the elements a
thread handles per iteration gives instructions and MUFU operations per element. Static counts: branches inside
the loops are counted as taken once (the kernels have no divergent paths in the steady state but the predicated
tails).

Model of the time (H100 SXM: 132 SMs at 1.98 GHz, each issuing 4 warp instructions (128 thread instructions) and
16 MUFU operations per clock; 3.35 TB/s HBM, 3.0 TB/s taken as achievable; 5.5 TB/s from the L2, a figure
published for an H100 PCIe by microbenchmarks, to be measured): per kernel,

    t = max(I·E / (132·128·f), M·E / (132·16·f), DRAM bytes / 3.0 TB/s, L2 bytes / 5.5 TB/s) / u

E the elements it covers (batch·d_inner·L·N, times the share of chunks for v1's chunk summaries), I and M its
instructions and MUFU operations per element, DRAM bytes its compulsory traffic (each (batch, d_inner, L) tensor
it reads or writes once, v1's per-step scratch both ways), L2 bytes the B and C every program reads (once per
channel block), and u = P / (132·⌈P / 132⌉) the share of SMs busy with its P programs (equal programs,
issue-bound: an SM's time is its number of programs). Latency, occupancy
beyond that and L2 traffic are not modelled: it is a floor under the kernel's own instruction stream, not a
prediction of a measured time. The bound: the exponentials (one per element at 16 per SM per clock: 115 µs)
against the bytes any scan must move (forward: read u, Δ, z and write out; backward: read u, Δ, z, dout and
write du, dΔ, dz; at 3.35 TB/s). Per DiM-H/2 forward: 49 layers, one forward scan each.

Targets (issue 19): forward ≤ 16 instructions and ≤ 1.25 MUFU operations per element, backward ≤ 60
instructions per element, no spills; ``--check`` exits 1 if the ``triton`` backend misses one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

H100 = {"sms": 132, "clock_ghz": 1.98, "thread_instructions_per_clock_per_sm": 128, "mufu_per_clock_per_sm": 16,
        "bandwidth_tb_s": 3.35, "bandwidth_model_tb_s": 3.0, "l2_bandwidth_model_tb_s": 5.5,
        "registers_per_sm": 65536, "max_warps_per_sm": 64}
#: DiM-H/2 at 1536 px (latent 192, patches 96 x 96 + pad tokens), batch 1
SHAPE = {"model": "dim_h_2", "resolution_px": 1536, "batch": 1, "d_inner": 3072, "L": 9806, "N": 16,
         "dt_rank": 96, "layers": 49}
TARGETS = {"forward_instructions": 16.0, "forward_mufu": 1.25, "backward_instructions": 60.0}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class Case:
    """One kernel launch to compile and how to read its loops."""
    backend: str
    phase: str                 # "forward" or "backward"
    label: str
    dtype: str
    fn: object
    args: tuple
    kwargs: dict
    programs: int
    elements_per_iteration: int     # (channel, step, state) elements a thread handles per steady-state iteration
    inner_trips: int                # iterations of each loop nested in it, per iteration
    inner_ex2: tuple = ()           # MUFU.EX2 of the decays per iteration of each nested loop (checked)
    coverage: float = 1.0           # share of the scan's elements the kernel covers
    dram_bytes: float = 0.0
    l2_bytes: float = 0.0           # reads every program makes of shared data (B and C), served by the L2


def dim_inputs(dtype: torch.dtype, device="meta") -> dict:
    """The scan's inputs at DiM-H/2, 1536 px, laid out as models/dim.py's MambaMixer hands them."""
    b, d, L, N, R = SHAPE["batch"], SHAPE["d_inner"], SHAPE["L"], SHAPE["N"], SHAPE["dt_rank"]
    xz = torch.empty(2 * d, b, L, dtype=dtype, device=device).transpose(0, 1)   # in_proj's (2·d_inner, b, S)
    x_dbl = torch.empty(b, R + 2 * N, L, dtype=dtype, device=device)
    f32 = {"dtype": torch.float32, "device": device}
    return {"u": torch.empty(b, d, L, dtype=dtype, device=device),               # the conv's output
            "delta": torch.empty(b, d, L, dtype=dtype, device=device),
            "A": torch.empty(d, N, **f32), "B": x_dbl[:, R:R + N], "C": x_dbl[:, R + N:],
            "D": torch.empty(d, **f32), "z": xz[:, d:], "delta_bias": torch.empty(d, **f32)}


def big_bytes(dtype: torch.dtype, tensors: int) -> float:
    """Bytes of ``tensors`` (batch, d_inner, L) tensors of ``dtype``."""
    return tensors * SHAPE["batch"] * SHAPE["d_inner"] * SHAPE["L"] * torch.empty(0, dtype=dtype).element_size()


def fused_cases(dtype_name: str, tiles=None) -> list[Case]:
    from models.scan import triton_fused as tf

    dtype = DTYPES[dtype_name]
    inputs = dim_inputs(dtype)
    kernels = tf._kernels()
    tiles = tiles or tf.CUDA_TILES
    fwd, bwd = tf.static_launches(**inputs, delta_softplus=True, tiles=tiles)
    _, bwd_det = tf.static_launches(**inputs, delta_softplus=True, deterministic=True, tiles=tiles)
    N = SHAPE["N"]
    bc = 2 * N * tf.chunks(SHAPE["L"], tiles) * tiles.steps * 4      # one program's read of the float32 B and C
    cases = [Case("triton", "forward", "scan_fwd_kernel", dtype_name, kernels.scan_fwd_kernel, fwd.args,
                  fwd.kwargs, math.prod(fwd.grid), tiles.fwd.te * N, N, (tiles.fwd.te,),
                  dram_bytes=big_bytes(dtype, 4), l2_bytes=math.prod(fwd.grid) * bc)]
    for launch, label in ((bwd, "scan_bwd_kernel"), (bwd_det, "scan_bwd_kernel[deterministic]")):
        cases.append(Case("triton", "backward", label, dtype_name, kernels.scan_bwd_kernel, launch.args,
                          launch.kwargs, math.prod(launch.grid), tiles.bwd.te * N, N, (tiles.bwd.te + 1,),
                          dram_bytes=big_bytes(dtype, 7), l2_bytes=math.prod(launch.grid) * bc))
    return cases


def v1_cases(dtype_name: str) -> list[Case]:
    """triton_v1's kernels as its launcher calls them at DiM-H's shapes (contiguous copies of u, Δ, z, B, C)."""
    from models.scan import triton_backend as v1

    dtype = DTYPES[dtype_name]
    b, d, L, N = SHAPE["batch"], SHAPE["d_inner"], SHAPE["L"], SHAPE["N"]
    k = v1._kernels()
    big = torch.empty(b, d, L, dtype=dtype, device="meta")
    bc = torch.empty(b, N, L, dtype=dtype, device="meta")

    def f32(*shape):
        return torch.empty(*shape, dtype=torch.float32, device="meta")

    blocks, BD, BN = -(-d // v1.BLOCK_D), v1.BLOCK_D, N
    T = v1.default_chunk_size(b, d, L)
    K = -(-L // T)
    state = f32(b, K, N, d)
    flags = dict(HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, BD=BD, BN=BN, num_warps=1, num_stages=3)
    per_elem = b * d * L * N
    bc_bytes = 2 * b * N * L * torch.empty(0, dtype=dtype).element_size()   # B and C, read once per channel block
    cases = [
        Case("triton_v1", "forward", "chunk_summary_kernel", dtype_name, k.chunk_summary_kernel,
             (big, big, f32(N, d), bc, bc, big, big, f32(d), state, state, f32(b, K, d), d, L, N, T, K),
             dict(ADJOINT=False, **flags), b * blocks * (K - 1), BN, 0, coverage=(K - 1) / K,
             dram_bytes=big_bytes(dtype, 2) * (K - 1) / K, l2_bytes=blocks * bc_bytes * (K - 1) / K),
        Case("triton_v1", "forward", "carry_kernel", dtype_name, k.carry_kernel,
             (state, state, f32(b, K, d), f32(N, d), state, state, d, N, K),
             dict(ADJOINT=False, BD=BD, BN=BN, num_warps=1, num_stages=3), b * blocks, T * BN, 0),
        Case("triton_v1", "forward", "forward_kernel", dtype_name, k.forward_kernel,
             (big, big, f32(N, d), bc, bc, f32(d), big, f32(d), state, big, d, L, N, T, K),
             dict(HAS_INIT=True, HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, BD=BD, BN=BN, num_warps=1,
                  num_stages=3), b * blocks * K, BN, 0, dram_bytes=big_bytes(dtype, 4), l2_bytes=blocks * bc_bytes),
    ]
    Tb = v1.BWD_CHUNK
    Kb = -(-L // Tb)
    sb = f32(b, Kb, N, d)
    programs = H100["sms"] * v1.BWD_PROGRAMS_PER_SM
    tiles = b * blocks * Kb
    cases += [
        Case("triton_v1", "backward", "chunk_summary_kernel[adjoint]", dtype_name, k.chunk_summary_kernel,
             (big, big, f32(N, d), bc, bc, big, big, f32(d), sb, sb, f32(b, Kb, d), d, L, N, Tb, Kb),
             dict(ADJOINT=True, **flags), b * blocks * Kb, BN, 0, dram_bytes=big_bytes(dtype, 4),
             l2_bytes=blocks * bc_bytes),
        Case("triton_v1", "backward", "carry_kernel[adjoint]", dtype_name, k.carry_kernel,
             (sb, sb, f32(b, Kb, d), f32(N, d), sb, sb, d, N, Kb),
             dict(ADJOINT=True, BD=BD, BN=BN, num_warps=1, num_stages=3), b * blocks, Tb * BN, 0),
        Case("triton_v1", "backward", "backward_kernel", dtype_name, k.backward_kernel,
             (big, big, f32(N, d), bc, bc, f32(d), big, big, f32(d), sb, sb, f32(programs, Tb + 1, BN, BD),
              big, big, big, f32(N, d), f32(b, N, L), f32(b, N, L), f32(d), f32(d), d, L, N, Tb, Kb, blocks, tiles),
             dict(HAS_INIT=True, HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, BD=BD, BN=BN, num_warps=1,
                  num_stages=3), programs, Tb * BN, Tb, (BN, BN),
             # u, Δ, z, dout read and du, dΔ, dz written once; the per-step scratch written and read back
             dram_bytes=big_bytes(dtype, 7) + 2 * 4 * per_elem, l2_bytes=blocks * bc_bytes),
    ]
    return cases


# ------------------------------------------------------------------------------------------- SASS reading

_LINE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)(\.[A-Z0-9_.]+)?\b([^;]*);")


def instructions(sass: str) -> list[tuple[int, str, str]]:
    """(address, opcode, whole mnemonic and operands) per SASS instruction."""
    rows = []
    for line in sass.splitlines():
        m = _LINE.match(line)
        if m:
            rows.append((int(m.group(1), 16), m.group(2), m.group(2) + (m.group(3) or "") + m.group(4)))
    return rows


def loops(rows) -> list[tuple[int, int]]:
    """(first, last) address of every loop: the range a backward branch closes."""
    found = []
    for addr, op, text in rows:
        if op == "BRA":
            m = re.search(r"(0x[0-9a-f]+)", text)
            if m and int(m.group(1), 16) <= addr:
                found.append((int(m.group(1), 16), addr))
    return found


def steady_state(rows, case: Case) -> dict:
    """Instructions and MUFU operations per element in the steady-state loops (see the module docstring)."""
    all_loops = loops(rows)

    def inside(x, y):            # loop x strictly inside loop y
        return y[0] <= x[0] and x[1] <= y[1] and x != y

    def count(lo, hi, what=None):
        return sum(1 for a, op, text in rows if lo <= a <= hi and (what is None or what(op, text)))

    mufu = lambda op, text: op == "MUFU"            # noqa: E731
    ex2 = lambda op, text: text.startswith("MUFU.EX2")  # noqa: E731
    outer = [lp for lp in all_loops if count(*lp, mufu) and not any(inside(lp, o) for o in all_loops)]
    if not outer:
        raise RuntimeError(f"{case.label}: no loop with MUFU instructions")
    dyn = Counter()
    inner_seen = []
    for lo, hi in outer:
        children = [lp for lp in all_loops if inside(lp, (lo, hi))]
        direct = [c for c in children if not any(inside(c, o) for o in children)]
        for a, op, _ in rows:
            if lo <= a <= hi:
                trips = case.inner_trips if any(c[0] <= a <= c[1] for c in direct) else 1
                dyn["instructions"] += trips
                dyn["mufu"] += trips if op == "MUFU" else 0
        inner_seen += [count(*c, ex2) for c in direct]
    # Each nested loop iteration must hold its decays' exps once (not unrolled, not split): at least the expected
    # count, less than twice it (per-channel exps such as softplus's come on top in v1's step loops).
    expected = sorted(case.inner_ex2)
    pairs = zip(sorted(inner_seen), expected, strict=False)
    if len(inner_seen) != len(expected) or any(not e <= s < 2 * e for s, e in pairs):
        raise RuntimeError(f"{case.label}: nested loops with {inner_seen} MUFU.EX2 per iteration, expected "
                           f"{expected}: the compiler restructured the loops; the counts would be wrong")
    e = case.elements_per_iteration
    return {"instructions_per_element": dyn["instructions"] / e, "mufu_per_element": dyn["mufu"] / e,
            "loops": len(outer), "nested_loops": len(inner_seen)}


# ------------------------------------------------------------------------------------------------- model

def elements() -> int:
    return SHAPE["batch"] * SHAPE["d_inner"] * SHAPE["L"] * SHAPE["N"]


def modelled_us(case: Case, stats: dict) -> dict:
    f = H100["clock_ghz"] * 1e9
    sms = H100["sms"]
    E = elements() * case.coverage
    t_issue = stats["instructions_per_element"] * E / (sms * H100["thread_instructions_per_clock_per_sm"] * f)
    t_mufu = stats["mufu_per_element"] * E / (sms * H100["mufu_per_clock_per_sm"] * f)
    t_dram = case.dram_bytes / (H100["bandwidth_model_tb_s"] * 1e12)
    t_l2 = case.l2_bytes / (H100["l2_bandwidth_model_tb_s"] * 1e12)
    busy = case.programs / (sms * math.ceil(case.programs / sms))
    limit = max(("issue", t_issue), ("mufu", t_mufu), ("dram", t_dram), ("l2", t_l2), key=lambda x: x[1])
    return {"modelled_us": limit[1] / busy * 1e6, "limited_by": limit[0], "sm_busy": busy,
            "issue_us": t_issue * 1e6, "mufu_us": t_mufu * 1e6, "dram_us": t_dram * 1e6, "l2_us": t_l2 * 1e6,
            "dram_bytes": case.dram_bytes, "l2_bytes": case.l2_bytes}


def bounds(dtype: torch.dtype) -> dict:
    """Lower bounds on one scan at SHAPE: its exponentials, and its compulsory bytes, at H100 rates."""
    exp_us = elements() / (H100["sms"] * H100["mufu_per_clock_per_sm"] * H100["clock_ghz"] * 1e9) * 1e6
    bw = H100["bandwidth_tb_s"] * 1e12
    fwd_bytes, bwd_bytes = big_bytes(dtype, 4), big_bytes(dtype, 7)
    return {"exp_us": exp_us, "forward_bytes": fwd_bytes, "forward_bytes_us": fwd_bytes / bw * 1e6,
            "backward_bytes": bwd_bytes, "backward_bytes_us": bwd_bytes / bw * 1e6,
            "forward_bound_us": max(exp_us, fwd_bytes / bw * 1e6),
            "backward_bound_us": max(exp_us, bwd_bytes / bw * 1e6)}


# ------------------------------------------------------------------------------------------------- main

def analyse(case: Case) -> dict:
    from models.scan import triton_runtime

    compiled = triton_runtime.compile_for_gpu(case.fn, case.args, case.kwargs)
    sass, res = triton_runtime.sass_and_resources(compiled)
    rows = instructions(sass)
    spills = sum(1 for _, op, _ in rows if op in ("STL", "LDL"))
    stats = steady_state(rows, case)
    row = {"backend": case.backend, "phase": case.phase, "kernel": case.label, "dtype": case.dtype,
           "registers": res.get("REG"), "spill_instructions": spills, "stack_bytes": res.get("STACK", 0),
           "shared_bytes": compiled.metadata.shared, "warps": case.kwargs.get("num_warps"),
           "programs": case.programs, **stats, **modelled_us(case, stats)}
    return row


def totals(rows: list[dict]) -> list[dict]:
    """Per backend, dtype and phase: the elements-weighted sums of the kernels (what one scan costs)."""
    out = {}
    for r in rows:
        if r["kernel"].endswith("[deterministic]"):
            continue
        key = (r["backend"], r["dtype"], r["phase"])
        t = out.setdefault(key, {"backend": key[0], "dtype": key[1], "phase": key[2], "instructions_per_element": 0.0,
                                 "mufu_per_element": 0.0, "modelled_us": 0.0, "spill_instructions": 0})
        share = r.get("coverage", 1.0)
        t["instructions_per_element"] += r["instructions_per_element"] * share
        t["mufu_per_element"] += r["mufu_per_element"] * share
        t["modelled_us"] += r["modelled_us"]
        t["spill_instructions"] += r["spill_instructions"]
    return list(out.values())


def check(rows: list[dict], summary: list[dict]) -> list[str]:
    misses = []
    for r in summary:
        if r["backend"] != "triton":
            continue
        i, m = r["instructions_per_element"], r["mufu_per_element"]
        if r["phase"] == "forward" and (i > TARGETS["forward_instructions"] or m > TARGETS["forward_mufu"]):
            misses.append(f"forward {r['dtype']}: {i:.1f} instructions, {m:.3f} MUFU per element")
        if r["phase"] == "backward" and i > TARGETS["backward_instructions"]:
            misses.append(f"backward {r['dtype']}: {i:.1f} instructions per element")
    misses += [f"{r['kernel']} {r['dtype']}: {r['spill_instructions']} spill instructions" for r in rows
               if r["backend"] == "triton" and r["spill_instructions"]]
    return misses


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="FILE", help="also write the table, totals, bounds and model as JSON")
    parser.add_argument("--dtypes", default="bf16,fp32", help="comma-separated, of bf16, fp32 (default both)")
    parser.add_argument("--backends", default="triton,triton_v1", help="comma-separated (default both)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the triton backend misses a target")
    args = parser.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [d for d in dtypes if d not in DTYPES] + [b for b in backends if b not in ("triton", "triton_v1")]
    if bad:
        print(f"scan_static.py: unknown dtype or backend {bad}; expected dtypes {list(DTYPES)}, backends "
              "triton, triton_v1", file=sys.stderr)
        return 2
    import triton

    from models.scan import triton_runtime

    if triton_runtime.interpreted():
        print("scan_static.py: triton was imported as the interpreter; unset TRITON_INTERPRET", file=sys.stderr)
        return 2
    cases = []
    for d in dtypes:
        if "triton" in backends:
            cases += fused_cases(d)
        if "triton_v1" in backends:
            cases += v1_cases(d)
    rows = []
    for case in cases:
        row = analyse(case)
        row["coverage"] = case.coverage
        rows.append(row)
    summary = totals(rows)
    print(f"Triton {triton.__version__}, sm_90; DiM-H/2 at {SHAPE['resolution_px']} px, batch {SHAPE['batch']}: "
          f"d_inner {SHAPE['d_inner']}, L {SHAPE['L']}, N {SHAPE['N']} (static SASS counts, modelled H100 times)")
    head = (f"{'backend':10} {'phase':8} {'kernel':30} {'dtype':5} {'regs':>4} {'spill':>5} {'smem':>6} "
            f"{'MUFU/el':>7} {'SASS/el':>7} {'progs':>6} {'model us':>8} limit")
    print(head)
    for r in rows:
        print(f"{r['backend']:10} {r['phase']:8} {r['kernel']:30} {r['dtype']:5} {r['registers']:>4} "
              f"{r['spill_instructions']:>5} {r['shared_bytes']:>6} {r['mufu_per_element']:>7.3f} "
              f"{r['instructions_per_element']:>7.2f} {r['programs']:>6} {r['modelled_us']:>8.1f} "
              f"{r['limited_by']}")
    print("\nper scan (kernels summed, elements-weighted):")
    for t in summary:
        b = bounds(DTYPES[t["dtype"]])
        bound = b[f"{t['phase']}_bound_us"]
        print(f"  {t['backend']:10} {t['phase']:8} {t['dtype']:5} {t['instructions_per_element']:6.2f} SASS/el "
              f"{t['mufu_per_element']:6.3f} MUFU/el  modelled {t['modelled_us']:7.1f} us, bound {bound:6.1f} us "
              f"({100 * bound / t['modelled_us']:.0f} % of it)")
        t["bound_us"], t["percent_of_bound"] = bound, 100 * bound / t["modelled_us"]
    fwd = {t["dtype"]: t["modelled_us"] for t in summary if t["backend"] == "triton" and t["phase"] == "forward"}
    for d, us in fwd.items():
        print(f"  triton forward, {d}: {us:.1f} us per layer, {SHAPE['layers'] * us / 1000:.2f} ms per DiM-H/2 "
              f"forward ({SHAPE['layers']} scans)")
    misses = check(rows, summary)
    print("targets (forward <= 16 SASS and <= 1.25 MUFU per element, backward <= 60, no spills): "
          + ("met" if not misses else "MISSED: " + "; ".join(misses)))
    if args.json:
        doc = {"triton_version": triton.__version__, "target": "sm_90", "shape": SHAPE, "hardware_model": H100,
               "targets": TARGETS, "kernels": rows, "per_scan": summary,
               "bounds": {d: bounds(DTYPES[d]) for d in dtypes}, "targets_missed": misses,
               "method": "static SASS counts of the steady-state loops; modelled, not measured (see docstring)"}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return 1 if args.check and misses else 0


if __name__ == "__main__":
    sys.exit(main())
