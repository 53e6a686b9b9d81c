"""Gated linear attention (models.gla): the three pure-PyTorch forms agree in float64, the op dispatches to the
backend asked for (and says which ran), differentiates, counts by its formula, and refuses what cannot run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dimbench.metrics.flops import count_flops
from models import gla

pytestmark = pytest.mark.usefixtures("one_thread")


def inputs(n: int, dtype=torch.float64, seed: int = 0, decay_shift: float = 0.0, b: int = 2, h: int = 3,
           dk: int = 8, dv: int = 5):
    """q, k (b, h, n, dk), v (b, h, n, dv), g = logsigmoid(·)/16 as DiG's gate makes it."""
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, h, n, dk, generator=gen, dtype=dtype) for _ in range(2))
    v = torch.randn(b, h, n, dv, generator=gen, dtype=dtype)
    g = F.logsigmoid(3 * torch.randn(b, h, n, dk, generator=gen, dtype=dtype) + decay_shift) / 16
    return q, k, v, g


@pytest.mark.parametrize("n", [1, 16, 37, 64])  # one token, one full chunk, a ragged last chunk, several chunks
@pytest.mark.parametrize("decay_shift", [0.0, -300.0])  # ordinary gates; decays strong enough to overflow exp(-G)
def test_recurrent_parallel_and_chunked_forms_agree_in_float64(n, decay_shift):
    q, k, v, g = inputs(n, decay_shift=decay_shift)
    scale = q.shape[-1] ** -0.5
    ref = gla.gla_recurrent(q, k, v, g, scale)
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(gla.gla_parallel(q, k, v, g, scale), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gla.gla_chunked(q, k, v, g, scale), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gla.gla_chunked(q, k, v, g, scale, chunk=5), ref, rtol=1e-12, atol=1e-12)


def test_recurrence_is_causal_and_gated():
    """Changing the last token changes only the last output; with g = 0 (no decay) and one head the output is the
    plain causal linear attention Σ_{j≤i} (q_i·k_j) v_j."""
    q, k, v, g = inputs(9)
    base = gla.gla_chunked(q, k, v, g, 0.5)
    v2 = v.clone()
    v2[:, :, -1] += 1.0
    moved = (gla.gla_chunked(q, k, v2, g, 0.5) - base).abs().amax(dim=(0, 1, 3))
    assert moved[:-1].max() == 0 and moved[-1] > 0
    zero = torch.zeros_like(g)
    plain = torch.tril(q @ k.transpose(-1, -2)) @ v
    torch.testing.assert_close(gla.gla_chunked(q, k, v, zero, 1.0), plain, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["recurrent", "parallel", "chunked"])
def test_op_runs_the_named_backend_in_float32_and_records_it(backend, monkeypatch):
    q, k, v, g = inputs(21)
    ref = gla.gla_recurrent(q, k, v, g, q.shape[-1] ** -0.5)
    monkeypatch.setenv(gla.ENV_VAR, backend)
    out = gla.gated_linear_attention(*(x.float() for x in (q, k, v, g)))
    assert gla.gla_backend() == backend and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    half = gla.gated_linear_attention(*(x.bfloat16() for x in (q, k, v, g)), backend="chunked")
    assert half.dtype == torch.bfloat16  # computed in float32, returned in the inputs' dtype


def test_gradients_match_autograd_through_the_recurrence():
    q, k, v, g = (x.requires_grad_() for x in inputs(19))
    out = gla.gated_linear_attention(q, k, v, g, 0.3, backend="chunked")
    weights = torch.randn_like(out)
    grads = torch.autograd.grad((out * weights).sum(), (q, k, v, g))
    ref = torch.autograd.grad((gla.gla_recurrent(q, k, v, g, 0.3) * weights).sum(), (q, k, v, g))
    for got, want in zip(grads, ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_flop_formula_is_the_recurrence_whatever_the_backend():
    """2·dk·dv multiply-adds per (batch, head, token), counted as one op on the meta device."""
    with torch.device("meta"):
        q, v = torch.empty(2, 18, 256, 32), torch.empty(2, 18, 256, 64)
    count = count_flops(gla.gated_linear_attention, q, q, v, q)
    assert count.flops == gla.gla_flops(2, 18, 256, 32, 64) == 2 * 2 * 2 * 18 * 256 * 32 * 64
    assert list(count.by_op) == ["dimbench_gla.gla"]


def test_unknown_or_unavailable_backend_is_refused(monkeypatch):
    q, k, v, g = inputs(4, dtype=torch.float32)
    with pytest.raises(ValueError, match="unknown GLA backend 'nope'"):
        gla.gated_linear_attention(q, k, v, g, backend="nope")
    monkeypatch.setattr(gla, "fla_status", lambda device: (False, "flash-linear-attention does not import (test)"))
    with pytest.raises(RuntimeError, match="'fla' cannot run on cpu: flash-linear-attention does not import"):
        gla.gated_linear_attention(q, k, v, g, backend="fla")
    assert gla.resolve_backend("auto", torch.device("cpu")) == "chunked"  # auto never picks what cannot run
    with pytest.raises(ValueError, match="expects q, k, g"):
        gla.gated_linear_attention(q, k[..., :3], v, g)


def test_fla_backend_is_only_offered_on_cuda():
    ok, reason = gla.available_backends("cpu")["fla"]
    assert not ok and ("CUDA" in reason or "does not import" in reason)


def test_timed_rows_record_the_gla_backend_that_ran():
    from dimbench.metrics import METRICS
    from dimbench.points import SweepPoint

    point = SweepPoint("t", "dig_tiny_4", 16, 16, 1, "float32", "cpu", ("latency",))
    rows = {m.metric: m for m in METRICS["latency"].measure(point, warmup=0, repeats=1)}
    extra = rows["latency_ms"].extra
    assert extra["gla_backend"] == "chunked" and "dimbench_gla::gla" in extra["custom_ops"]
    assert extra["scan_backend"] is None and extra["attention_backend"] == "none"
