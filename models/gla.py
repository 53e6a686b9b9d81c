"""Gated linear attention (GLA, Yang et al., arXiv 2312.06635) as DiG uses it: one custom op, several backends.

    from models.gla import gated_linear_attention, gla_backend
    o = gated_linear_attention(q, k, v, g, scale)   # q, k, g (B, H, N, dk); v (B, H, N, dv) -> o (B, H, N, dv)
    gla_backend()                                    # -> "chunked" (the backend that ran last)

Per head, with a state S (dk x dv, float32, S_0 = 0) and the forget gate g = log-decay ≤ 0 per key channel:

    S_t = diag(exp(g_t)) · S_{t-1} + k_tᵀ v_t,        o_t = (scale · q_t) · S_t          (causal, t = 1 ... N)

Backends (computed in float32 whatever the input dtype; output in q's dtype):

- ``recurrent``: the recurrence above, N steps (the oracle; slow);
- ``parallel``: the masked quadratic form o_i = Σ_{j≤i} Σ_c scale·q_ic·k_jc·exp(G_ic − G_jc)·v_j with G the
  running sum of g (the differences are taken before exponentiating: never exp(−G), which overflows once −G > 88);
- ``chunked`` (default on the CPU): chunks of 16 with the state carried between them, what the fused Triton
  kernel of the official code computes: inside a chunk the masked form on the local running sums (every exponent
  ≤ 0); across chunks (scale·q·exp(G̃)) · S_prev and S ← diag(exp(G̃_last)) S + (k·exp(G̃_last − G̃))ᵀ v;
- ``fla``: flash-linear-attention's Triton ``chunk_gla`` (the official code used ``fused_chunk_gla`` of fla at
  36743f3f, which current fla releases fold into ``chunk_gla``), when ``fla`` imports and the tensors are on CUDA.

Resolution: ``backend=None``/"auto" means the environment variable ``DIMBENCH_GLA_BACKEND`` when set, else ``fla``
on CUDA when it imports, else ``chunked``. A backend named explicitly that cannot run raises; nothing falls back
silently. The op ``dimbench_gla::gla`` has a fake kernel (meta device, FakeTensorMode) and a FLOP formula, the
analytic count of the recurrence: 2·dk·dv multiply-adds per (batch, head, token) for the state update and the
read-out, whichever backend computes it. Its backward recomputes the backend's forward under autograd.
"""

from __future__ import annotations

import functools
import inspect
import os

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

ENV_VAR = "DIMBENCH_GLA_BACKEND"
BACKENDS = ("recurrent", "parallel", "chunked", "fla")
CHUNK = 16

_LAST_BACKEND: list[str | None] = [None]


def gla_backend() -> str | None:
    """Name of the backend that computed the last GLA in this process (None before any; meta and fake calls,
    which compute nothing, do not change it)."""
    return _LAST_BACKEND[0]


# ---------------------------------------------------------------------------------------------------------------
# Pure PyTorch forms (float32, or float64 for the tests' agreement checks: they compute in their inputs' dtype)


def gla_recurrent(q: Tensor, k: Tensor, v: Tensor, g: Tensor, scale: float) -> Tensor:
    """The recurrence, token by token: (B, H, N, dk) x3, (B, H, N, dv) -> (B, H, N, dv)."""
    state = q.new_zeros(*q.shape[:2], q.shape[-1], v.shape[-1])
    out = []
    for i in range(q.shape[2]):
        state = state * g[:, :, i].exp().unsqueeze(-1) + k[:, :, i].unsqueeze(-1) * v[:, :, i].unsqueeze(-2)
        out.append(torch.einsum("bhk,bhkv->bhv", q[:, :, i] * scale, state))
    return torch.stack(out, dim=2)


def _masked_decayed_scores(q: Tensor, k: Tensor, cum: Tensor) -> Tensor:
    """scores[..., i, j] = Σ_c q_ic·k_jc·exp(cum_ic − cum_jc) for j ≤ i, else 0: (..., L, dk) -> (..., L, L)."""
    length = q.shape[-2]
    diff = cum.unsqueeze(-2) - cum.unsqueeze(-3)  # (..., L_i, L_j, dk), ≤ 0 wherever j ≤ i (the gates are ≤ 0)
    causal = torch.ones(length, length, dtype=q.dtype, device=q.device).tril().unsqueeze(-1)
    # Clamped at 0 so that the masked-out upper triangle cannot overflow; exact below it (twice as fast on the
    # CPU as exponentiating -inf there).
    decay = diff.clamp(max=0).exp() * causal
    return torch.einsum("...ic,...jc,...ijc->...ij", q, k, decay)


def gla_parallel(q: Tensor, k: Tensor, v: Tensor, g: Tensor, scale: float) -> Tensor:
    """The masked quadratic form over the whole sequence (memory N·N·dk per head: tests only)."""
    return _masked_decayed_scores(q * scale, k, g.cumsum(dim=2)) @ v


def gla_chunked(q: Tensor, k: Tensor, v: Tensor, g: Tensor, scale: float, chunk: int = CHUNK) -> Tensor:
    """Chunks of ``chunk`` tokens, the state carried across chunks (see the module docstring)."""
    b, h, n, dk = q.shape
    dv = v.shape[-1]
    pad = -n % chunk
    if pad:  # zero tokens at the end: causal, so they change nothing before them (as the Triton kernel pads)
        q, k, v, g = (torch.nn.functional.pad(x, (0, 0, 0, pad)) for x in (q, k, v, g))
    nc = (n + pad) // chunk
    q, k, g = (x.reshape(b, h, nc, chunk, dk) for x in (q, k, g))
    v = v.reshape(b, h, nc, chunk, dv)
    cum = g.cumsum(dim=3)  # local running sums, (b, h, nc, L, dk), all ≤ 0
    last = cum[:, :, :, -1:]  # (b, h, nc, 1, dk)
    q = q * scale
    intra = _masked_decayed_scores(q, k, cum) @ v  # (b, h, nc, L, dv)
    # What each chunk adds to the state, decayed to the chunk's end, and the chunk's total decay.
    update = (k * (last - cum).exp()).transpose(-1, -2) @ v  # (b, h, nc, dk, dv)
    decay = last.squeeze(3).exp().unsqueeze(-1)  # (b, h, nc, dk, 1)
    entering = []
    state = q.new_zeros(b, h, dk, dv)
    for c in range(nc):
        entering.append(state)
        state = decay[:, :, c] * state + update[:, :, c]
    inter = (q * cum.exp()) @ torch.stack(entering, dim=2)  # (b, h, nc, L, dv)
    return (intra + inter).reshape(b, h, nc * chunk, dv)[:, :, :n]


# ---------------------------------------------------------------------------------------------------------------
# flash-linear-attention (optional)


@functools.cache
def _fla_chunk_gla():
    """(function, layout) of fla's chunk_gla, or (None, reason). Layout "bhtd" for the 2024 API (the official
    pin), "bthd" for current releases (which take (B, T, H, D) and dropped ``head_first``)."""
    try:
        # optional dependency (flash-linear-attention, CUDA only): tried only when the fla backend is asked for
        from fla.ops.gla import chunk_gla
    except Exception as e:  # noqa: BLE001 - any import failure means "not available", with its reason
        return None, f"flash-linear-attention does not import ({type(e).__name__}: {str(e)[:120]})"
    params = inspect.signature(chunk_gla).parameters
    if "head_first" in params:
        return functools.partial(chunk_gla, head_first=False), "bthd"
    return chunk_gla, "bthd" if "cu_seqlens" in params else "bhtd"


def fla_status(device: torch.device) -> tuple[bool, str]:
    fn, how = _fla_chunk_gla()
    if fn is None:
        return False, how
    if torch.device(device).type != "cuda":
        return False, "fla's Triton kernels run on CUDA tensors only"
    return True, f"fla chunk_gla (Triton), layout {how}"


def gla_fla(q: Tensor, k: Tensor, v: Tensor, g: Tensor, scale: float) -> Tensor:
    fn, layout = _fla_chunk_gla()
    if fn is None:
        raise RuntimeError(layout)
    if layout == "bhtd":
        out = fn(q, k, v, g, scale=scale)
    else:
        out = fn(*(x.transpose(1, 2).contiguous() for x in (q, k, v, g)), scale=scale)  # Triton wants dense
    out = out[0] if isinstance(out, tuple) else out
    return out if layout == "bhtd" else out.transpose(1, 2)


# ---------------------------------------------------------------------------------------------------------------
# Resolution, the op, the public wrapper

_PURE = {"recurrent": gla_recurrent, "parallel": gla_parallel, "chunked": gla_chunked}


def available_backends(device: torch.device | str) -> dict[str, tuple[bool, str]]:
    pure = (True, "pure PyTorch, any device")
    return {**{name: pure for name in _PURE}, "fla": fla_status(torch.device(device))}


def resolve_backend(requested: str | None, device: torch.device) -> str:
    """The backend a call uses (see the module docstring); raises for an unknown or unavailable one."""
    name = requested if requested not in (None, "auto") else os.environ.get(ENV_VAR) or "auto"
    if name not in (*BACKENDS, "auto"):
        raise ValueError(f"unknown GLA backend {name!r}; known: auto, {', '.join(BACKENDS)}")
    if device.type == "meta":
        return "chunked" if name == "auto" else name
    if name == "auto":
        return "fla" if fla_status(device)[0] else "chunked"
    if name == "fla" and not (status := fla_status(device))[0]:
        raise RuntimeError(f"GLA backend 'fla' cannot run on {device}: {status[1]}")
    return name


def _compute(q, k, v, g, scale: float, backend: str) -> Tensor:
    if backend == "fla":
        return gla_fla(q, k, v, g, scale).to(q.dtype)
    dtype = q.dtype if q.dtype == torch.float64 else torch.float32
    out = _PURE[backend](*(x.to(dtype) for x in (q, k, v, g)), scale)
    return out.to(q.dtype)


def gated_linear_attention(q: Tensor, k: Tensor, v: Tensor, g: Tensor, scale: float | None = None,
                           backend: str | None = None) -> Tensor:
    """GLA (see the module docstring). q, k, g: (B, H, N, dk); v: (B, H, N, dv); ``scale`` default dk^-1/2.

    ``g`` is a log-decay, ≤ 0 (DiG's logsigmoid(·)/16): the parallel and chunked forms rely on it."""
    if q.dim() != 4 or k.shape != q.shape or g.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"GLA expects q, k, g (B, H, N, dk) and v (B, H, N, dv); got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}, g {tuple(g.shape)}")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    name = resolve_backend(backend, q.device)
    return torch.ops.dimbench_gla.gla(q, k, v, g, scale, name)


@torch.library.custom_op("dimbench_gla::gla", mutates_args=())
def _gla_op(q: Tensor, k: Tensor, v: Tensor, g: Tensor, scale: float, backend: str) -> Tensor:
    with torch.no_grad():
        out = _compute(q, k, v, g, scale, backend)
    _LAST_BACKEND[0] = backend
    return out.contiguous()


@_gla_op.register_fake
def _gla_fake(q, k, v, g, scale, backend):
    return q.new_empty(*q.shape[:3], v.shape[-1])


def _setup_context(ctx, inputs, output):
    q, k, v, g, scale, backend = inputs
    ctx.save_for_backward(q, k, v, g)
    ctx.scale, ctx.backend = scale, backend


def _backward(ctx, grad_out):
    """Recompute the backend's forward under autograd and differentiate it (exact; one layer's intermediates)."""
    leaves = [x.detach().requires_grad_(need) for x, need in zip(ctx.saved_tensors, ctx.needs_input_grad[:4],
                                                                  strict=True)]
    with torch.enable_grad():
        out = _compute(*leaves, ctx.scale, ctx.backend)
        wanted = [x for x in leaves if x.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad_out, allow_unused=True))
    return (*[next(grads) if x.requires_grad else None for x in leaves], None, None)


_gla_op.register_autograd(_backward, setup_context=_setup_context)


def gla_flops(batch: int, heads: int, tokens: int, dk: int, dv: int) -> int:
    """FLOPs (2 per multiply-add) of the recurrence: dk·dv for the state update and dk·dv for the read-out per
    (batch, head, token); the decay and the chunking overheads are not counted (peers.md §3.3)."""
    return 2 * 2 * batch * heads * tokens * dk * dv


@register_flop_formula(torch.ops.dimbench_gla.gla)
def _gla_flop_formula(q_shape, k_shape, v_shape, g_shape, *args, out_shape=None, **kwargs) -> int:
    batch, heads, tokens, dk = q_shape
    return gla_flops(batch, heads, tokens, dk, v_shape[-1])


__all__ = ["BACKENDS", "ENV_VAR", "available_backends", "gated_linear_attention", "gla_backend", "gla_chunked",
           "gla_flops", "gla_parallel", "gla_recurrent", "resolve_backend"]
