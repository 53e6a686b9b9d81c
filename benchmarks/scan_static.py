"""Static efficiency of the Triton selective-scan kernels, measured without a GPU.

    python benchmarks/scan_static.py [--json FILE] [--dtypes bf16,fp32] [--backends triton,conv,triton_v1]
                                     [--check] [--summary OUT [--phase NAME]]

Compiles every kernel the ``triton`` backend launches (``models.scan.triton_fused``: forward, backward, and the
backward's deterministic variant), the fused causal conv1d + SiLU that DiM runs beside it on CUDA (``conv``:
``models.scan.conv``), and, for comparison, the kernels of ``triton_v1`` (``models.scan.triton_backend``), for an
H100/H200 (sm_90: ``GPUTarget("cuda", 90, 32)``, the last argument the warp size) with the signatures a call at
DiM-H/2's shapes makes (batch 1, d_inner 3072, L = 9806 at 1536 px, N 16; u, Δ, z, B, C laid out as
``models/dim.py`` hands them: z a view of in_proj's product, B and C slices of x_proj's, the conv's input a view
of in_proj's product too), in bfloat16 and float32, with whatever Triton is installed (the GPU machines have 3.6,
this project 3.8: phase 1 of ``scripts/gpu_check.sh`` runs it there), and prints per kernel:

- registers per thread, spills (STL/LDL instructions in the SASS, and the stack frame in bytes), shared memory;
- MUFU (special-function unit) operations and SASS instructions per element of (channel, step, state) in the
  steady-state loop (for the conv, whose kernel has no loop, per element of (channel, step) over the whole kernel:
  each instruction runs once per program), and a modelled time at 1536 px, batch 1, on an H100 against the bound.

Each kernel is guarded: one that does not compile, or whose SASS cannot be read as the method below expects, is a
row with its ``error`` (the resources it has, if it compiled) and the others go on; ``--json`` is rewritten after
every kernel, and ``--summary OUT`` appends each kernel's row to OUT/summary.jsonl as it is done and one short line
per (backend, dtype) to OUT/summary.txt (``benchmarks/gpu_report.py``). Exit status 1 if a kernel failed (or, with
``--check``, a target was missed), 2 for a bad argument.

The JSON: ``{"triton_version", "target", "shape", "hardware_model", "targets", "kernels": [row, ...], "per_scan",
"bounds", "targets_missed", "method"}``, a row ``{"backend", "phase", "kernel", "dtype", "element", "registers",
"spill_instructions", "stack_bytes", "shared_bytes", "warps", "programs", "coverage", "compile_s",
"instructions_per_element", "mufu_per_element", "modelled_us", "limited_by", ..., "error"}`` (None where not
known).

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
import math
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import torch  # noqa: E402
from gpu_report import Summary, write_json_atomic  # noqa: E402

H100 = {"sms": 132, "clock_ghz": 1.98, "thread_instructions_per_clock_per_sm": 128, "mufu_per_clock_per_sm": 16,
        "bandwidth_tb_s": 3.35, "bandwidth_model_tb_s": 3.0, "l2_bandwidth_model_tb_s": 5.5,
        "registers_per_sm": 65536, "max_warps_per_sm": 64}
#: DiM-H/2 at 1536 px (latent 192, patches 96 x 96 + pad tokens), batch 1
SHAPE = {"model": "dim_h_2", "resolution_px": 1536, "batch": 1, "d_inner": 3072, "L": 9806, "N": 16,
         "dt_rank": 96, "layers": 49}
TARGETS = {"forward_instructions": 16.0, "forward_mufu": 1.25, "backward_instructions": 60.0}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
#: what --backends may name; the scan backends are the ones whose kernels sum to a scan's cost ("per_scan").
BACKENDS = ("triton", "conv", "triton_v1")
SCAN_BACKENDS = ("triton", "triton_v1")


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
    elements: float | None = None   # the elements it covers, if not the scan's (batch·d_inner·L·N · coverage)
    straight: bool = False          # no loop: the whole kernel, each instruction once per program
    element: str = "(channel, step, state)"


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


def conv_cases(dtype_name: str) -> list[Case]:
    """The fused causal conv1d + SiLU as ``conv.launch`` calls it in a DiM block at DiM-H's shapes: x a view of
    in_proj's (2·d_inner, b, L) product, the float32 (d_inner, KW) weight and bias, out contiguous in x's dtype."""
    from models.dim import D_CONV
    from models.scan import conv

    dtype = DTYPES[dtype_name]
    b, d, L = SHAPE["batch"], SHAPE["d_inner"], SHAPE["L"]
    x = torch.empty(2 * d, b, L, dtype=dtype, device="meta").transpose(0, 1)[:, :d]
    w, bias = torch.empty(d, D_CONV, device="meta"), torch.empty(d, device="meta")
    out = torch.empty(b, d, L, dtype=dtype, device="meta")
    warps = conv.NUM_WARPS
    programs = b * -(-d // conv.BLOCK_C) * -(-L // conv.BLOCK_T)
    return [Case("conv", "forward", "conv_silu_kernel", dtype_name, conv._kernels().conv_silu_kernel,
                 (x, w, bias, out, *x.stride(), d, L),
                 dict(KW=D_CONV, HAS_BIAS=True, BC=conv.BLOCK_C, BT=conv.BLOCK_T, num_warps=warps),
                 programs, conv.BLOCK_C * conv.BLOCK_T // (32 * warps), 1, straight=True, elements=b * d * L,
                 element="(channel, step)", dram_bytes=big_bytes(dtype, 2))]


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
    if case.straight:
        looping = [lp for lp in all_loops if count(*lp, mufu)]
        if looping:
            raise RuntimeError(f"{case.label}: {len(looping)} loop(s) with MUFU instructions in a kernel expected "
                               "to have none: the counts would be wrong")
        e = case.elements_per_iteration
        return {"instructions_per_element": len(rows) / e, "mufu_per_element": count(0, math.inf, mufu) / e,
                "loops": 0, "nested_loops": 0}
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
    E = elements() * case.coverage if case.elements is None else case.elements
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
    """One kernel's row. A failure at any step (compiling, reading the cubin, reading the SASS as the method
    expects) is the row's ``error``, naming the step; what was read before it stays (None where not known)."""
    from models.scan import triton_runtime

    row = {"backend": case.backend, "phase": case.phase, "kernel": case.label, "dtype": case.dtype,
           "element": case.element, "registers": None, "spill_instructions": None, "stack_bytes": None,
           "shared_bytes": None, "warps": case.kwargs.get("num_warps"), "programs": case.programs,
           "coverage": case.coverage, "instructions_per_element": None, "mufu_per_element": None,
           "modelled_us": None, "error": None}
    t0 = time.perf_counter()
    step = "does not compile for sm_90"
    try:
        compiled = triton_runtime.compile_for_gpu(case.fn, case.args, case.kwargs)
        step = "its cubin could not be read"
        sass, res = triton_runtime.sass_and_resources(compiled)
        rows = instructions(sass)
        row.update(registers=res.get("REG"), spill_instructions=sum(1 for _, op, _ in rows if op in ("STL", "LDL")),
                   stack_bytes=res.get("STACK", 0), shared_bytes=compiled.metadata.shared)
        step = "its SASS was not analysed"
        stats = steady_state(rows, case)
        row.update(**stats, **modelled_us(case, stats))
    except Exception as exc:  # this kernel's failure is its row; the others still compile
        row["error"] = f"{step}: {type(exc).__name__}: {str(exc).strip()[-800:]}"
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def totals(rows: list[dict]) -> list[dict]:
    """Per scan backend, dtype and phase: the elements-weighted sums of the kernels (what one scan costs); a
    total missing a kernel that failed names it in ``incomplete``."""
    out = {}
    for r in rows:
        if r["backend"] not in SCAN_BACKENDS or r["kernel"].endswith("[deterministic]") or r["phase"] is None:
            continue
        key = (r["backend"], r["dtype"], r["phase"])
        t = out.setdefault(key, {"backend": key[0], "dtype": key[1], "phase": key[2], "instructions_per_element": 0.0,
                                 "mufu_per_element": 0.0, "modelled_us": 0.0, "spill_instructions": 0,
                                 "incomplete": []})
        if r["modelled_us"] is None:
            t["incomplete"].append(r["kernel"])
            continue
        share = r.get("coverage", 1.0)
        t["instructions_per_element"] += r["instructions_per_element"] * share
        t["mufu_per_element"] += r["mufu_per_element"] * share
        t["modelled_us"] += r["modelled_us"]
        t["spill_instructions"] += r["spill_instructions"]
    for t in out.values():
        b = bounds(DTYPES[t["dtype"]])
        t["bound_us"] = b[f"{t['phase']}_bound_us"]
        t["percent_of_bound"] = 100 * t["bound_us"] / t["modelled_us"] if t["modelled_us"] else None
    return list(out.values())


def check(rows: list[dict], summary: list[dict]) -> list[str]:
    """The targets the ``triton`` backend misses (with the conv beside it: no spills, every kernel compiled)."""
    misses = []
    for r in summary:
        if r["backend"] != "triton":
            continue
        i, m = r["instructions_per_element"], r["mufu_per_element"]
        if r["incomplete"]:
            misses.append(f"{r['phase']} {r['dtype']}: not measured ({', '.join(r['incomplete'])} failed)")
        elif r["phase"] == "forward" and (i > TARGETS["forward_instructions"] or m > TARGETS["forward_mufu"]):
            misses.append(f"forward {r['dtype']}: {i:.1f} instructions, {m:.3f} MUFU per element")
        elif r["phase"] == "backward" and i > TARGETS["backward_instructions"]:
            misses.append(f"backward {r['dtype']}: {i:.1f} instructions per element")
    for r in rows:
        if r["backend"] in ("triton", "conv") and r["spill_instructions"]:
            misses.append(f"{r['kernel']} {r['dtype']}: {r['spill_instructions']} spill instructions")
        if r["backend"] in ("triton", "conv") and r["error"]:
            misses.append(f"{r['kernel']} {r['dtype']}: {r['error'].splitlines()[0][:160]}")
    return misses


def document(rows: list[dict], dtypes: list[str], version: str) -> dict:
    """The JSON (see the module docstring), as it stands after the rows so far."""
    per_scan = totals(rows)
    return {"triton_version": version, "target": "sm_90 (GPUTarget('cuda', 90, 32))", "shape": SHAPE,
            "hardware_model": H100, "targets": TARGETS, "kernels": rows, "per_scan": per_scan,
            "bounds": {d: bounds(DTYPES[d]) for d in dtypes}, "targets_missed": check(rows, per_scan),
            "method": "static SASS counts of the steady-state loops; modelled, not measured (see docstring)"}


SHORT = {"forward": "fwd", "backward": "bwd"}


def _num(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def group_line(version: str, backend: str, dtype: str, group: list[dict]) -> str:
    """One short summary line for a backend's kernels in one dtype (the detail is in the JSON)."""
    head = f"{backend} {dtype} (Triton {version}, sm_90):"
    done = [r for r in group if r["registers"] is not None]
    parts = []
    if done:
        regs = sorted(r["registers"] for r in done)
        spills = sum(r["spill_instructions"] for r in done)
        span = f"{regs[0]}" if regs[0] == regs[-1] else f"{regs[0]}-{regs[-1]}"
        parts.append(f"{len(done)} kernel{'s' * (len(done) > 1)} {span} regs, {spills} spill "
                     f"instructions{' <- SPILLS' if spills else ''}, smem <= {max(r['shared_bytes'] for r in done)} B")
    if backend in SCAN_BACKENDS:
        for t in totals(group):
            if not t["incomplete"]:
                parts.append(f"{SHORT[t['phase']]} {t['instructions_per_element']:.2f} SASS + "
                             f"{t['mufu_per_element']:.3f} MUFU /el, {t['modelled_us']:.0f} us")
    else:
        parts += [f"{r['instructions_per_element']:.2f} SASS + {r['mufu_per_element']:.3f} MUFU per {r['element']},"
                  f" {r['modelled_us']:.0f} us" for r in group if r["modelled_us"] is not None]
    failed = [r for r in group if r["error"]]
    if failed:
        parts.append("FAILED: " + "; ".join(f"{r['kernel']} ({r['error'].splitlines()[0][:140]})" for r in failed))
    return f"{head} {'; '.join(parts)}"


BUILDERS = {"triton": fused_cases, "conv": conv_cases, "triton_v1": v1_cases}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="FILE", help="also write the table, totals, bounds and model as JSON "
                        "(rewritten after every kernel)")
    parser.add_argument("--dtypes", default="bf16,fp32", help="comma-separated, of bf16, fp32 (default both)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated, of triton, conv (the fused "
                        "conv1d + SiLU), triton_v1 (default all)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the triton backend misses a target")
    parser.add_argument("--summary", metavar="OUT", help="append each kernel's row to OUT/summary.jsonl and one line "
                        "per backend and dtype to OUT/summary.txt")
    parser.add_argument("--phase", default="1 compile check", help="the phase name of those lines")
    args = parser.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [d for d in dtypes if d not in DTYPES] + [b for b in backends if b not in BACKENDS]
    if bad or not dtypes or not backends:
        print(f"scan_static.py: unknown or missing dtype or backend {bad}; expected dtypes {', '.join(DTYPES)}, "
              f"backends {', '.join(BACKENDS)}", file=sys.stderr)
        return 2
    summary = Summary(args.summary, args.phase)
    import triton

    from models.scan import triton_runtime

    if triton_runtime.interpreted():
        print("scan_static.py: triton was imported as the interpreter; unset TRITON_INTERPRET", file=sys.stderr)
        return 2
    version = triton.__version__
    print(f"Triton {version}, sm_90; DiM-H/2 at {SHAPE['resolution_px']} px, batch {SHAPE['batch']}: "
          f"d_inner {SHAPE['d_inner']}, L {SHAPE['L']}, N {SHAPE['N']} (static SASS counts, modelled H100 times)",
          flush=True)
    rows: list[dict] = []
    for backend in [b for b in BACKENDS if b in backends]:     # the triton backend's kernels first
        for dtype in dtypes:
            try:
                cases = BUILDERS[backend](dtype)
            except Exception as exc:  # the launches themselves could not be built: one row says why
                rows.append({"backend": backend, "phase": None, "kernel": "(launches)", "dtype": dtype,
                             "registers": None, "modelled_us": None, "spill_instructions": None,
                             "error": f"the launches could not be built: {type(exc).__name__}: {str(exc)[:600]}"})
                group = rows[-1:]
            else:
                group = []
                for case in cases:
                    row = analyse(case)
                    group.append(row)
                    rows.append(row)
                    if args.json:
                        write_json_atomic(args.json, document(rows, dtypes, version))
                    summary.record(f"{row['backend']} {row['kernel']} {row['dtype']}: "
                                   + (f"FAILED {row['error'][:200]}" if row["error"] else
                                      f"{row['registers']} regs, {row['spill_instructions']} spills"),
                                   in_txt=False, triton=version, direction=row["phase"],
                                   **{k: v for k, v in row.items() if k != "phase"})
            summary.record(group_line(version, backend, dtype, group), triton=version, backend=backend, dtype=dtype,
                           group=True)
    doc = document(rows, dtypes, version)
    if args.json:
        write_json_atomic(args.json, doc)
    print_table(rows, doc)
    misses = doc["targets_missed"]
    if "triton" in backends:
        summary.record("targets (triton: forward <= 16 SASS and <= 1.25 MUFU per element, backward <= 60, no "
                       "spills): " + ("met" if not misses else "MISSED: " + "; ".join(misses)), targets_missed=misses)
    failed = [r for r in rows if r["error"]]
    return 1 if failed or (args.check and misses) else 0


def print_table(rows: list[dict], doc: dict) -> None:
    head = (f"{'backend':10} {'phase':8} {'kernel':30} {'dtype':5} {'regs':>4} {'spill':>5} {'smem':>6} "
            f"{'MUFU/el':>7} {'SASS/el':>7} {'progs':>6} {'model us':>8} limit")
    print(head)
    for r in rows:
        print(f"{r['backend']:10} {str(r['phase']):8} {r['kernel']:30} {r['dtype']:5} {_num(r['registers'], '>4')} "
              f"{_num(r['spill_instructions'], '>5')} {_num(r.get('shared_bytes'), '>6')} "
              f"{_num(r.get('mufu_per_element'), '>7.3f')} {_num(r.get('instructions_per_element'), '>7.2f')} "
              f"{_num(r.get('programs'), '>6')} {_num(r['modelled_us'], '>8.1f')} {r.get('limited_by', '')}"
              + (f"  FAILED: {r['error'].splitlines()[0][:100]}" if r["error"] else ""))
    print("\nper scan (kernels summed, elements-weighted):")
    for t in doc["per_scan"]:
        if t["incomplete"]:
            print(f"  {t['backend']:10} {t['phase']:8} {t['dtype']:5} incomplete: {', '.join(t['incomplete'])} failed")
            continue
        print(f"  {t['backend']:10} {t['phase']:8} {t['dtype']:5} {t['instructions_per_element']:6.2f} SASS/el "
              f"{t['mufu_per_element']:6.3f} MUFU/el  modelled {t['modelled_us']:7.1f} us, bound {t['bound_us']:6.1f} "
              f"us ({t['percent_of_bound']:.0f} % of it)")
    for t in doc["per_scan"]:
        if t["backend"] == "triton" and t["phase"] == "forward" and not t["incomplete"]:
            print(f"  triton forward, {t['dtype']}: {t['modelled_us']:.1f} us per layer, "
                  f"{SHAPE['layers'] * t['modelled_us'] / 1000:.2f} ms per DiM-H/2 forward ({SHAPE['layers']} scans)")
    if not any(r["backend"] == "triton" for r in rows):
        return
    misses = doc["targets_missed"]
    print("targets (forward <= 16 SASS and <= 1.25 MUFU per element, backward <= 60, no spills): "
          + ("met" if not misses else "MISSED: " + "; ".join(misses)))


if __name__ == "__main__":
    sys.exit(main())
