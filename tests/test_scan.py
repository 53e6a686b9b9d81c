"""Selective-scan operator: every backend against a float64 recurrence written here, plus the op's plumbing
(meta/fake kernels, FLOP formula, autograd, backend choice, environment override, clear errors).

Shapes are small so the whole file runs in seconds on a 2-core CPU.
"""

from __future__ import annotations

import pytest
import torch
from scan_oracle import recurrence64
from torch.utils.flop_counter import FlopCounterMode

from models.scan import (
    ENV_VAR,
    available_backends,
    chunked_scan,
    default_chunk_size,
    reference_scan,
    register_backend,
    scan_backend,
    scan_backward_flops,
    scan_flops,
    selective_scan,
    unregister_backend,
)

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
CPU_BACKENDS = [name for name, (ok, _) in available_backends("cpu").items() if ok]


def make_inputs(batch=2, d_inner=5, L=37, N=4, *, D=True, z=True, delta_bias=True, seed=0,
                dtype=torch.float32, device="cpu"):
    """Random inputs in the regime Mamba runs in: A < 0, moderate Δ, so state survives across many steps
    (a wrong carry between chunks changes the output well above the tolerance)."""
    g = torch.Generator().manual_seed(seed)
    t = {
        "u": torch.randn(batch, d_inner, L, generator=g),
        "delta": torch.randn(batch, d_inner, L, generator=g) * 0.5 - 1.0,
        "A": -(torch.rand(d_inner, N, generator=g) * 1.5 + 0.1),
        "B": torch.randn(batch, N, L, generator=g),
        "C": torch.randn(batch, N, L, generator=g),
        "D": torch.randn(d_inner, generator=g) if D else None,
        "z": torch.randn(batch, d_inner, L, generator=g) if z else None,
        "delta_bias": torch.randn(d_inner, generator=g) * 0.3 if delta_bias else None,
    }
    return {k: None if v is None else v.to(device=device, dtype=dtype) for k, v in t.items()}


def assert_matches_float64(run, inputs, delta_softplus=True, rtol=2e-5, atol=2e-5):
    """run(**leaves, delta_softplus=...) must match recurrence64 in value and in every input's gradient."""
    leaves = {k: None if v is None else v.detach().clone().requires_grad_() for k, v in inputs.items()}
    leaves64 = {k: None if v is None else v.detach().double().requires_grad_() for k, v in inputs.items()}
    out = run(**leaves, delta_softplus=delta_softplus)
    ref = recurrence64(**leaves64, delta_softplus=delta_softplus)
    assert out.dtype == inputs["u"].dtype and out.shape == ref.shape
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=atol)

    grad_out = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    names = [k for k, v in leaves.items() if v is not None]
    grads = torch.autograd.grad(out, [leaves[k] for k in names], grad_out.to(out))
    grads64 = torch.autograd.grad(ref, [leaves64[k] for k in names], grad_out)
    for name, g, g64 in zip(names, grads, grads64, strict=True):
        scale = g64.abs().max().item()
        torch.testing.assert_close(g.double(), g64, rtol=1e-4, atol=1e-5 * max(1.0, scale),
                                   msg=lambda m, name=name: f"gradient of {name}: {m}")


# ---------------------------------------------------------------------------------------------- correctness


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("L", [1, 5, 37])
@pytest.mark.parametrize("options", [
    dict(D=True, z=True, delta_bias=True, delta_softplus=True),
    dict(D=False, z=False, delta_bias=False, delta_softplus=False),
    dict(D=True, z=False, delta_bias=True, delta_softplus=False),
    dict(D=False, z=True, delta_bias=False, delta_softplus=True),
], ids=["all", "none", "D-bias", "z-softplus"])
def test_backend_matches_float64_recurrence(backend, L, options):
    options = dict(options)
    softplus = options.pop("delta_softplus")
    inputs = make_inputs(L=L, **options)
    if not softplus:  # without softplus Δ must already be positive
        inputs["delta"] = inputs["delta"].abs() * 0.3
    assert_matches_float64(lambda **kw: selective_scan(**kw, backend=backend), inputs, delta_softplus=softplus)
    assert scan_backend() == backend


@pytest.mark.parametrize("L,chunk", [(37, 1), (37, 4), (37, 5), (37, 36), (37, 37), (37, 100), (64, 8), (2, 1)])
def test_chunked_any_chunk_size_matches(L, chunk):
    """Lengths that are and are not multiples of the chunk size, one chunk, one step per chunk."""
    inputs = make_inputs(L=L)
    assert_matches_float64(lambda **kw: chunked_scan(**kw, chunk_size=chunk), inputs)


def test_chunked_long_sequence_many_chunks():
    """Long enough that the cross-chunk carry runs through dozens of chunks (default chunk size)."""
    inputs = make_inputs(batch=1, d_inner=3, L=400, N=3, z=False)
    inputs["delta"] = inputs["delta"] - 2.0  # slow decay: the state carries across many chunks
    assert default_chunk_size(1, 3, 400, 3, torch.device("cpu")) < 400
    out = chunked_scan(**inputs)
    torch.testing.assert_close(out.double(), recurrence64(**inputs), rtol=5e-5, atol=5e-5)


def test_chunk_decay_flushes_subnormals_to_zero():
    """The whole-chunk decay is exactly 0 where exp would be subnormal in float32 (slow on x86), else exp."""
    from models.scan.chunked import _chunk_decay

    dt_sum = torch.tensor([[[1.0, 5.0, 6.0]]])                        # (batch 1, 1 chunk, d_inner 3)
    At = torch.tensor([[-10.0, -17.0, -15.0], [-1.0, -1.0, -1.0]])   # (N 2, d_inner 3): args -10, -85, -90; -1, -5, -6
    expected = torch.exp(dt_sum.unsqueeze(2) * At)
    expected[0, 0, 0, 2] = 0.0                                        # exp(-90) is subnormal in float32
    assert 0 < torch.exp(torch.tensor(-90.0)) < torch.finfo(torch.float32).tiny
    for track in (False, True):
        torch.testing.assert_close(_chunk_decay(dt_sum, At, track), expected, rtol=0, atol=0)


def test_chunked_strong_decay_matches():
    """Large Δ·|A|: per-step decays are normal floats, but a whole chunk's decay underflows (and is flushed
    to zero); the output and gradients still match the float64 recurrence."""
    inputs = make_inputs(L=40, N=4)
    inputs["A"] = inputs["A"] * 10.0
    inputs["delta"] = inputs["delta"] + 2.5       # Δ ≈ 2, |A| up to 16: e^-32 per step, e^-250 per chunk of 8
    assert_matches_float64(lambda **kw: chunked_scan(**kw, chunk_size=8), inputs)


def _analytic_vs_float64(inputs, delta_softplus=True, needs=(True,) * 8, backward=None, **kwargs):
    """An analytic backward's gradients (default chunked_scan_backward) against autograd of the float64
    recurrence, for a random grad_out."""
    from models.scan.chunked import chunked_scan_backward

    backward = backward or chunked_scan_backward

    leaves64 = {k: None if v is None else v.detach().double().requires_grad_() for k, v in inputs.items()}
    ref = recurrence64(**leaves64, delta_softplus=delta_softplus)
    grad_out = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    names = [k for k, need in zip(NAMES, needs, strict=True) if need and inputs[k] is not None]
    grads64 = torch.autograd.grad(ref, [leaves64[k] for k in names], grad_out)
    with torch.no_grad():
        grads = backward(grad_out.float(), *[inputs[k] for k in NAMES], delta_softplus, list(needs), **kwargs)
    assert len(grads) == len(names)
    for name, g, g64 in zip(names, grads, grads64, strict=True):
        assert g.dtype == inputs[name].dtype and g.shape == inputs[name].shape and g.is_contiguous(), name
        scale = g64.abs().max().item()
        torch.testing.assert_close(g.double(), g64, rtol=1e-4, atol=1e-5 * max(1.0, scale),
                                   msg=lambda m, name=name: f"gradient of {name}: {m}")
    return grads


@pytest.mark.parametrize("L,chunk,block", [
    (1, None, None), (2, 1, 1), (5, 2, 1), (37, None, None), (37, 5, 2), (37, 5, 3), (37, 4, 4), (37, 37, 5),
    (37, 37, 36), (37, 100, 100), (64, 8, 3), (64, 16, 16), (23, 6, 4),
])
@pytest.mark.parametrize("options", [
    dict(D=True, z=True, delta_bias=True, delta_softplus=True),
    dict(D=False, z=False, delta_bias=False, delta_softplus=False),
    dict(D=True, z=False, delta_bias=True, delta_softplus=False),
    dict(D=False, z=True, delta_bias=False, delta_softplus=True),
], ids=["all", "none", "D-bias", "z-softplus"])
def test_chunked_analytic_backward_matches_float64(L, chunk, block, options):
    """The chunked backend's analytic backward (no autograd through the recurrence) against autograd of the
    float64 recurrence: every input's gradient, lengths that are and are not multiples of the chunk size T,
    one chunk, one step per chunk, blocks of S steps that do and do not divide T."""
    options = dict(options)
    softplus = options.pop("delta_softplus")
    inputs = make_inputs(L=L, **options)
    if not softplus:  # without softplus Δ must already be positive
        inputs["delta"] = inputs["delta"].abs() * 0.3
    _analytic_vs_float64(inputs, softplus, chunk_size=chunk, block_size=block)


@pytest.mark.parametrize("chunk,block", [(8, 8), (8, 3), (40, 7)])
def test_chunked_analytic_backward_strong_decay(chunk, block):
    """Large Δ·|A|: whole-chunk decays underflow (flushed to zero) in the adjoint scan's carries too."""
    inputs = make_inputs(L=40, N=4)
    inputs["A"] = inputs["A"] * 10.0
    inputs["delta"] = inputs["delta"] + 2.5
    _analytic_vs_float64(inputs, chunk_size=chunk, block_size=block)


def test_chunked_analytic_backward_long_sequence_slow_decay():
    """Many chunks and blocks with slow decay: g carries across chunk and block boundaries matter."""
    inputs = make_inputs(batch=1, d_inner=3, L=300, N=3, z=False)
    inputs["delta"] = inputs["delta"] - 2.0
    _analytic_vs_float64(inputs, chunk_size=17, block_size=5)


@pytest.mark.parametrize("needs", [
    (True, False, False, False, False, False, False, False),
    (False, True, False, False, False, False, False, False),
    (False, False, True, False, False, False, False, False),
    (False, False, False, True, True, False, False, False),
    (False, False, False, False, False, True, True, True),
    (True, False, True, False, True, False, True, False),
])
def test_chunked_analytic_backward_only_needed_gradients(needs):
    """Only the gradients asked for are returned, in order, with the values of the full computation."""
    inputs = make_inputs(L=19)
    full = _analytic_vs_float64(inputs, chunk_size=4, block_size=3)
    part = _analytic_vs_float64(inputs, needs=needs, chunk_size=4, block_size=3)
    expected = [g for g, need in zip(full, needs, strict=True) if need]
    for g, e in zip(part, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_chunked_op_backward_is_analytic(monkeypatch):
    """Through the op, the chunked backend's backward is chunked_scan_backward: the forward function runs once
    (the forward), never again for the backward; the gradients match the float64 recurrence."""
    import dataclasses

    from models.scan import registry

    calls = {"fn": 0, "backward": 0}
    chunked = registry.get_backend("chunked")

    def fn(*args):
        calls["fn"] += 1
        return chunked.fn(*args)

    def backward(*args):
        calls["backward"] += 1
        return chunked.backward(*args)

    monkeypatch.setitem(registry._BACKENDS, "chunked", dataclasses.replace(chunked, fn=fn, backward=backward))
    assert_matches_float64(lambda **kw: selective_scan(**kw, backend="chunked"), make_inputs(L=29))
    assert calls == {"fn": 1, "backward": 1}


def test_chunked_backward_bfloat16_matches_float32():
    """bf16 inputs: the analytic gradients are the float32 ones of the same (bf16-rounded) numbers, rounded."""
    inputs = {k: None if v is None else v.bfloat16() for k, v in make_inputs(L=21).items()}
    grad = torch.randn(2, 5, 21, generator=torch.Generator().manual_seed(3))
    results = []
    for dtype in (torch.bfloat16, torch.float32):
        leaves = {k: None if v is None else v.to(dtype).requires_grad_() for k, v in inputs.items()}
        out = selective_scan(**leaves, backend="chunked")
        names = [k for k in NAMES if leaves[k] is not None]
        results.append(torch.autograd.grad(out, [leaves[k] for k in names], grad.to(dtype)))
    for name, g16, g32 in zip(names, *results, strict=True):
        assert g16.dtype == torch.bfloat16, name
        # grad_out itself is rounded to bf16 in the bf16 call, so allow bf16 rounding on top.
        torch.testing.assert_close(g16.float(), g32, rtol=2e-2, atol=2e-2 * max(1.0, g32.abs().max().item()))


def test_default_chunk_size_sequential_for_large_steps():
    """On a CPU, when one step of the plain recurrence is already >= 2**16 floats, T = L (no chunking);
    below that, at least 4 chunks as before; on CUDA ⌈√L⌉."""
    cpu = torch.device("cpu")
    assert default_chunk_size(64, 128, 54, 16, cpu) == 54          # batch·N·d_inner = 2**17
    assert default_chunk_size(32, 128, 366, 16, cpu) == 366        # 2**16
    assert default_chunk_size(16, 128, 366, 16, cpu) == 92         # 2**15: 4 chunks
    assert default_chunk_size(1, 1024, 366, 16, cpu) == 46         # 2**14: 8 chunks
    assert default_chunk_size(64, 128, 54, 16, torch.device("meta")) == 8


def test_backward_block_size():
    """The backward's block S on a CPU: one block (T) while a block buffer stays under 2**23 floats, else
    2**20 floats' worth of steps; on other devices ⌈√T⌉."""
    from models.scan.chunked import _block_size

    cpu = torch.device("cpu")
    assert _block_size(54, 1 << 17, cpu) == 54          # 54·2**17 < 2**23: one block
    assert _block_size(366, 1 << 17, cpu) == 8          # 2**20 // 2**17
    assert _block_size(64, 1 << 17, cpu) == 8           # exactly 2**23: blocks
    assert _block_size(3, 1 << 30, cpu) == 1
    assert _block_size(100, 1 << 17, torch.device("meta")) == 10


@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 100, 90), (1, 1, 1)])
def test_copy_transposed_both_strategies(shape):
    """One 3-D copy (small matrices) and one 2-D copy per batch element (large ones) give the same result."""
    from models.scan.chunked import _copy_transposed

    src = torch.randn(shape)
    dst = torch.empty(shape[0], shape[2], shape[1])
    _copy_transposed(dst, src)
    assert torch.equal(dst, src.transpose(1, 2))


def test_chunked_inference_path_equals_autograd_path():
    """The in-place path (no autograd) and the autograd path compute the same numbers."""
    inputs = make_inputs(L=53)
    with torch.no_grad():
        fast = chunked_scan(**inputs, chunk_size=6)
    leaves = {k: None if v is None else v.clone().requires_grad_() for k, v in inputs.items()}
    tracked = chunked_scan(**leaves, chunk_size=6)
    assert tracked.grad_fn is not None
    torch.testing.assert_close(fast, tracked.detach(), rtol=1e-6, atol=1e-6)


def test_inputs_left_untouched_and_strided_inputs():
    """The in-place fast path must not write into the caller's tensors; strided views (as a model passes
    them, e.g. z sliced from a fused projection) give the same result as contiguous copies."""
    inputs = make_inputs(L=29)
    before = {k: None if v is None else v.clone() for k, v in inputs.items()}
    with torch.inference_mode():
        out = selective_scan(**inputs, backend="chunked")
    for k, v in inputs.items():
        if v is not None:
            assert torch.equal(v, before[k]), f"{k} was modified"
    strided = dict(inputs)
    for k in ("u", "delta", "z"):
        strided[k] = inputs[k].transpose(1, 2).contiguous().transpose(1, 2)  # (b, d, L) view of (b, L, d)
    strided["B"] = torch.cat([inputs["B"], inputs["C"]], dim=1)[:, : inputs["B"].shape[1]]
    with torch.inference_mode():
        out_strided = selective_scan(**strided, backend="chunked")
    assert not strided["u"].is_contiguous()
    # Equal up to float32 rounding (vectorised and strided elementwise loops may round the last bit apart).
    torch.testing.assert_close(out_strided, out, rtol=1e-6, atol=1e-7)
    assert out.is_contiguous()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bfloat16_computed_in_float32(backend):
    """bf16 in, bf16 out; the arithmetic is float32: the result equals the float32 scan of the same
    (bf16-rounded) numbers, rounded once; and it is close to the float32 scan of the unrounded inputs."""
    inputs = make_inputs(L=21)
    bf16 = {k: None if v is None else v.bfloat16() for k, v in inputs.items()}
    out = selective_scan(**bf16, backend=backend)
    assert out.dtype == torch.bfloat16
    same_numbers = selective_scan(**{k: None if v is None else v.float() for k, v in bf16.items()},
                                  backend=backend)
    torch.testing.assert_close(out, same_numbers.bfloat16(), rtol=0, atol=0)
    full = selective_scan(**inputs, backend=backend)
    torch.testing.assert_close(out.float(), full, rtol=3e-2, atol=3e-2)


def test_backward_in_bfloat16_gives_bfloat16_grads():
    leaves = {k: None if v is None else v.bfloat16().requires_grad_() for k, v in make_inputs(L=9).items()}
    selective_scan(**leaves, backend="chunked").float().sum().backward()
    for k, v in leaves.items():
        assert v.grad is not None and v.grad.dtype == torch.bfloat16 and v.grad.shape == v.shape, k


def test_no_autograd_state_without_grad():
    leaves = {k: None if v is None else v.requires_grad_() for k, v in make_inputs(L=11).items()}
    with torch.no_grad():
        out = selective_scan(**leaves)
    assert out.grad_fn is None and not out.requires_grad
    with torch.inference_mode():
        out = selective_scan(**leaves)
    assert out.grad_fn is None and out.is_inference()


def test_only_requested_gradients():
    inputs = make_inputs(L=8)
    u = inputs["u"].clone().requires_grad_()
    inputs["u"] = u
    out = selective_scan(**inputs)
    (g,) = torch.autograd.grad(out.sum(), [u])
    assert g.shape == u.shape and g.abs().sum() > 0


# ------------------------------------------------------------------------------------------ op machinery


@pytest.mark.parametrize("backend", [b for b in ("chunked", "reference", "cpu_fused") if b in CPU_BACKENDS])
def test_opcheck(backend):
    from models.scan.op import _scan_op

    t = make_inputs(batch=2, d_inner=3, L=6, N=2)
    args = tuple(None if t[k] is None else t[k].requires_grad_() for k in NAMES)
    torch.library.opcheck(_scan_op, (*args, True, backend))
    t2 = make_inputs(batch=1, d_inner=3, L=5, N=2, D=False, z=False, delta_bias=False)
    args2 = tuple(None if t2[k] is None else t2[k] for k in NAMES)
    torch.library.opcheck(_scan_op, (*args2, False, backend))


@pytest.mark.parametrize("D,z", [(True, True), (False, False), (True, False), (False, True)])
def test_meta_device_and_flop_formula(D, z):
    batch, d_inner, L, N = 2, 48, 1230, 16
    meta = make_inputs(batch, d_inner, 3, N, D=D, z=z, device="meta")  # shapes fixed below
    meta.update(u=torch.empty(batch, d_inner, L, device="meta"), delta=torch.empty(batch, d_inner, L, device="meta"),
                B=torch.empty(batch, N, L, device="meta"), C=torch.empty(batch, N, L, device="meta"),
                z=torch.empty(batch, d_inner, L, device="meta") if z else None)
    last = scan_backend()
    with FlopCounterMode(display=False) as counter:
        out = selective_scan(**meta)
    assert out.device.type == "meta" and out.shape == (batch, d_inner, L) and out.dtype == torch.float32
    expected = scan_flops(batch, d_inner, L, N, D, z)
    assert counter.get_total_flops() == expected
    assert expected == batch * d_inner * L * (7 * N + 1 + 2 * D + 4 * z)
    assert scan_backend() == last, "a meta call computes nothing and must not change scan_backend()"

    leaves = {k: None if v is None else v.requires_grad_() for k, v in meta.items()}
    with FlopCounterMode(display=False) as counter:
        selective_scan(**leaves).sum().backward()
    assert counter.get_total_flops() == expected + scan_backward_flops(batch, d_inner, L, N, D, z)
    assert leaves["A"].grad.shape == leaves["A"].shape and leaves["A"].grad.device.type == "meta"


def test_flop_conventions():
    assert scan_flops(1, 3072, 366, 16, True, True, convention="mamba") == 2 * (9 * 366 * 3072 * 16 + 2 * 3072 * 366)
    with pytest.raises(ValueError, match="convention"):
        scan_flops(1, 1, 1, 1, True, True, convention="papers")


def test_fake_tensor_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        t = make_inputs(L=3000)  # made inside the mode: fake, nothing allocated
        out = selective_scan(**t, backend="chunked")
    assert out.shape == (2, 5, 3000) and out.dtype == torch.float32


def test_bad_shapes_give_clear_errors():
    t = make_inputs(L=10)
    with pytest.raises(ValueError, match=r"B must have shape \(2, 4, 10\)"):
        selective_scan(**{**t, "B": t["B"][:, :, :9]})
    with pytest.raises(ValueError, match=r"A must have shape \(d_inner, d_state\) = \(5, N\)"):
        selective_scan(**{**t, "A": t["A"].t()})
    with pytest.raises(ValueError, match=r"D must have shape \(5,\)"):
        selective_scan(**{**t, "D": torch.ones(4)})
    with pytest.raises(ValueError, match=r"u must have shape \(batch, d_inner, L\)"):
        selective_scan(**{**t, "u": t["u"][0]})
    with pytest.raises(TypeError, match="u must be a floating-point tensor"):
        selective_scan(**{**t, "u": t["u"].long()})


# ------------------------------------------------------------------------------------------------ backends


def test_available_backends_report_reasons():
    status = available_backends("cpu")
    assert set(status) >= {"reference", "chunked", "cpu_fused", "mamba_ssm", "triton"}
    assert status["reference"][0] and status["chunked"][0]
    ok, reason = status["mamba_ssm"]
    assert not ok and reason, "mamba_ssm runs only on CUDA, so never on the CPU"
    ok, reason = status["triton"]
    assert not ok and "register_backend" in reason


CPU_AUTO = "cpu_fused" if available_backends("cpu")["cpu_fused"][0] else "chunked"


def test_auto_on_cpu_is_the_c_kernel_when_it_builds(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    selective_scan(**make_inputs(L=4), backend="reference")
    selective_scan(**make_inputs(L=4))
    assert scan_backend() == CPU_AUTO
    selective_scan(**make_inputs(L=4), backend="auto")
    assert scan_backend() == CPU_AUTO


def test_environment_variable_overrides_auto(monkeypatch):
    t = make_inputs(L=4)
    monkeypatch.setenv(ENV_VAR, "reference")
    selective_scan(**t)
    assert scan_backend() == "reference"
    selective_scan(**t, backend="chunked")  # an explicit argument wins over the environment
    assert scan_backend() == "chunked"
    monkeypatch.setenv(ENV_VAR, "no_such_kernel")
    with pytest.raises(ValueError, match=f"unknown scan backend 'no_such_kernel'.*{ENV_VAR}"):
        selective_scan(**t)
    monkeypatch.setenv(ENV_VAR, "mamba_ssm")
    with pytest.raises(RuntimeError, match=f"'mamba_ssm'.*{ENV_VAR}.*cannot run on cpu"):
        selective_scan(**t)


@pytest.mark.parametrize("name,error,match", [
    ("mamba_ssm", RuntimeError, "scan backend 'mamba_ssm' .*cannot run on cpu"),
    ("triton", RuntimeError, "scan backend 'triton' .*cannot run on cpu: no Triton"),
    ("fast", ValueError, "unknown scan backend 'fast'"),
])
def test_unavailable_backend_raises(name, error, match, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(error, match=match):
        selective_scan(**make_inputs(L=4), backend=name)


def test_register_backend_fills_the_triton_slot(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    calls = []

    def kernel(*args):
        calls.append(args[0].shape)
        return reference_scan(*args)

    register_backend("triton", kernel, lambda device: (device.type == "cpu", "test kernel, CPU only"))
    try:
        assert available_backends("cpu")["triton"] == (True, "test kernel, CPU only")
        inputs = make_inputs(L=7)
        assert_matches_float64(lambda **kw: selective_scan(**kw, backend="triton"), inputs)
        assert scan_backend() == "triton"
        assert len(calls) == 2, "forward, then the backward's recompute through the same backend"
        selective_scan(**inputs)
        assert scan_backend() == CPU_AUTO, "auto picks triton only on CUDA"
        with pytest.raises(ValueError, match="already registered"):
            register_backend("triton", kernel, lambda device: (True, ""))
    finally:
        unregister_backend("triton")
    assert not available_backends("cpu")["triton"][0]
    with pytest.raises(ValueError, match="identifier other than 'auto'"):
        register_backend("auto", kernel, lambda device: (True, ""))


def test_register_backend_with_analytic_backward(monkeypatch):
    """A registered backend may bring its own backward; the op calls it instead of differentiating fn."""
    from models.scan.chunked import chunked_scan_backward

    monkeypatch.delenv(ENV_VAR, raising=False)
    calls = []

    def kernel(*args):
        calls.append("fn")
        return chunked_scan(*args)

    def backward(*args):
        calls.append("backward")
        return chunked_scan_backward(*args)

    with pytest.raises(TypeError, match="callable"):
        register_backend("triton", kernel, lambda device: (True, ""), backward="no")
    register_backend("triton", kernel, lambda device: (device.type == "cpu", "test kernel"), backward=backward)
    try:
        assert_matches_float64(lambda **kw: selective_scan(**kw, backend="triton"), make_inputs(L=7))
        assert calls == ["fn", "backward"]
    finally:
        unregister_backend("triton")


def test_mamba_ssm_backend_when_available():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ok, reason = available_backends(device)["mamba_ssm"]
    if not ok:
        pytest.skip(f"mamba_ssm unavailable on {device}: {reason}")
    inputs = make_inputs(batch=2, d_inner=8, L=33, device=device)
    assert_matches_float64(lambda **kw: selective_scan(**kw, backend="mamba_ssm"), inputs, rtol=1e-4, atol=1e-4)
    assert scan_backend() == "mamba_ssm"


def test_triton_backend_when_available():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ok, reason = available_backends(device)["triton"]
    if not ok:
        pytest.skip(f"triton scan unavailable on {device}: {reason}")
    inputs = make_inputs(batch=2, d_inner=8, L=33, device=device)
    assert_matches_float64(lambda **kw: selective_scan(**kw, backend="triton"), inputs, rtol=1e-4, atol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
@pytest.mark.parametrize("L", [366, 1000])
def test_chunked_on_cuda_matches_float64_cpu_recurrence(L):
    """The pure-PyTorch chunked backend on CUDA tensors (what the GPU runs until a Triton kernel exists)
    against the float64 recurrence on the CPU: values and gradients. The contraction with C is a matmul,
    which TF32 would round to 10 mantissa bits, so TF32 is switched off for the check."""
    cpu = make_inputs(batch=2, d_inner=64, L=L, N=16)
    cuda = {k: None if v is None else v.cuda() for k, v in cpu.items()}
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        leaves = {k: None if v is None else v.clone().requires_grad_() for k, v in cuda.items()}
        out = selective_scan(**leaves, backend="chunked")
        assert out.device.type == "cuda" and scan_backend() == "chunked"
        leaves64 = {k: None if v is None else v.double().requires_grad_() for k, v in cpu.items()}
        ref = recurrence64(**leaves64)
        torch.testing.assert_close(out.cpu().double(), ref, rtol=1e-4, atol=1e-4)
        grad_out = torch.randn(ref.shape, dtype=torch.float64)
        names = [k for k, v in leaves.items() if v is not None]
        grads = torch.autograd.grad(out, [leaves[k] for k in names], grad_out.float().cuda())
        grads64 = torch.autograd.grad(ref, [leaves64[k] for k in names], grad_out)
        for name, g, g64 in zip(names, grads, grads64, strict=True):
            torch.testing.assert_close(g.cpu().double(), g64, rtol=1e-3, atol=1e-4 * max(1.0, g64.abs().max().item()),
                                       msg=lambda m, name=name: f"gradient of {name}: {m}")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
