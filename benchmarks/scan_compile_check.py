"""Compile every kernel the ``triton`` scan backend launches for an H100/H200 (sm_90) without a GPU, with whatever
Triton is installed, and report each one's registers, spills, stack and shared memory.

    python benchmarks/scan_compile_check.py [--json FILE] [--dtypes bf16,fp32] [--kernels FILE] [--summary OUT]

Why: the device machine has Triton 3.6, this project is developed with 3.8; a kernel 3.6 refuses, or compiles with
spills, would cost a whole device call to find out. It needs triton (and rich) alone, no torch, no GPU, so it runs
in a throwaway environment too (``python3 -m venv /tmp/t36 && /tmp/t36/bin/pip install triton==3.6.0 rich``, then
``/tmp/t36/bin/python benchmarks/scan_compile_check.py``), and as part of phase 1 of ``scripts/gpu_check.sh``.

What is compiled (``LAUNCHES``): the launches of ``models/scan/triton_backend.py`` in a DiM block, whose scan has a
D skip, a SiLU(z) gate, a Δ-bias and softplus: the forward at batch 1 (chunk summaries and carries without the
adjoint, then the output pass from the carried states) and the backward (summaries and carries with the adjoint,
then the gradient pass); num_warps 1, BD 32, BN 16 (N = 16), as the backend launches them. Signatures as at
DiM-H/2's shapes (d_inner 3072, N 16): ``bf16`` at 1536 px (L = 9806), ``fp32`` at 1024 px (L = 4494), the two
cases that the CUDA check runs in those dtypes; the big tensors (u, Δ, B, C, z and their gradients, out) in that
dtype, everything else float32. Specialisation as Triton's launcher does it: every pointer 16-byte aligned
(torch's allocations are), an integer argument divisible by 16 marked so, one equal to 1 made a constant
(``LAUNCH_INTS`` holds the integers; tests/test_gpu_check.py checks them against the backend's own).

How it is read: ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`` runs Triton's front end,
its passes and ptxas; registers, stack, local and shared memory from ``cuobjdump --dump-resource-usage`` of the
cubin Triton produced (``shared_bytes``: the cubin's figure, seen to be 1024 where Triton allocates 128; Triton's
own allocation, ``metadata.shared``, is ``triton_shared_bytes``), spill stores and loads from ``ptxas -v`` on
Triton's PTX for its own target (sm_90a), both from the CUDA tools inside the Triton wheel. Each kernel is
guarded: one that does not compile is a row with its error, and the rest go on.
``--json`` is rewritten after every kernel.

The JSON (the shape ``scripts/gpu_check.sh`` reads, and that ``benchmarks/scan_static.py`` is expected to keep):
``{"triton": version, "target": ..., "rows": [{"kernel", "launch", "dtype", "registers", "spill_store_bytes",
"spill_load_bytes", "stack_bytes", "local_bytes", "shared_bytes", "triton_shared_bytes", "compile_s", "error"},
...]}``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from gpu_report import Summary, write_json_atomic  # noqa: E402

KERNELS_FILE = ROOT / "models" / "scan" / "triton_kernels.py"
#: (batch, d_inner, N) of DiM-H/2's scan, and L per signature dtype (see the module docstring).
D_INNER, N_STATE = 3072, 16
LENGTH = {"bf16": 9806, "fp32": 4494}
TILE = {"BD": 32, "BN": 16}
NUM_WARPS = 1
#: pointer arguments that hold the big (batch, ·, L) tensors, in the signature dtype; all others are float32.
LOW_PRECISION = {"u", "delta", "B", "C", "z", "go", "out", "du", "ddelta", "dz"}
FLAGS = {"HAS_D": True, "HAS_Z": True, "HAS_BIAS": True, "SOFTPLUS": True}


def launch_ints(L: int) -> dict[str, dict[str, int]]:
    """The integer arguments of the forward and backward launches at batch 1, d_inner 3072, N 16, length L:
    the forward's chunks as ``triton_backend.default_chunk_size`` cuts them (K = ⌈2^16 / 3072⌉ = 22 chunks), the
    backward's as ``BWD_CHUNK`` (32 steps) does, channel blocks of 32."""
    k_fwd = 22
    t_fwd = -(-L // k_fwd)
    t_bwd = 32
    k_bwd = -(-L // t_bwd)
    blocks = D_INNER // TILE["BD"]
    return {"forward": {"D": D_INNER, "L": L, "N": N_STATE, "T": t_fwd, "K": -(-L // t_fwd)},
            "backward": {"D": D_INNER, "L": L, "N": N_STATE, "T": t_bwd, "K": k_bwd, "n_dblocks": blocks,
                         "n_tiles": blocks * k_bwd}}


#: (kernel, pass of the scan, constexprs): what one forward and one backward of a DiM block's scan launch.
LAUNCHES = [
    ("chunk_summary_kernel", "forward", {"ADJOINT": False, "HAS_Z": False, "HAS_BIAS": True, "SOFTPLUS": True}),
    ("carry_kernel", "forward", {"ADJOINT": False}),
    ("forward_kernel", "forward", {"HAS_INIT": True, **FLAGS}),
    ("chunk_summary_kernel", "backward", {"ADJOINT": True, "HAS_Z": True, "HAS_BIAS": True, "SOFTPLUS": True}),
    ("carry_kernel", "backward", {"ADJOINT": True}),
    ("backward_kernel", "backward", {"HAS_INIT": True, **FLAGS}),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="write the rows here (rewritten after every kernel)")
    p.add_argument("--dtypes", default="bf16,fp32", help="signature dtypes of the big tensors (bf16, fp16, fp32)")
    p.add_argument("--kernels", default=str(KERNELS_FILE), help="the Triton kernels' source file")
    p.add_argument("--summary", help="also append one line per kernel to SUMMARY/summary.{txt,jsonl}")
    p.add_argument("--phase", default="scan compile check", help="the phase name of those lines")
    return p.parse_args(argv)


def load_kernels(path: str):
    """The kernels' module, loaded from its file in compiled mode (it imports triton only)."""
    os.environ["TRITON_INTERPRET"] = "0"
    spec = importlib.util.spec_from_file_location("_scan_kernels_checked", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def source(fn, dtype: str, constexprs: dict, ints: dict):
    """Triton's ASTSource for one launch, specialised as the launcher would (see the module docstring)."""
    from triton.compiler import ASTSource

    signature, attrs, constants = {}, {}, dict(constexprs)
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = f"*{dtype if name[:-4] in LOW_PRECISION else 'fp32'}"
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif ints[name] == 1:
            signature[name] = "constexpr"
            constants[name] = 1
        else:
            signature[name] = "i32"
            if ints[name] % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return ASTSource(fn=fn, signature=signature, constexprs={(fn.arg_names.index(k),): v for k, v in constants.items()},
                     attrs=attrs)


def cuda_tool(name: str) -> str:
    import triton

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return os.environ.get(f"TRITON_{name.upper()}_PATH") or str(bundled)


def resources(compiled) -> dict:
    """Registers, stack, local and shared bytes (cuobjdump of the cubin) and spill bytes (ptxas -v on the PTX)."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin, ptx = Path(tmp) / "k.cubin", Path(tmp) / "k.ptx"
        cubin.write_bytes(compiled.asm["cubin"])
        ptx.write_text(compiled.asm["ptx"])
        usage = subprocess.run([cuda_tool("cuobjdump"), "--dump-resource-usage", str(cubin)],
                               capture_output=True, text=True, check=True).stdout
        target = re.search(r"^\.target\s+(\w+)", compiled.asm["ptx"], re.M).group(1)
        log = subprocess.run([cuda_tool("ptxas"), f"--gpu-name={target}", "-v", str(ptx), "-o", str(Path(tmp) / "o")],
                             capture_output=True, text=True, check=True).stderr

    def field(pattern: str, text: str) -> int:
        m = re.search(pattern, text)
        if m is None:
            raise RuntimeError(f"no {pattern!r} in the tool's report:\n{text}")
        return int(m.group(1))

    return {"registers": field(r"REG:(\d+)", usage), "stack_bytes": field(r"STACK:(\d+)", usage),
            "local_bytes": field(r"LOCAL:(\d+)", usage), "shared_bytes": field(r"SHARED:(\d+)", usage),
            "spill_store_bytes": field(r"(\d+) bytes spill stores", log),
            "spill_load_bytes": field(r"(\d+) bytes spill loads", log), "ptx_target": target}


def compile_one(module, kernel: str, launch: str, dtype: str, constexprs: dict) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget

    ints = launch_ints(LENGTH.get(dtype, LENGTH["bf16"]))[launch]
    row = {"kernel": kernel, "launch": launch, "dtype": dtype, "constexprs": {**constexprs, **TILE},
           "ints": ints, "num_warps": NUM_WARPS, "error": None}
    t0 = time.perf_counter()
    try:
        fn = getattr(module, kernel)
        src = source(fn, dtype, {**constexprs, **TILE}, {k: v for k, v in ints.items() if k in fn.arg_names})
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": NUM_WARPS})
        row["compile_s"] = round(time.perf_counter() - t0, 2)
        row.update(resources(compiled))
        row["triton_shared_bytes"] = int(compiled.metadata.shared)
    except Exception as exc:  # one kernel's failure is a row; the others still compile
        row["compile_s"] = round(time.perf_counter() - t0, 2)
        row["error"] = f"{type(exc).__name__}: {str(exc).strip()[-1500:]}"
    return row


def describe(row: dict, version: str) -> str:
    head = f"triton {version} {row['kernel']} {'fwd' if row['launch'] == 'forward' else 'bwd'} {row['dtype']}"
    if row["error"]:
        return f"{head}: DOES NOT COMPILE for sm_90: {row['error'].splitlines()[-1][:200]}"
    spills = row["spill_store_bytes"] + row["spill_load_bytes"]
    return (f"{head}: {row['registers']} regs, spills {row['spill_store_bytes']}/{row['spill_load_bytes']} B"
            f"{' <- SPILLS' if spills else ''}, stack {row['stack_bytes']}, smem {row['triton_shared_bytes']}/"
            f"{row['shared_bytes']} B")


def main(argv=None) -> int:
    args = parse_args(argv)
    import triton

    summary = Summary(args.summary, args.phase) if args.summary else Summary(None, args.phase)
    record = {"tool": "scan_compile_check", "triton": triton.__version__, "python": sys.version.split()[0],
              "target": "GPUTarget('cuda', 90, 32): sm_90, warp 32", "kernels_file": args.kernels,
              "shapes": {d: {"batch": 1, "d_inner": D_INNER, "N": N_STATE, "L": LENGTH.get(d, LENGTH["bf16"])}
                         for d in args.dtypes.split(",")},
              "method": "triton.compile for GPUTarget('cuda', 90, 32); cuobjdump --dump-resource-usage (registers, "
                        "stack, local, shared); ptxas -v on Triton's PTX (spills)", "rows": []}
    try:
        module = load_kernels(args.kernels)
    except Exception as exc:
        summary.record(f"triton {triton.__version__}: the kernels file {args.kernels} does not load: "
                       f"{type(exc).__name__}: {exc}", error=str(exc))
        return 1
    for dtype in args.dtypes.split(","):
        for kernel, launch, constexprs in LAUNCHES:
            row = compile_one(module, kernel, launch, dtype, constexprs)
            record["rows"].append(row)
            if args.json:
                write_json_atomic(args.json, record)
            summary.record(describe(row, triton.__version__), triton=triton.__version__,
                           **{k: row.get(k) for k in ("kernel", "launch", "dtype", "registers", "spill_store_bytes",
                                                      "spill_load_bytes", "stack_bytes", "shared_bytes",
                                                      "triton_shared_bytes", "error")})
    failed = [r for r in record["rows"] if r["error"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
