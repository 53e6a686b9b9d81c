"""Is the fused scan right at DiM-H's real shapes? Every fused backend against the float32 reference, output and all
eight gradients; the fused causal conv1d + SiLU against torch's; the triton backend's deterministic backward
bit-identical across two runs; on a CUDA GPU (phase 2 of ``scripts/gpu_check.sh``), or at tiny shapes on the CPU
(its dry run).

    python benchmarks/scan_cuda_check.py [--device cuda] [--json FILE] [--summary OUT] [--backends triton,...]

Cases, in this order (batch, L, dtype): (1, 9806) bf16, (1, 4494) fp32, (8, 1230) bf16, (32, 366) bf16, (64, 366)
bf16: DiM-H/2 at 1536, 1024, 512 and 256 px, d_inner 3072, N 16, in DiM's own layout (``scan_inputs``: z, B and C
are strided views, not contiguous at batch > 1). On the CPU (``--device cpu``) tiny shapes instead (``TINY``:
batch 1, 1, 2, 3, 4, L 20, 9, 6, 3, 3, d_inner 8, N 4), under Triton's interpreter (TRITON_INTERPRET=1 before the
process starts), and every line says TINY.

Backends: every one ``models.scan.available_backends(device)`` says can run there (on a GPU machine: ``triton``,
``triton_v1``, and ``mamba_ssm`` where it imports), except the two pure-PyTorch ones (``reference``, ``chunked``),
which are what the fused ones are checked against; Triton's interpreter is never chosen on CUDA. ``--backends``
names them instead. Each through the operator (``selective_scan(..., backend=name)`` and autograd), as DiM calls it:
the triton backend's forward keeps its chunk states for its backward there.

Reference: the ``chunked`` backend in float32 (TF32 off) on the same rounded inputs, upcast, and the same output
gradient (drawn in the case's dtype); ``chunked`` itself matches the float64 recurrence in tests/test_scan.py.
Measured per tensor: ‖x − ref‖ / ‖ref‖ over out and the gradients of u, Δ, A, B, C, D, z and the Δ-bias, and
whether anything is NaN or infinite. Pass: every tensor finite, and within 1e-4 for float32 inputs; for bfloat16
inputs within 2e-2 for the tensors stored in bfloat16 (out, du, dΔ, dz, dB, dC: bf16's 2^-8 rounding, with margin)
and 2e-3 for the float32 sums (dA, dD, dΔ-bias), tight enough that a lost chunk or channel block fails.

With the triton backend checked, at each case also (``check`` in the JSON says which of the three a result is):

- ``conv``: DiM's causal depthwise conv1d + SiLU by its Triton kernel (the custom op
  ``dimbench_scan::causal_conv1d_silu``, which DiM calls on CUDA with the triton scan) against torch's
  ``F.conv1d`` + ``F.silu`` in float32 (TF32 off) on the same input, DiM's layout (``scan_inputs.dim_conv_inputs``:
  a strided view of in_proj's product), d_inner 3072, kernel 3: within 1e-5 for float32, 4e-3 for bfloat16 (the
  output's rounding to nearest: at most 2^-8 per element, about 1.7e-3 in norm; 8e-3 under Triton's interpreter,
  which truncates);
- ``deterministic`` (at (1, 9806) and (8, 1230) bf16 only: it costs ⌈d_inner / 4⌉ partial copies of dB and dC,
  about 1 GB there): the gradients through the operator with ``DIMBENCH_SCAN_DETERMINISTIC=1``, twice, every one
  bit-identical (``torch.equal``), and the default (atomic) backward within the scan tolerances of them.

Order: the ``triton`` backend first, case by case (each followed by its conv and determinism checks), then the
other backends case by case, so that a cut keeps the default kernel's answers whole; the reference of a case is
computed once and kept. Each (case, backend, check) is guarded (an exception or an out-of-memory is its own failed
line) and written the moment it is known: one summary line, and ``--json`` rewritten. Exit status 1 if any
failed, 0 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import os
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
from scan_inputs import CPU_ONLY, DIM_H, dim_conv_inputs, dim_scan_inputs, runnable_backends  # noqa: E402

from models.scan import selective_scan  # noqa: E402

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
CASES = [(1, 9806, torch.bfloat16), (1, 4494, torch.float32), (8, 1230, torch.bfloat16), (32, 366, torch.bfloat16),
         (64, 366, torch.bfloat16)]
#: the CPU dry run's shapes: Triton's interpreter takes seconds per step of a tiny scan on a loaded 2-core machine.
TINY = {"d_inner": 8, "N": 4, "rank": 4, "lengths": {9806: 20, 4494: 9, 1230: 6, 366: 3},
        "batches": {1: 1, 8: 2, 32: 3, 64: 4}}
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
TOL_FP32_SUMS = 2e-3
REFERENCES = ("reference", "chunked")
CONV_TOL = {torch.float32: 1e-5, torch.bfloat16: 4e-3}
#: Triton's interpreter truncates float32 to bfloat16 where a GPU rounds to nearest (measured on normal data: 3.3e-3
#: against 1.7e-3), so the CPU dry run's bfloat16 conv is allowed twice the GPU's tolerance.
CONV_TOL_INTERPRETER_BF16 = 8e-3
#: the cases (batch, L at DiM-H's size) where the deterministic backward is checked
DETERMINISTIC_CASES = {(1, 9806), (8, 1230)}


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
        return {"check": "scan", "backend": name, "passed": not over and not nonfinite, "rel_err": errs,
                "tolerance": tols,
                "over_tolerance": over, "nonfinite": nonfinite,
                "strides": {k: list(inputs[k].stride()) for k in ("z", "B", "C")},
                "seconds": round(time.perf_counter() - t0, 2), "error": None}
    except Exception as exc:
        return {"check": "scan", "backend": name, "passed": False, "seconds": round(time.perf_counter() - t0, 2),
                "error": f"{type(exc).__name__}: {str(exc).strip()[:800]}"}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def check_conv(batch: int, L: int, dtype: torch.dtype, device: torch.device, shape: dict) -> dict:
    """The fused conv1d + SiLU (the custom op DiM calls) against torch's F.conv1d + F.silu in float32."""
    from models.scan import conv

    t0 = time.perf_counter()
    try:
        x, weight, bias = dim_conv_inputs(batch, L, dtype, device, d_inner=shape["d_inner"], seed=L + 7)
        out = torch.ops.dimbench_scan.causal_conv1d_silu(x, weight, bias)
        prev = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            ref = conv.causal_conv1d_silu_reference(x.float(), weight, bias)
        finally:
            torch.backends.cudnn.allow_tf32 = prev
        err = rel_err(out, ref)
        tol = CONV_TOL_INTERPRETER_BF16 if device.type == "cpu" and dtype == torch.bfloat16 else CONV_TOL[dtype]
        finite = bool(torch.isfinite(out).all())
        ok = finite and err <= tol and out.dtype == dtype and out.shape == x.shape
        return {"check": "conv", "kernel": "conv_silu_kernel", "passed": ok, "rel_err": {"out": err},
                "tolerance": {"out": tol}, "nonfinite": [] if finite else ["out"], "over_tolerance": [] if ok else
                ["out"], "seconds": round(time.perf_counter() - t0, 2), "error": None}
    except Exception as exc:
        return {"check": "conv", "kernel": "conv_silu_kernel", "passed": False, "seconds":
                round(time.perf_counter() - t0, 2), "error": f"{type(exc).__name__}: {str(exc).strip()[:800]}"}


@contextlib.contextmanager
def _environ(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def check_deterministic(batch: int, L: int, dtype: torch.dtype, device: torch.device, shape: dict) -> dict:
    """The triton backend's deterministic backward, through the operator as a user turns it on: twice, bit for bit;
    the default (atomic) one within the scan tolerances of it."""
    from models.scan.triton_fused import DETERMINISTIC_ENV

    t0 = time.perf_counter()
    try:
        inputs, _ = dim_scan_inputs(batch, L, dtype, device, seed=L + 3, requires_grad=True, **shape)
        g = torch.Generator(device=device).manual_seed(L + 5)
        go = torch.randn(batch, shape["d_inner"], L, device=device, generator=g).to(dtype)

        def gradients(deterministic: bool):
            with _environ(DETERMINISTIC_ENV, "1" if deterministic else "0"):
                out = selective_scan(**inputs, backend="triton")
                return torch.autograd.grad(out, [inputs[k] for k in NAMES], go)

        first, second, atomic = gradients(True), gradients(True), gradients(False)
        differ = [k for k, a, b in zip(NAMES, first, second, strict=True) if not torch.equal(a, b)]
        errs = {f"d{k}": rel_err(c, a) for k, a, c in zip(NAMES, first, atomic, strict=True)}
        tols = {f"d{k}": tolerance(dtype, a.dtype) for k, a in zip(NAMES, first, strict=True)}
        nonfinite = sorted(f"d{k}" for k, a in zip(NAMES, first, strict=True) if not torch.isfinite(a).all())
        over = sorted(k for k in errs if not errs[k] <= tols[k])
        return {"check": "deterministic", "backend": "triton", "passed": not differ and not over and not nonfinite,
                "not_identical": differ, "rel_err": errs, "tolerance": tols, "over_tolerance": over,
                "nonfinite": nonfinite, "seconds": round(time.perf_counter() - t0, 2), "error": None}
    except Exception as exc:
        return {"check": "deterministic", "backend": "triton", "passed": False, "seconds":
                round(time.perf_counter() - t0, 2), "error": f"{type(exc).__name__}: {str(exc).strip()[:800]}"}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def describe(res: dict, case: dict) -> str:
    tiny = f" TINY d{case['d_inner']}" if case["tiny"] else ""
    who = {"conv": "conv1d+silu", "deterministic": "triton deterministic"}.get(res.get("check"), res.get("backend"))
    head = f"{who} ({case['batch']},{case['L']}) {case['dtype']}{tiny}:"
    if res.get("error"):
        return f"{head} FAILED {res['error'].splitlines()[0][:200]}"
    if res["check"] == "conv":
        return (f"{head} {'PASS' if res['passed'] else 'FAIL'} out {res['rel_err']['out']:.1e} (tol "
                f"{res['tolerance']['out']:.0e}){', NaN/inf' if res['nonfinite'] else ''} ({res['seconds']} s)")
    if res["check"] == "deterministic":
        worst = max(res["rel_err"], key=lambda k: res["rel_err"][k] / res["tolerance"][k])
        same = ("bit-identical twice" if not res["not_identical"] else
                f"NOT bit-identical: {','.join(res['not_identical'])}")
        return (f"{head} {'PASS' if res['passed'] else 'FAIL'} {same}; atomic vs it: worst {worst} "
                f"{res['rel_err'][worst]:.1e} (tol {res['tolerance'][worst]:.0e})"
                f"{', NaN/inf in ' + ','.join(res['nonfinite']) if res['nonfinite'] else ''} ({res['seconds']} s)")
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
                                          exclude={**CPU_ONLY, **{name: "the reference" for name in REFERENCES}})
    for name, reason in skipped.items():
        # the references and a CPU-only kernel (in a CPU dry run) are not candidates here unless named: no line
        if (name not in REFERENCES and name not in CPU_ONLY) or args.backends:
            summary.record(f"{name}: not checked ({reason})", backend=name, skipped=True)
    if not backends:
        summary.record(f"no fused scan backend can run on {device}: nothing to check", skipped=True)
        return 1
    backends.sort(key=lambda name: name != "triton")   # the default kernel's answers first, at every case
    record = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "torch": torch.__version__,
              "tiny": tiny, "shape": shape, "backends": backends, "skipped": skipped, "results": []}
    torch.backends.cuda.matmul.allow_tf32 = False
    failed = 0
    references: dict = {}     # per case, computed when first needed, kept for the next backend (a few GB at most)
    for name in backends:
        for full_batch, full_L, dtype in CASES:
            batch, L = (TINY["batches"][full_batch], TINY["lengths"][full_L]) if tiny else (full_batch, full_L)
            case = {"batch": batch, "L": L, "dtype": str(dtype).replace("torch.", ""), "tiny": tiny,
                    "d_inner": shape["d_inner"]}
            if (batch, L, dtype) not in references:
                try:
                    references[batch, L, dtype] = reference(batch, L, dtype, device, shape)
                except Exception as exc:  # the reference failed (e.g. out of memory): every line of the case says so
                    references[batch, L, dtype] = (f"the float32 reference failed: {type(exc).__name__}: "
                                                   f"{str(exc).strip()[:600]}")
            ref = references[batch, L, dtype]
            failed += not emit(record, summary, args, case, check_backend(name, batch, L, dtype, device, shape, ref)
                               if isinstance(ref, dict) else
                               {"check": "scan", "backend": name, "passed": False, "error": ref, "seconds": 0})
            if name == "triton":
                failed += not emit(record, summary, args, case, check_conv(batch, L, dtype, device, shape))
                if (full_batch, full_L) in DETERMINISTIC_CASES:
                    failed += not emit(record, summary, args, case,
                                       check_deterministic(batch, L, dtype, device, shape))
    return 1 if failed else 0


def emit(record: dict, summary: Summary, args, case: dict, res: dict) -> bool:
    """One result, the moment it is known: into the JSON (rewritten) and the summary. Returns whether it passed."""
    record["results"].append({**case, **res})
    if args.json:
        write_json_atomic(args.json, record)
    summary.record(describe(res, case), **case, **{k: v for k, v in res.items() if k != "strides"})
    return res["passed"]


if __name__ == "__main__":
    sys.exit(main())
