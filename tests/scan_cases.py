"""What the Triton scan tests share: random inputs, the error measure, the tolerances, and running a test file's
interpreter tests in a subprocess.

Triton's mode (compiled or interpreter) is fixed per process when triton is first imported
(``models.scan.triton_runtime``), and other test files import it in compiled mode. So each Triton test file marks
its interpreter tests ``@interpreted`` (skipped in a compiled-mode process, naming the test that runs them) and
runs them all from one compiled-mode test, ``run_interpreted``: ``pytest`` on the file with TRITON_INTERPRET=1,
which must pass every one of them with nothing skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.scan import ENV_VAR, scan_backend, selective_scan, triton_runtime

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
BIG = ("u", "delta", "B", "C", "z")                 # the (batch, ·, L) inputs, given in the tested dtype
# ‖x − ref‖ / ‖ref‖ against float64 arithmetic on the same (rounded) inputs: float32 arithmetic (seen ≤ 4e-7);
# float16 and bfloat16 set by rounding the output and the gradients of u, Δ, z to the input dtype (unit roundoff
# 4.9e-4 and 3.9e-3; seen up to 6e-4 and 4.5e-3). A NaN anywhere fails (a comparison with a NaN norm is false).
TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
INTERPRETER = (True, "Triton interpreter (correctness only, slow)")
_SKIP_REASON = "run with TRITON_INTERPRET=1 by the file's test_interpreter_tests_in_a_subprocess"


def in_interpreter() -> bool:
    """This process runs Triton's interpreter on the CPU (TRITON_INTERPRET=1 before triton's first import)."""
    return triton_runtime.status("cpu", "") == INTERPRETER


IN_INTERPRETER = in_interpreter()
interpreted = pytest.mark.skipif(not IN_INTERPRETER, reason=_SKIP_REASON)
compiled = pytest.mark.skipif(IN_INTERPRETER, reason="needs triton in compiled mode: runs in the parent pytest")


def make_inputs(batch=2, d_inner=5, L=37, N=4, *, D=True, z=True, delta_bias=True, softplus=True, seed=0,
                dtype=torch.float32, strong=False, device="cpu"):
    """Random inputs with A < 0 and moderate Δ, so the state survives many steps and a wrong chunk carry shows.
    Without softplus Δ is given positive. ``strong``: DiM's A = -[1..N] and Δ up to ~3, so decays underflow."""
    g = torch.Generator(device=device).manual_seed(seed)     # drawn on the device: DiM-H's sizes are large
    kw = {"generator": g, "device": device}
    delta = torch.randn(batch, d_inner, L, **kw) * 0.5 - 1.0
    if not softplus:
        delta = F.softplus(delta)
    t = {
        "u": torch.randn(batch, d_inner, L, **kw),
        "delta": delta + 3.0 if strong else delta,
        "A": (-torch.arange(1, N + 1, device=device).float().repeat(d_inner, 1) if strong
              else -(torch.rand(d_inner, N, **kw) * 1.5 + 0.1)),
        "B": torch.randn(batch, N, L, **kw),
        "C": torch.randn(batch, N, L, **kw),
        "D": torch.randn(d_inner, **kw) if D else None,
        "z": torch.randn(batch, d_inner, L, **kw) if z else None,
        "delta_bias": torch.randn(d_inner, **kw) * 0.3 if delta_bias else None,
    }
    return {k: None if v is None else v.to(device=device, dtype=dtype if k in BIG else torch.float32)
            for k, v in t.items()}


def rel_err(x, ref) -> float:
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def check_against_oracle(inputs: dict, run, softplus: bool = True, tol: float | None = None):
    """``run(grad_out) -> (out, grads)`` (the gradients of the inputs present, in NAMES order) against autograd of
    the float64 recurrence: shapes, dtypes, contiguity and ‖x − ref‖/‖ref‖ within ``tol`` (default ``TOL``)."""
    from scan_oracle import recurrence64

    dtype = inputs["u"].dtype
    tol = tol or TOL[dtype]
    leaves = {k: None if v is None else v.double().requires_grad_() for k, v in inputs.items()}
    ref = recurrence64(**leaves, delta_softplus=softplus)
    grad_out = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    out, grads = run(grad_out)
    assert out.dtype == dtype and out.shape == ref.shape and out.is_contiguous()
    assert rel_err(out, ref) <= tol, f"out: {rel_err(out, ref):.2e} > {tol}"
    present = [k for k in NAMES if inputs[k] is not None]
    grads64 = torch.autograd.grad(ref, [leaves[k] for k in present], grad_out.double())
    assert len(grads) == len(present)
    for name, g, g64 in zip(present, grads, grads64, strict=True):
        assert g.dtype == inputs[name].dtype and g.shape == g64.shape and g.is_contiguous(), name
        assert rel_err(g, g64) <= tol, f"gradient of {name}: {rel_err(g, g64):.2e} > {tol}"


def check_through_the_operator(backend: str, inputs: dict) -> None:
    """selective_scan(backend=...) with torch.autograd: the value and every gradient against the float64
    recurrence (float32 tolerance), and ``scan_backend()`` naming the backend."""
    from scan_oracle import recurrence64

    leaves = {k: None if v is None else v.clone().requires_grad_() for k, v in inputs.items()}
    out = selective_scan(**leaves, backend=backend)
    assert scan_backend() == backend
    leaves64 = {k: None if v is None else v.double().requires_grad_() for k, v in inputs.items()}
    ref = recurrence64(**leaves64)
    assert rel_err(out, ref) <= TOL[torch.float32]
    go = torch.randn(ref.shape, dtype=torch.float64)
    grads = torch.autograd.grad(out, list(leaves.values()), go.float())
    grads64 = torch.autograd.grad(ref, list(leaves64.values()), go)
    for name, g, g64 in zip(NAMES, grads, grads64, strict=True):
        assert rel_err(g, g64) <= TOL[torch.float32], name


def interpreted_items(namespace: dict):
    """(name, parameter set) of every ``@interpreted`` test in a module's namespace, counted from the marks."""
    for name, fn in list(namespace.items()):
        if not name.startswith("test_") or not callable(fn):
            continue
        marks = getattr(fn, "pytestmark", [])
        if not any(m.name == "skipif" and m.kwargs.get("reason") == _SKIP_REASON for m in marks):
            continue
        count = 1
        for m in marks:
            if m.name == "parametrize":
                count *= len(m.args[1])
        yield from ((name, i) for i in range(count))


def run_interpreted(test_file: str, namespace: dict, timeout: float = 1200) -> None:
    """Run every ``@interpreted`` test of ``test_file`` in a process started with TRITON_INTERPRET=1; all must
    pass, none be skipped."""
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    env.update(TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    items = list(interpreted_items(namespace))
    names = sorted({name for name, _ in items})
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not cuda",
                          "-k", " or ".join(names), test_file],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
    tail = run.stdout[-4000:] + run.stderr[-2000:]
    assert run.returncode == 0, tail
    summary = run.stdout.strip().splitlines()[-1]
    assert f"{len(items)} passed" in summary and "skipped" not in summary, f"expected {len(items)} passes:\n{tail}"


# ---------------------------------------------------------------------------------------------- on a CUDA GPU

# Relative norm error against the chunked backend on the same rounded inputs. float32 inputs: 1e-4 everywhere.
# bfloat16 inputs: 2e-2 for what is stored in bfloat16 (out, du, dΔ, dz, dB, dC: bf16's 2^-8 rounding with
# margin); 2e-3 for the float32 sums (dA, dD, dΔ-bias), tight enough that a lost chunk or a channel block's lost
# atomic adds (>= 1 %) fails.
CUDA_TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
CUDA_TOL_FP32_GRADS = 2e-3
CUDA_CASES = [(1, 366, torch.float32), (1, 1230, torch.bfloat16), (1, 4494, torch.float32),
              (1, 9806, torch.bfloat16), (8, 366, torch.bfloat16), (8, 1230, torch.float32),
              (8, 4494, torch.bfloat16), (8, 9806, torch.bfloat16)]


def check_against_chunked_on_cuda(backend: str, batch: int, L: int, dtype: torch.dtype) -> None:
    """DiM-H's scan (d_inner 3072, N 16) by ``backend`` against the chunked backend (float32, TF32 off) on the same
    rounded inputs: out and every gradient, ‖x − ref‖/‖ref‖ within ``CUDA_TOL`` (``CUDA_TOL_FP32_GRADS`` for the
    float32 sums)."""
    d_inner, N = 3072, 16
    need = batch * L * d_inner * 400  # chunked fwd + bwd: ~300 B per (b, d, t) seen at 1536 px, plus inputs
    if torch.cuda.mem_get_info()[0] < need:
        pytest.skip(f"needs about {need / 2**30:.0f} GiB free for the chunked reference")
    inputs = make_inputs(batch=batch, d_inner=d_inner, L=L, N=N, dtype=dtype, seed=L, device="cuda")
    inputs["A"] = -torch.arange(1, N + 1, device="cuda", dtype=torch.float32).repeat(d_inner, 1)  # DiM's init
    inputs["delta"] = (inputs["delta"].float() - 2.0).to(dtype)                                # Δ ≈ 0.1
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        ref_in = {k: None if v is None else v.float().requires_grad_() for k, v in inputs.items()}
        ref = selective_scan(**ref_in, backend="chunked")
        # the output gradient rounded as the kernel gets it, so both see the same values
        go = torch.randn(ref.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(0)).to(dtype).float()
        ref_grads = torch.autograd.grad(ref, list(ref_in.values()), go)
        leaves = {k: None if v is None else v.clone().requires_grad_() for k, v in inputs.items()}
        out = selective_scan(**leaves, backend=backend)
        assert scan_backend() == backend and out.dtype == dtype
        grads = torch.autograd.grad(out, list(leaves.values()), go.to(dtype))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    tol = CUDA_TOL[dtype]
    assert rel_err(out, ref) <= tol, f"out: {rel_err(out, ref):.2e}"
    for name, g, r in zip(NAMES, grads, ref_grads, strict=True):
        limit = min(tol, CUDA_TOL_FP32_GRADS) if g.dtype == torch.float32 else tol
        assert g.dtype == inputs[name].dtype and rel_err(g, r) <= limit, f"{name}: {rel_err(g, r):.2e} > {limit}"
