"""The ``triton`` scan backend: forward and every gradient against a float64 recurrence, under Triton's interpreter
on the CPU (TRITON_INTERPRET=1, small shapes: d_inner and N up to 16, L up to 300); availability and its reasons;
the kernels compiled for sm_90 without a GPU (what the interpreter cannot catch); and, marked ``cuda``, the kernel
against the ``chunked`` backend at DiM-H's shapes (``pytest -m cuda``, run by scripts/gpu_check.sh).

Triton's mode is fixed per process when triton is first imported (``triton_backend``'s docstring says why), and
other test files import it in compiled mode. So the tests that need the interpreter (``@interpreted``) run in a
subprocess, ``pytest`` on this file with TRITON_INTERPRET=1 (``test_interpreter_tests_in_a_subprocess``, which
fails if any of them fails or is skipped there); in this process they are skipped, naming that test. The compile
tests run only in a compiled-mode process, for the same reason. ``TRITON_INTERPRET=1 pytest tests/test_scan_triton.py``
runs the interpreter tests directly.

Tolerances, as ‖x − ref‖ / ‖ref‖ per tensor against float64 arithmetic on the same (rounded) inputs:
float32 inputs 1e-5 (float32 arithmetic; seen ≤ 4e-7); float16 3e-3 and bfloat16 2e-2, set by rounding the
output and the gradients of u, Δ, z to the input dtype (unit roundoff 4.9e-4 and 3.9e-3; seen up to 6e-4 and
4.5e-3). A NaN anywhere fails (the comparison with a NaN norm is false).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from scan_oracle import recurrence64

from models.scan import (
    ENV_VAR,
    available_backends,
    chunked_scan,
    register_backend,
    resolve_backend,
    scan_backend,
    selective_scan,
    triton_scan,
    triton_scan_backward,
    unregister_backend,
)
from models.scan import triton_backend as ts
from models.scan.registry import get_backend

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
BIG = ("u", "delta", "B", "C", "z")                 # the (batch, ·, L) inputs, given in the tested dtype
TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


IN_INTERPRETER = ts.triton_status("cpu") == (True, "Triton interpreter (correctness only, slow)")
interpreted = pytest.mark.skipif(not IN_INTERPRETER, reason="run with TRITON_INTERPRET=1 by "
                                 "test_interpreter_tests_in_a_subprocess (triton's mode is one per process)")
compiled = pytest.mark.skipif(IN_INTERPRETER, reason="needs triton in compiled mode: runs in the parent pytest")


@pytest.fixture
def interpret(monkeypatch):
    """No backend override from the caller's shell; the interpreter is on (see the module docstring)."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert IN_INTERPRETER


@compiled
def test_interpreter_tests_in_a_subprocess():
    """Every ``@interpreted`` test of this file, in a process started with TRITON_INTERPRET=1: all must pass."""
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    env.update(TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    items = list(_interpreted_items())
    names = sorted({name for name, _ in items})
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not cuda",
                          "-k", " or ".join(names), __file__],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    tail = run.stdout[-4000:] + run.stderr[-2000:]
    assert run.returncode == 0, tail
    summary = run.stdout.strip().splitlines()[-1]
    assert f"{len(items)} passed" in summary and "skipped" not in summary, f"expected {len(items)} passes:\n{tail}"


def _interpreted_items():
    """(name, parameter set) of every @interpreted test here, counted from the marks (for the check above)."""
    for name, fn in list(globals().items()):
        if not name.startswith("test_") or not callable(fn):
            continue
        marks = getattr(fn, "pytestmark", [])
        if not any(m.name == "skipif" and "TRITON_INTERPRET=1" in str(m.kwargs.get("reason", "")) for m in marks):
            continue
        count = 1
        for m in marks:
            if m.name == "parametrize":
                count *= len(m.args[1])
        yield from ((name, i) for i in range(count))


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


def check(inputs, softplus=True, chunk=None, bwd_chunk=None, programs=None, tol=None):
    """Forward and every gradient of triton_scan / triton_scan_backward against autograd of recurrence64."""
    dtype = inputs["u"].dtype
    tol = tol or TOL[dtype]
    out = triton_scan(**inputs, delta_softplus=softplus, chunk_size=chunk)
    leaves = {k: None if v is None else v.double().requires_grad_() for k, v in inputs.items()}
    ref = recurrence64(**leaves, delta_softplus=softplus)
    assert out.dtype == dtype and out.shape == ref.shape and out.is_contiguous()
    assert rel_err(out, ref) <= tol, f"out: {rel_err(out, ref):.2e} > {tol}"
    grad_out = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    present = [k for k in NAMES if inputs[k] is not None]
    grads64 = torch.autograd.grad(ref, [leaves[k] for k in present], grad_out.double())
    grads = triton_scan_backward(grad_out, *(inputs[k] for k in NAMES), softplus, (True,) * 8,
                                 chunk_size=bwd_chunk, programs=programs)
    assert len(grads) == len(present)
    for name, g, g64 in zip(present, grads, grads64, strict=True):
        assert g.dtype == inputs[name].dtype and g.shape == g64.shape and g.is_contiguous(), name
        assert rel_err(g, g64) <= tol, f"gradient of {name}: {rel_err(g, g64):.2e} > {tol}"


@interpreted
@pytest.mark.parametrize("options", [
    dict(),
    dict(D=False, z=False, delta_bias=False),
    dict(z=False),
    dict(D=False, delta_bias=False),
])
@pytest.mark.parametrize("softplus", [True, False])
def test_forward_and_gradients_match_float64(interpret, options, softplus):
    """L = 37 in forward chunks of 8 and backward chunks of 5 (neither divides L), 2 persistent programs."""
    check(make_inputs(**options, softplus=softplus), softplus=softplus, chunk=8, bwd_chunk=5, programs=2)


@interpreted
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(interpret, dtype):
    check(make_inputs(dtype=dtype, seed=3), chunk=6, bwd_chunk=7)


@interpreted
def test_full_size_tiles_default_chunking(interpret):
    """d_inner = N = 16 (no padded states), L = 300 with the default chunk sizes (several chunks both ways)."""
    inputs = make_inputs(batch=1, d_inner=16, L=300, N=16, seed=4)
    T = ts.default_chunk_size(1, 16, 300)
    assert 1 < -(-300 // T) and 300 % ts.BWD_CHUNK != 0, "the default must chunk here, unevenly"
    check(inputs)


@interpreted
def test_several_channel_blocks_and_a_partial_one(interpret, monkeypatch):
    """d_inner 10 in channel blocks of 4 (three blocks, the last partial), batch 2: the cross-block atomic sums of
    dB and dC and the tile decoding a GPU relies on (d_inner 3072 = 96 blocks of 32), at interpreter sizes."""
    monkeypatch.setattr(ts, "BLOCK_D", 4)
    check(make_inputs(batch=2, d_inner=10, seed=8), chunk=8, bwd_chunk=5, programs=3)


@interpreted
def test_strong_decay_and_softplus_threshold(interpret):
    """DiM's A = -[1..N] with large Δ (decays underflow within a chunk) and Δ + bias above 20 (softplus is the
    identity there, its derivative 1)."""
    inputs = make_inputs(L=40, N=16, strong=True, seed=5)
    inputs["delta"][:, :, ::7] = 21.0
    check(inputs, chunk=9, bwd_chunk=6)


@interpreted
@pytest.mark.parametrize("chunk,bwd_chunk,programs", [(1, 1, 1), (37, 37, 1), (100, 100, 5), (3, 4, 7)])
def test_any_chunking_gives_the_same_result(interpret, chunk, bwd_chunk, programs):
    """Chunks of one step, one chunk, chunks longer than L, more programs than tiles: one function."""
    inputs = make_inputs(batch=1, d_inner=3, seed=6)
    out = triton_scan(**inputs, chunk_size=chunk)
    torch.testing.assert_close(out, chunked_scan(**inputs), rtol=1e-5, atol=1e-5)
    go = torch.randn_like(out)
    base = triton_scan_backward(go, *inputs.values(), True, (True,) * 8, chunk_size=8, programs=2)
    other = triton_scan_backward(go, *inputs.values(), True, (True,) * 8, chunk_size=bwd_chunk, programs=programs)
    for name, a, b in zip(NAMES, base, other, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


@interpreted
def test_strided_inputs_and_only_needed_gradients(interpret):
    """Non-contiguous inputs are read correctly; ``needs`` selects the returned gradients, in order."""
    inputs = make_inputs(L=20, seed=7)
    strided = dict(inputs, u=inputs["u"].transpose(1, 2).contiguous().transpose(1, 2),
                   B=inputs["B"].repeat_interleave(2, dim=-1)[:, :, ::2])
    assert not strided["u"].is_contiguous() and not strided["B"].is_contiguous()
    torch.testing.assert_close(triton_scan(**strided), triton_scan(**inputs), rtol=0, atol=0)
    go = torch.randn(2, 5, 20)
    full = dict(zip(NAMES, triton_scan_backward(go, *inputs.values(), True, (True,) * 8), strict=True))
    needs = (False, True, True, False, False, False, True, False)
    some = triton_scan_backward(go, *strided.values(), True, needs)
    assert len(some) == 3
    for name, g in zip(("delta", "A", "z"), some, strict=True):
        torch.testing.assert_close(g, full[name], rtol=1e-6, atol=1e-6)


@interpreted
def test_interpreter_availability(interpret):
    assert available_backends("cpu")["triton"] == (True, "Triton interpreter (correctness only, slow)")
    assert resolve_backend("triton", "cpu") == "triton"
    assert resolve_backend(None, "cpu") != "triton", "auto never picks the interpreter"


@interpreted
def test_through_the_operator_with_autograd(interpret):
    """selective_scan(backend="triton"): values and torch.autograd gradients, through the op's analytic backward."""
    assert get_backend("triton").backward is triton_scan_backward
    inputs = make_inputs(L=23, seed=8)
    leaves = {k: None if v is None else v.clone().requires_grad_() for k, v in inputs.items()}
    out = selective_scan(**leaves, backend="triton")
    assert scan_backend() == "triton"
    leaves64 = {k: None if v is None else v.double().requires_grad_() for k, v in inputs.items()}
    ref = recurrence64(**leaves64)
    assert rel_err(out, ref) <= TOL[torch.float32]
    go = torch.randn(ref.shape, dtype=torch.float64)
    grads = torch.autograd.grad(out, list(leaves.values()), go.float())
    grads64 = torch.autograd.grad(ref, list(leaves64.values()), go)
    for name, g, g64 in zip(NAMES, grads, grads64, strict=True):
        assert rel_err(g, g64) <= TOL[torch.float32], name
    selective_scan(**inputs)
    assert scan_backend() != "triton", "auto never picks the interpreter"


@compiled
def test_availability_and_reasons(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ok, reason = available_backends("cpu")["triton"]
    assert not ok and "CUDA" in reason and "TRITON_INTERPRET=1" in reason
    with pytest.raises(RuntimeError, match="'triton' .*cannot run on cpu: .*TRITON_INTERPRET=1"):
        resolve_backend("triton", "cpu")
    with pytest.raises(RuntimeError, match="cannot run on cpu"):
        selective_scan(**make_inputs(L=4), backend="triton")
    assert available_backends("cuda")["triton"] == (True, "fused Triton kernel on CUDA")
    assert not available_backends("meta")["triton"][0]


def test_triton_missing(monkeypatch):
    """Without triton the slot says so, an explicit request raises with that reason, and auto skips it."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(ts, "_import_triton", lambda: (False, "triton is not installed (test)"))
    assert available_backends("cuda")["triton"] == (False, "triton is not installed (test)")
    with pytest.raises(RuntimeError, match="'triton' .*cannot run on cpu: triton is not installed"):
        selective_scan(**make_inputs(L=4), backend="triton")
    assert resolve_backend("auto", "cuda") in ("mamba_ssm", "chunked")


def test_package_imports_without_triton():
    """models.scan imports and reports the slot unavailable when triton cannot be imported at all."""
    code = ("import sys; sys.modules['triton'] = None\n"
            "from models.scan import available_backends, selective_scan\n"
            "ok, reason = available_backends('cuda')['triton']\n"
            "assert not ok and 'triton is not installed' in reason, reason\n"
            "print('ok')\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def test_registered_kernel_overrides_the_builtin(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    register_backend("triton", chunked_scan, lambda device: (True, "test kernel"))
    try:
        assert available_backends("cpu")["triton"] == (True, "test kernel")
    finally:
        unregister_backend("triton")
    assert get_backend("triton").fn is triton_scan
    assert not available_backends("cpu")["triton"][0]


def test_kernels_load_in_the_mode_triton_was_imported_in(monkeypatch):
    """The kernels follow triton's own mode, not TRITON_INTERPRET as it is now; loading leaves it as it was."""
    from triton.runtime.interpreter import InterpretedFunction

    monkeypatch.setenv("TRITON_INTERPRET", "0" if IN_INTERPRETER else "1")
    ts._kernels.cache_clear()
    try:
        assert isinstance(ts._kernels().forward_kernel, InterpretedFunction) == IN_INTERPRETER
        assert os.environ["TRITON_INTERPRET"] == ("0" if IN_INTERPRETER else "1")
    finally:
        ts._kernels.cache_clear()


@compiled
def test_interpreter_requested_too_late(monkeypatch):
    """TRITON_INTERPRET=1 set after triton was imported in compiled mode: refused, with the reason."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    ok, reason = available_backends("cpu")["triton"]
    assert not ok and "set after this process imported triton" in reason
    with pytest.raises(RuntimeError, match="before triton's first import"):
        selective_scan(**make_inputs(L=4), backend="triton")
    with pytest.raises(RuntimeError, match="CPU tensors need Triton's interpreter"):
        triton_scan(**make_inputs(L=4))


def _compile_sm90(fn, pointers: dict[str, str], constexprs: dict):
    """Compile a kernel for an H100/H200 (sm_90) without a GPU: Triton's front end, its passes and ptxas."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = {name: pointers.get(name, "i32") for name in fn.arg_names}
    sig.update({name: "constexpr" for name in constexprs})
    src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 1})


@compiled
@pytest.mark.parametrize("low,flags", [
    ("*bf16", dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, HAS_INIT=True)),
    ("*fp32", dict(HAS_D=False, HAS_Z=False, HAS_BIAS=False, SOFTPLUS=False, HAS_INIT=False)),
])
def test_kernels_compile_for_sm90(low, flags):
    """What only the compiler checks (globals, loop-carried types, layouts); and the register layout the design
    relies on: channels across the 32 lanes, a channel's N states in one thread (threadsPerWarp [32, 1])."""
    k = ts._kernels()
    tile = dict(BD=ts.BLOCK_D, BN=16)
    big = {f"{n}_ptr": low for n in ("u", "delta", "B", "C", "z", "go", "out", "du", "ddelta", "dz")}
    f32 = {f"{n}_ptr": "*fp32" for n in ("A2", "Dp", "bias", "E", "Hh", "dtsum", "S", "H", "scratch",
                                         "dA", "dB", "dC", "dD", "dbias")}
    ptrs = {**big, **f32}
    summary = {n: flags[n] for n in ("HAS_Z", "HAS_BIAS", "SOFTPLUS")}
    _compile_sm90(k.chunk_summary_kernel, ptrs, dict(ADJOINT=True, **summary, **tile))
    _compile_sm90(k.carry_kernel, ptrs, dict(ADJOINT=True, **tile))
    fwd = _compile_sm90(k.forward_kernel, ptrs, dict(**flags, **tile))
    bwd = _compile_sm90(k.backward_kernel, ptrs, dict(**flags, **tile))
    for c in (fwd, bwd):
        assert "threadsPerWarp = [32, 1]" in c.asm["ttgir"] and "threadsPerWarp = [2, 16]" not in c.asm["ttgir"]


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


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
@pytest.mark.parametrize("batch,L,dtype", CUDA_CASES)
def test_cuda_matches_chunked_at_dim_shapes(batch, L, dtype, monkeypatch):
    """DiM-H's scan (d_inner 3072, N 16) against the chunked backend (float32, TF32 off) on the same rounded inputs:
    out and every gradient, ‖x − ref‖/‖ref‖ within 1e-4 (float32 inputs) or 2e-2 (bfloat16)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
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
        out = selective_scan(**leaves, backend="triton")
        assert scan_backend() == "triton" and out.dtype == dtype
        grads = torch.autograd.grad(out, list(leaves.values()), go.to(dtype))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    tol = CUDA_TOL[dtype]
    assert rel_err(out, ref) <= tol, f"out: {rel_err(out, ref):.2e}"
    for name, g, r in zip(NAMES, grads, ref_grads, strict=True):
        limit = min(tol, CUDA_TOL_FP32_GRADS) if g.dtype == torch.float32 else tol
        assert g.dtype == inputs[name].dtype and rel_err(g, r) <= limit, f"{name}: {rel_err(g, r):.2e} > {limit}"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_auto_picks_triton(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    mamba = available_backends("cuda")["mamba_ssm"][0]
    selective_scan(**make_inputs(L=64, device="cuda"))
    assert scan_backend() == ("mamba_ssm" if mamba else "triton")


def test_auto_never_picks_the_interpreter_on_cuda(monkeypatch):
    """With TRITON_INTERPRET=1 the triton backend can run on CUDA tensors, thousands of times slower: "auto" must
    not choose it (and chooses the fused kernel when it is the compiled one)."""
    from models.scan import registry

    def status(reason):
        return lambda name, device: ((name == "triton"), reason if name == "triton" else "absent")

    monkeypatch.setattr(registry, "backend_status",
                        status("Triton interpreter on CUDA tensors (TRITON_INTERPRET=1; correctness only, slow)"))
    assert registry._auto(torch.device("cuda")) == "chunked"
    monkeypatch.setattr(registry, "backend_status", status("fused Triton kernel on CUDA"))
    assert registry._auto(torch.device("cuda")) == "triton"
