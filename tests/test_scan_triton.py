"""The ``triton_v1`` scan backend (the first Triton kernel, kept beside the ``triton`` one for comparison): forward
and every gradient against a float64 recurrence, under Triton's interpreter on the CPU (TRITON_INTERPRET=1, small
shapes: d_inner and N up to 16, L up to 300); availability and its reasons; the kernels compiled for sm_90 without a
GPU (what the interpreter cannot catch); and, marked ``cuda``, the kernel against the ``chunked`` backend at
DiM-H's shapes (``pytest -m cuda``, run by scripts/gpu_check.sh). What both Triton backends share (the slot, triton
missing, the mode per process) is tested here too.

The interpreter tests (``@interpreted``) run in a subprocess with TRITON_INTERPRET=1
(``test_interpreter_tests_in_a_subprocess``; ``tests/scan_cases.py`` says why);
``TRITON_INTERPRET=1 pytest tests/test_scan_triton.py`` runs them directly. Tolerances: ``scan_cases.TOL``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from scan_cases import (
    CUDA_CASES,
    IN_INTERPRETER,
    NAMES,
    ROOT,
    check_against_chunked_on_cuda,
    check_against_oracle,
    check_through_the_operator,
    compiled,
    interpreted,
    make_inputs,
    run_interpreted,
)

from models.scan import (
    ENV_VAR,
    available_backends,
    chunked_scan,
    register_backend,
    resolve_backend,
    scan_backend,
    selective_scan,
    triton_runtime,
    unregister_backend,
)
from models.scan import triton_backend as ts
from models.scan.registry import get_backend
from models.scan.triton_backend import triton_scan, triton_scan_backward


@pytest.fixture
def interpret(monkeypatch):
    """No backend override from the caller's shell; the interpreter is on (see the module docstring)."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert IN_INTERPRETER


@pytest.mark.slow
@compiled
def test_interpreter_tests_in_a_subprocess():
    """Every ``@interpreted`` test of this file, in a process started with TRITON_INTERPRET=1: all must pass."""
    run_interpreted(__file__, globals(), timeout=600)


def check(inputs, softplus=True, chunk=None, bwd_chunk=None, programs=None, tol=None):
    """Forward and every gradient of triton_scan / triton_scan_backward against autograd of recurrence64."""
    def run(grad_out):
        out = triton_scan(**inputs, delta_softplus=softplus, chunk_size=chunk)
        return out, triton_scan_backward(grad_out, *(inputs[k] for k in NAMES), softplus, (True,) * 8,
                                         chunk_size=bwd_chunk, programs=programs)

    check_against_oracle(inputs, run, softplus, tol)


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
    assert available_backends("cpu")["triton_v1"] == (True, "Triton interpreter (correctness only, slow)")
    assert resolve_backend("triton_v1", "cpu") == "triton_v1"
    assert resolve_backend(None, "cpu") in ("chunked", "cpu_fused"), "auto never picks the interpreter"


@interpreted
def test_through_the_operator_with_autograd(interpret):
    """selective_scan(backend="triton_v1"): values and torch.autograd gradients, through the op's analytic
    backward."""
    assert get_backend("triton_v1").backward is triton_scan_backward
    inputs = make_inputs(L=23, seed=8)
    check_through_the_operator("triton_v1", inputs)
    selective_scan(**inputs)
    assert scan_backend() in ("chunked", "cpu_fused"), "auto never picks the interpreter"


@compiled
@pytest.mark.parametrize("name,on_cuda", [("triton", "fused Triton scan kernel on CUDA"),
                                          ("triton_v1", "first fused Triton kernel (v1) on CUDA")])
def test_availability_and_reasons(monkeypatch, name, on_cuda):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ok, reason = available_backends("cpu")[name]
    assert not ok and "CUDA" in reason and "TRITON_INTERPRET=1" in reason
    with pytest.raises(RuntimeError, match=f"'{name}' .*cannot run on cpu: .*TRITON_INTERPRET=1"):
        resolve_backend(name, "cpu")
    with pytest.raises(RuntimeError, match="cannot run on cpu"):
        selective_scan(**make_inputs(L=4), backend=name)
    assert available_backends("cuda")[name] == (True, on_cuda)
    assert not available_backends("meta")[name][0]


def test_triton_missing(monkeypatch):
    """Without triton both Triton backends say so, an explicit request raises with that reason, and auto skips
    them."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(triton_runtime, "import_triton", lambda: (False, "triton is not installed (test)"))
    assert available_backends("cuda")["triton"] == (False, "triton is not installed (test)")
    assert available_backends("cuda")["triton_v1"] == (False, "triton is not installed (test)")
    with pytest.raises(RuntimeError, match="'triton' .*cannot run on cpu: triton is not installed"):
        selective_scan(**make_inputs(L=4), backend="triton")
    assert resolve_backend("auto", "cuda") in ("mamba_ssm", "chunked")


@pytest.mark.slow
def test_package_imports_without_triton():
    """models.scan imports and reports the slot unavailable when triton cannot be imported at all."""
    code = ("import sys; sys.modules['triton'] = None\n"
            "from models.scan import available_backends, selective_scan\n"
            "for name in ('triton', 'triton_v1'):\n"
            "    ok, reason = available_backends('cuda')[name]\n"
            "    assert not ok and 'triton is not installed' in reason, reason\n"
            "print('ok')\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def test_registered_kernel_overrides_the_builtin(monkeypatch):
    from models.scan import triton_fused

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    register_backend("triton", chunked_scan, lambda device: (True, "test kernel"))
    try:
        assert available_backends("cpu")["triton"] == (True, "test kernel")
    finally:
        unregister_backend("triton")
    assert get_backend("triton").fn is triton_fused.triton_scan
    assert not available_backends("cpu")["triton"][0]
    with pytest.raises(ValueError, match="built in"):
        unregister_backend("triton_v1")


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
        selective_scan(**make_inputs(L=4), backend="triton_v1")
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

@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
@pytest.mark.parametrize("batch,L,dtype", CUDA_CASES)
def test_cuda_matches_chunked_at_dim_shapes(batch, L, dtype, monkeypatch):
    """DiM-H's scan (d_inner 3072, N 16) against the chunked backend: ``scan_cases.check_against_chunked_on_cuda``."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    check_against_chunked_on_cuda("triton_v1", batch, L, dtype)


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
