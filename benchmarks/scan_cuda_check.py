"""Is the fused scan right at DiM-H's real shapes? Every fused backend against the float32 reference, output and all
eight gradients, on a CUDA GPU (phase 2 of ``scripts/gpu_check.sh``), or at tiny shapes on the CPU (its dry run).

    python benchmarks/scan_cuda_check.py [--device cuda] [--json FILE] [--summary OUT] [--backends triton,...]

Cases, in this order (batch, L, dtype): (1, 9806) bf16, (1, 4494) fp32, (8, 1230) bf16, (32, 366) bf16, (64, 366)
bf16: DiM-H/2 at 1536, 1024, 512 and 256 px, d_inner 3072, N 16, in DiM's own layout (``scan_inputs``: z, B and C
are strided views, not contiguous at batch > 1). On the CPU (``--device cpu``) tiny shapes instead (``TINY``:
batch 1, 1, 2, 3, 4, L 20, 9, 6, 3, 3, d_inner 32), under Triton's interpreter (TRITON_INTERPRET=1 before the
process starts), and every line says TINY.

Backends: every one ``models.scan.available_backends(device)`` says can run there, except the two pure-PyTorch
ones (``reference``, ``chunked``), which are what the fused ones are checked against; Triton's interpreter is never
chosen on CUDA. ``--backends`` names them instead.

Reference: the ``chunked`` backend in float32 (TF32 off) on the same rounded inputs, upcast, and the same output
gradient (drawn in the case's dtype); ``chunked`` itself matches the float64 recurrence in tests/test_scan.py.
Measured per tensor: ‖x − ref‖ / ‖ref‖ over out and the gradients of u, Δ, A, B, C, D, z and the Δ-bias, and
whether anything is NaN or infinite. Pass: every tensor finite, and within 1e-4 for float32 inputs; for bfloat16
inputs within 2e-2 for the tensors stored in bfloat16 (out, du, dΔ, dz, dB, dC: bf16's 2^-8 rounding, with margin)
and 2e-3 for the float32 sums (dA, dD, dΔ-bias), tight enough that a lost chunk or channel block fails.

Each (case, backend) is guarded (an exception or an out-of-memory is its own failed line) and written the moment it
is known: one summary line, and ``--json`` rewritten. Exit status 1 if any case failed, 0 otherwise.
"""

from __future__ import annotations

import argparse
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
from scan_inputs import DIM_H, dim_scan_inputs, runnable_backends  # noqa: E402

from models.scan import selective_scan  # noqa: E402

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
CASES = [(1, 9806, torch.bfloat16), (1, 4494, torch.float32), (8, 1230, torch.bfloat16), (32, 366, torch.bfloat16),
         (64, 366, torch.bfloat16)]
#: the CPU dry run's shapes: Triton's interpreter takes seconds per step of a tiny scan on a loaded 2-core machine.
TINY = {"d_inner": 32, "N": 16, "rank": 8, "lengths": {9806: 20, 4494: 9, 1230: 6, 366: 3},
        "batches": {1: 1, 8: 2, 32: 3, 64: 4}}
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
TOL_FP32_SUMS = 2e-3
REFERENCES = ("reference", "chunked")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (the real shapes) or cpu (tiny shapes, interpreter)")
    p.add_argument("--json", help="write every result here (rewritten after each case)")
    p.add_argument("--summary", help="append one line per result to SUMMARY/summary.{txt,jsonl}")
    p.add_argument("--phase", default="2 scan correctness")
    p.add_argument("--backends", help="comma-separated backends to check (default: every fused one available)")
    return p.parse_args(argv)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def tolerance(dtype: torch.dtype, grad_dtype: torch.dtype) -> float:
    return min(TOL[dtype], TOL_FP32_SUMS) if grad_dtype == torch.float32 and dtype != torch.float32 else TOL[dtype]


def reference(batch: int, L: int, dtype: torch.dtype, device: torch.device, shape: dict) -> dict:
    """The case's output gradient and the float32 reference's output and gradients."""
    inputs, _ = dim_scan_inputs(batch, L, dtype, device, seed=L, **shape)
    ref_in = {k: v.detach().float().requires_grad_() for k, v in inputs.items()}
    g = torch.Generator(device=device).manual_seed(batch * 100003 + L)
    go = torch.randn(batch, shape["d_inner"], L, device=device, generator=g).to(dtype)
    out = selective_scan(**ref_in, backend="chunked")
    grads = torch.autograd.grad(out, [ref_in[k] for k in NAMES], go.float())
    return {"go": go, "out": out.detach(), **{f"d{k}": gr for k, gr in zip(NAMES, grads, strict=True)}}


def check_backend(name: str, batch: int, L: int, dtype: torch.dtype, device: torch.device, shape: dict,
                  ref: dict) -> dict:
    """One backend at one case against the reference; an exception (an OOM, a kernel error) is a failed result."""
    t0 = time.perf_counter()
    try:
        inputs, _ = dim_scan_inputs(batch, L, dtype, device, seed=L, requires_grad=True, **shape)
        out = selective_scan(**inputs, backend=name)
        grads = torch.autograd.grad(out, [inputs[k] for k in NAMES], ref["go"])
        got = {"out": out, **{f"d{k}": gr for k, gr in zip(NAMES, grads, strict=True)}}
        errs = {k: rel_err(x, ref[k]) for k, x in got.items()}
        tols = {k: tolerance(dtype, x.dtype) for k, x in got.items()}
        nonfinite = sorted(k for k, x in got.items() if not torch.isfinite(x).all())
        over = sorted(k for k in errs if not errs[k] <= tols[k])  # a NaN error is never <= tol
        return {"backend": name, "passed": not over and not nonfinite, "rel_err": errs, "tolerance": tols,
                "over_tolerance": over, "nonfinite": nonfinite,
                "strides": {k: list(inputs[k].stride()) for k in ("z", "B", "C")},
                "seconds": round(time.perf_counter() - t0, 2), "error": None}
    except Exception as exc:
        return {"backend": name, "passed": False, "error": f"{type(exc).__name__}: {str(exc).strip()[:800]}",
                "seconds": round(time.perf_counter() - t0, 2)}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def describe(res: dict, case: dict) -> str:
    tiny = f" TINY d{case['d_inner']}" if case["tiny"] else ""
    head = f"{res['backend']} ({case['batch']},{case['L']}) {case['dtype']}{tiny}:"
    if res.get("error"):
        return f"{head} FAILED {res['error'].splitlines()[0][:200]}"
    worst = max(res["rel_err"], key=lambda k: res["rel_err"][k] / res["tolerance"][k])
    text = (f"{head} {'PASS' if res['passed'] else 'FAIL'} out {res['rel_err']['out']:.1e}, worst {worst} "
            f"{res['rel_err'][worst]:.1e} (tol {res['tolerance'][worst]:.0e}), ")
    text += f"NaN/inf in {','.join(res['nonfinite'])}" if res["nonfinite"] else "finite"
    if res["over_tolerance"]:
        text += f", over: {','.join(res['over_tolerance'])}"
    return f"{text} ({res['seconds']} s)"


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    summary = Summary(args.summary, args.phase)
    if device.type == "cuda" and not torch.cuda.is_available():
        summary.record("skipped: needs a CUDA GPU (torch.cuda.is_available() is False)", skipped=True)
        return 2
    tiny = device.type != "cuda"
    shape = {k: TINY[k] for k in ("d_inner", "N", "rank")} if tiny else dict(DIM_H)
    backends, skipped = runnable_backends(device, args.backends.split(",") if args.backends else None,
                                          exclude={name: "the reference" for name in REFERENCES})
    for name, reason in skipped.items():
        if name not in REFERENCES or args.backends:
            summary.record(f"{name}: not checked ({reason})", backend=name, skipped=True)
    if not backends:
        summary.record(f"no fused scan backend can run on {device}: nothing to check", skipped=True)
        return 1
    record = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "torch": torch.__version__,
              "tiny": tiny, "shape": shape, "backends": backends, "skipped": skipped, "results": []}
    torch.backends.cuda.matmul.allow_tf32 = False
    failed = 0
    for batch, L, dtype in CASES:
        if tiny:
            batch, L = TINY["batches"][batch], TINY["lengths"][L]
        case = {"batch": batch, "L": L, "dtype": str(dtype).replace("torch.", ""), "tiny": tiny,
                "d_inner": shape["d_inner"]}
        try:
            ref = reference(batch, L, dtype, device, shape)
        except Exception as exc:  # the reference itself failed (e.g. out of memory): every backend's line says so
            ref, error = None, f"the float32 reference failed: {type(exc).__name__}: {str(exc).strip()[:600]}"
        for name in backends:
            res = check_backend(name, batch, L, dtype, device, shape, ref) if ref is not None else \
                {"backend": name, "passed": False, "error": error, "seconds": 0}
            failed += not res["passed"]
            record["results"].append({**case, **res})
            if args.json:
                write_json_atomic(args.json, record)
            summary.record(describe(res, case), **case, **{k: v for k, v in res.items() if k != "strides"})
        del ref
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
