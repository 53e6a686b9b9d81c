"""The ``triton`` scan backend (``models/scan/triton_fused.py``): forward, chunk states and every gradient against
the float64 recurrence under Triton's interpreter on the CPU (small shapes; chunks of 16 steps and channel blocks
of 2 there, so L = 37 crosses three chunks, the last partial, and d_inner 5 three blocks, the last partial; one
case with 16 steps per thread, one with the CUDA tiles themselves); DiM's real strides and a token-major layout;
the deterministic mode; the operator keeping the chunk states for the backward; the kernels compiled for sm_90 and
``benchmarks/scan_static.py``'s targets (no GPU needed); and, marked ``cuda``, the kernel against the ``chunked``
backend at DiM-H's shapes and the deterministic mode bit-identical across runs.

The interpreter tests (``@interpreted``) run in a subprocess with TRITON_INTERPRET=1
(``test_interpreter_tests_in_a_subprocess``; ``tests/scan_cases.py`` says why);
``TRITON_INTERPRET=1 pytest tests/test_scan_triton_fused.py`` runs them directly. Tolerances: ``scan_cases.TOL``.
"""

from __future__ import annotations

import json
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
    rel_err,
    run_interpreted,
)

from models.scan import ENV_VAR, triton_runtime
from models.scan import triton_fused as tf
from models.scan.triton_fused import CUDA_TILES, Tile, Tiles


@pytest.fixture
def interpret(monkeypatch):
    """No backend override or deterministic mode from the caller's shell; the interpreter is on."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.delenv(tf.DETERMINISTIC_ENV, raising=False)
    assert IN_INTERPRETER


@compiled
def test_interpreter_tests_in_a_subprocess():
    """Every ``@interpreted`` test of this file, in a process started with TRITON_INTERPRET=1: all must pass."""
    run_interpreted(__file__, globals())


def check(inputs, softplus=True, tiles=None, deterministic=None, tol=None):
    """Forward and every gradient of the kernels against autograd of recurrence64; returns (out, S, grads)."""
    kept = {}

    def run(grad_out):
        kept["out"], kept["S"] = tf.triton_scan_saving(**inputs, delta_softplus=softplus, tiles=tiles)
        kept["grads"] = tf.triton_scan_backward(grad_out, *(inputs[k] for k in NAMES), softplus, (True,) * 8,
                                                saved=kept["S"], deterministic=deterministic, tiles=tiles)
        return kept["out"], kept["grads"]

    check_against_oracle(inputs, run, softplus, tol)
    return kept["out"], kept["S"], kept["grads"]


@interpreted
@pytest.mark.parametrize("options,softplus", [
    (dict(), True),
    (dict(D=False, z=False, delta_bias=False), False),
    (dict(z=False), True),
    (dict(D=False, delta_bias=False), False),
])
def test_forward_and_gradients_match_float64(interpret, options, softplus):
    """L = 37 (three chunks, the last partial), d_inner 5 (three channel blocks, the last partial), batch 2."""
    check(make_inputs(**options, softplus=softplus), softplus=softplus)


@interpreted
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(interpret, dtype):
    check(make_inputs(batch=1, d_inner=3, L=29, N=3, dtype=dtype, seed=3))


@interpreted
def test_sixteen_steps_per_thread(interpret):
    """The code path of the CUDA tiles (16 steps per thread, forward and backward) at interpreter sizes: chunks of
    32 steps, L = 70 (three chunks, the last partial)."""
    tiles = Tiles(fwd=Tile(bd=2, lanes=2, te=16, warps=1), bwd=Tile(bd=2, lanes=2, te=16, warps=1))
    check(make_inputs(batch=1, d_inner=3, L=70, N=2, seed=4), tiles=tiles)


@interpreted
@pytest.mark.slow
def test_cuda_tiles_under_the_interpreter(interpret):
    """The CUDA tiles themselves (forward 8 channels, 16 lanes, 16 steps per thread; backward 4 channels, 32 lanes,
    8 steps): d_inner 10 (partial blocks both ways), L = 300 (two chunks of 256)."""
    check(make_inputs(batch=1, d_inner=10, L=300, N=2, seed=9), tiles=CUDA_TILES)


@interpreted
def test_chunk_states_are_the_recurrence_states(interpret):
    """S[b, k] is the state entering chunk k (zeros for the first): the float64 recurrence's state after step
    k·BT - 1. The backward starts every chunk from it."""
    inputs = make_inputs(batch=2, d_inner=3, L=40, N=3, seed=5)
    out, S = tf.triton_scan_saving(**inputs)
    BT = tf.INTERPRET_TILES.steps
    assert S.shape == (2, 3, 3, 3) == tuple(tf.saved_like(inputs["u"], inputs["A"]).shape)
    x = torch.zeros(2, 3, 3, dtype=torch.float64)
    dt = torch.nn.functional.softplus(inputs["delta"].double() + inputs["delta_bias"].double()[:, None])
    A, B = inputs["A"].double(), inputs["B"].double()
    for t in range(40):
        if t % BT == 0:
            torch.testing.assert_close(S[:, t // BT], x.float(), rtol=1e-5, atol=1e-6)
        dtu = dt[:, :, t] * inputs["u"].double()[:, :, t]
        x = torch.exp(dt[:, :, t, None] * A) * x + dtu[:, :, None] * B[:, None, :, t]


@interpreted
def test_dim_strides_and_token_major(interpret):
    """The inputs as models/dim.py hands them at batch 2 (z a view of in_proj's (2·d_inner, b, L) product; B, C
    slices of x_proj's (b, R + 2N, L)) and token-major (u, Δ, z as transposed (b, L, d_inner) tensors): read through
    their strides, no copy, the same results as from contiguous inputs, to the bit."""
    base = make_inputs(batch=2, d_inner=3, L=21, N=3, seed=7)
    b, d, L = base["u"].shape
    xz = torch.cat([base["u"], base["z"]], dim=1).permute(1, 0, 2).contiguous().permute(1, 0, 2)
    x_dbl = torch.cat([torch.randn(b, 2, L), base["B"], base["C"]], dim=1)
    dim_layout = dict(base, u=xz[:, :d], z=xz[:, d:], B=x_dbl[:, 2:5], C=x_dbl[:, 5:])
    token_major = {k: v.transpose(1, 2).contiguous().transpose(1, 2) if k in ("u", "delta", "z") else v
                   for k, v in base.items()}
    assert not dim_layout["z"].is_contiguous() and not dim_layout["B"].is_contiguous()
    assert token_major["u"].stride() == (L * d, 1, d)
    out, S = tf.triton_scan_saving(**base)
    go = torch.randn(b, d, L)
    grads = tf.triton_scan_backward(go, *base.values(), True, (True,) * 8, saved=S)
    for other in (dim_layout, token_major):
        out2, S2 = tf.triton_scan_saving(**other)
        assert torch.equal(out2, out) and torch.equal(S2, S)
        grads2 = tf.triton_scan_backward(go, *other.values(), True, (True,) * 8, saved=S2)
        for name, g, g2 in zip(NAMES, grads, grads2, strict=True):
            assert torch.equal(g2, g), name


@interpreted
def test_deterministic_mode(interpret, monkeypatch):
    """The deterministic backward (dB, dC per channel block, summed in a fixed order) gives what the atomic one
    does, and is selected by the argument or the environment variable. (Bit-stability across runs is a CUDA
    test: the interpreter runs programs one after another, so its atomics are ordered too.)"""
    inputs = make_inputs(batch=1, d_inner=5, L=19, N=2, seed=11)
    _, _, atomic = check(inputs, deterministic=False)
    _, _, fixed = check(inputs, deterministic=True)
    for name, a, f in zip(NAMES, atomic, fixed, strict=True):
        torch.testing.assert_close(f, a, rtol=1e-6, atol=1e-7, msg=lambda m, name=name: f"{name}: {m}")
    monkeypatch.setenv(tf.DETERMINISTIC_ENV, "1")
    calls = []
    real = tf._Prepared.backward_launch
    monkeypatch.setattr(tf._Prepared, "backward_launch",
                        lambda self, go, saved, buf, det: calls.append(det) or real(self, go, saved, buf, det))
    tf.triton_scan_backward(torch.randn(1, 5, 19), *inputs.values(), True, (True,) * 8)
    assert calls == [True]


@interpreted
def test_through_the_operator_keeps_the_chunk_states(interpret, monkeypatch):
    """selective_scan(backend="triton") with torch.autograd: values and gradients against float64; the forward
    runs once, its chunk states go to the backward through the operator (no second forward)."""
    forwards = []
    real = tf.triton_scan_saving
    monkeypatch.setattr(tf, "triton_scan_saving", lambda *a, **k: forwards.append(1) or real(*a, **k))
    from models.scan import registry

    monkeypatch.setattr(registry, "_BUILTIN_TRITON", registry.Backend(
        "triton", tf.triton_scan, tf.triton_status, "", tf.triton_scan_backward, tf.triton_scan_saving,
        tf.saved_like))
    check_through_the_operator("triton", make_inputs(L=23, seed=8))
    assert len(forwards) == 1


@interpreted
@pytest.mark.slow
def test_opcheck(interpret):
    """torch.library.opcheck of the operator with the triton backend: the fake kernel's shapes (the chunk states'
    included) match the real ones, the autograd registration and the schema hold."""
    from models.scan.op import _scan_op

    t = make_inputs(batch=1, d_inner=2, L=5, N=2)          # one program, one chunk: opcheck runs it many times
    torch.library.opcheck(_scan_op, (*(None if t[k] is None else t[k].requires_grad_() for k in NAMES), True,
                                     "triton"))


@interpreted
def test_strong_decay_and_softplus_threshold(interpret):
    """DiM's A = -[1..N] with large Δ (decays underflow within a chunk) and Δ + bias above 20 (softplus is the
    identity there, its derivative 1)."""
    inputs = make_inputs(batch=1, d_inner=3, L=40, N=16, strong=True, seed=5)
    inputs["delta"][:, :, ::7] = 21.0
    check(inputs)


# ----------------------------------------------------------------------------------------- without a kernel run

def test_deterministic_default(monkeypatch):
    monkeypatch.delenv(tf.DETERMINISTIC_ENV, raising=False)
    prev = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(False)
        assert not tf.deterministic_default()
        monkeypatch.setenv(tf.DETERMINISTIC_ENV, "1")
        assert tf.deterministic_default()
        monkeypatch.delenv(tf.DETERMINISTIC_ENV)
        torch.use_deterministic_algorithms(True)
        assert tf.deterministic_default()
    finally:
        torch.use_deterministic_algorithms(prev)


def test_tiles_are_checked():
    with pytest.raises(ValueError, match="chunk differently"):
        Tiles(fwd=Tile(8, 16, 16, 4), bwd=Tile(4, 32, 16, 4)).check(True)
    with pytest.raises(ValueError, match="bad tile"):
        Tile(8, 32, 16, 4).check(True)         # 8 channels x 32 lanes is not 4 warps
    CUDA_TILES.check(True)


@compiled
def test_op_on_meta_returns_the_chunk_states_shape():
    """The fake kernel gives the saved states their real shape (torch.compile and FakeTensor memory see them)."""
    u = torch.empty(2, 6, 600, device="meta")
    A = torch.empty(6, 16, device="meta")
    args = (u, u, A, torch.empty(2, 16, 600, device="meta"), torch.empty(2, 16, 600, device="meta"),
            None, None, None, True, "triton")
    out, saved = torch.ops.dimbench_scan.selective_scan(*args)
    assert out.shape == u.shape and saved.shape == (2, tf.chunks(600, CUDA_TILES), 6, 16)
    out, saved = torch.ops.dimbench_scan.selective_scan(*args[:-1], "chunked")
    assert saved.numel() == 0


@compiled
@pytest.mark.parametrize("dtype", ["fp32"])
def test_kernels_compile_for_sm90_without_the_options(dtype):
    """What the interpreter cannot catch: the kernels compile for sm_90 without D, z, Δ-bias and softplus too (the
    full set is compiled by scan_static.py below), and the scans run on the blocked layout the design relies on:
    TE consecutive steps per thread."""
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    b, d, L, N = 1, 3072, 1230, 16
    big = {"dtype": dt, "device": "meta"}
    inputs = {"u": torch.empty(b, d, L, **big), "delta": torch.empty(b, d, L, **big),
              "A": torch.empty(d, N, device="meta"), "B": torch.empty(b, N, L, **big), "C": torch.empty(b, N, L, **big)}
    kernels = tf._kernels()
    for launch, tile in zip(tf.static_launches(**inputs, delta_softplus=False), (CUDA_TILES.fwd, CUDA_TILES.bwd),
                            strict=True):
        compiled_kernel = triton_runtime.compile_for_gpu(getattr(kernels, launch.kernel), launch.args, launch.kwargs)
        ttgir = compiled_kernel.asm["ttgir"]
        assert f"sizePerThread = [1, {tile.te}]" in ttgir, launch.kernel


@compiled
@pytest.mark.slow
def test_scan_static_meets_the_targets(tmp_path):
    """benchmarks/scan_static.py on the CPU (bf16, the triton backend): its JSON has every kernel's numbers and
    the targets (forward <= 16 SASS and <= 1.25 MUFU per element, backward <= 60, no spills) are met."""
    out = tmp_path / "static.json"
    run = subprocess.run([sys.executable, "benchmarks/scan_static.py", "--json", str(out), "--dtypes", "bf16",
                          "--backends", "triton", "--check"], capture_output=True, text=True, cwd=ROOT,
                         timeout=900, env={**os.environ, "TRITON_INTERPRET": "0"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    doc = json.loads(out.read_text())
    kernels = {r["kernel"]: r for r in doc["kernels"]}
    assert set(kernels) == {"scan_fwd_kernel", "scan_bwd_kernel", "scan_bwd_kernel[deterministic]"}
    for r in kernels.values():
        assert r["registers"] > 0 and r["spill_instructions"] == 0 and r["modelled_us"] > 0
    fwd = next(t for t in doc["per_scan"] if t["phase"] == "forward")
    assert fwd["instructions_per_element"] <= 16 and fwd["mufu_per_element"] <= 1.25
    assert doc["targets_missed"] == [] and "targets (forward" in run.stdout


# ---------------------------------------------------------------------------------------------- on a CUDA GPU

@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
@pytest.mark.parametrize("batch,L,dtype", CUDA_CASES)
def test_cuda_matches_chunked_at_dim_shapes(batch, L, dtype, monkeypatch):
    """DiM-H's scan (d_inner 3072, N 16) against the chunked backend: ``scan_cases.check_against_chunked_on_cuda``."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv(tf.DETERMINISTIC_ENV, raising=False)
    check_against_chunked_on_cuda("triton", batch, L, dtype)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
@pytest.mark.parametrize("batch,L", [(1, 1230), (2, 4494)])
def test_cuda_deterministic_mode_is_bit_identical(batch, L, monkeypatch):
    """DiM-H's channels, bf16, DiM's strides: the deterministic backward twice gives the same bits; the atomic one
    agrees with it to float32 rounding."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    inputs = make_inputs(batch=batch, d_inner=3072, L=L, N=16, dtype=torch.bfloat16, seed=L, device="cuda")
    inputs["delta"] = (inputs["delta"].float() - 2.0).to(torch.bfloat16)
    _, S = tf.triton_scan_saving(**inputs)
    go = torch.randn(inputs["u"].shape, device="cuda").to(torch.bfloat16)
    args = (go, *(inputs[k] for k in NAMES), True, (True,) * 8)
    first = tf.triton_scan_backward(*args, saved=S, deterministic=True)
    second = tf.triton_scan_backward(*args, saved=S, deterministic=True)
    atomic = tf.triton_scan_backward(*args, saved=S, deterministic=False)
    for name, a, b, c in zip(NAMES, first, second, atomic, strict=True):
        assert torch.equal(a, b), f"{name}: the deterministic mode differs between two runs"
        assert rel_err(c, a) <= (2e-2 if c.dtype == torch.bfloat16 else 1e-5), name
