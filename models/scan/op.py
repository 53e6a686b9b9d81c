"""The selective-scan operator ``dimbench_scan::selective_scan`` and its public wrapper ``selective_scan``.

A ``torch.library.custom_op`` so that

- the meta device and FakeTensorMode use a fake kernel (output shape only), so models built on meta run;
- ``FlopCounterMode`` counts it with the registered formula (``models.scan.flops``) without descending into
  whichever backend computes it: every backend reports the same count;
- autograd goes through ``register_autograd``: the forward saves its inputs, and what a backend's forward keeps
  for its backward (``triton``: the chunk states; an empty tensor for the others), returned by the op as a second,
  non-differentiable output; the backward is a second custom op, ``dimbench_scan::selective_scan_backward``.
  For a backend with an analytic backward (``chunked``: ``chunked.chunked_scan_backward``, which recomputes the
  states itself, blockwise, without autograd; ``triton``, given the saved chunk states) it calls that; for the
  others (``reference``, ``mamba_ssm``, a registered backend without one) it recomputes the backend's forward
  under autograd and differentiates it. Both are exact, and only one scan's intermediates
  live at a time. Its FLOP formula is an estimate, 3x the forward (``flops.scan_backward_flops``).

The backend name is an argument of the op (a str), resolved by the wrapper (``registry.resolve_backend``), outside
any graph torch.compile traces (``_resolve_untraced``).
"""

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from .common import check_inputs
from .flops import scan_backward_flops, scan_flops
from .registry import choice_reason, get_backend, resolve_backend

_LAST_BACKEND: list = [None, None]  # the name and the device type of the last scan computed


def scan_backend() -> str | None:
    """Name of the backend that computed the last selective scan in this process (None before any).

    Calls on the meta device or under FakeTensorMode compute nothing and do not change it.
    """
    return _LAST_BACKEND[0]


def scan_backend_reason() -> str | None:
    """Why that backend ran (``registry.choice_reason``: the environment variable, or auto's choice with every
    candidate passed over and its reason, e.g. "cpu_fused unavailable (no C compiler ...)"); None before any."""
    name, device = _LAST_BACKEND
    return None if name is None else choice_reason(name, device)


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = True,
                   backend: str | None = None) -> Tensor:
    """Selective scan (Mamba-1), computed in float32 whatever the input dtype.

    Shapes: u, delta, z (batch, d_inner, L); A (d_inner, N); B, C (batch, N, L); D, delta_bias (d_inner,).
    Returns out (batch, d_inner, L), contiguous, in u's dtype, where

        Δ = softplus(delta + delta_bias) (softplus only if delta_softplus);  Ā_t = exp(Δ_t·A)
        x_t = Ā_t ⊙ x_{t-1} + Δ_t·B_t·u_t  (x_0 = 0; state (d_inner, N) per batch element)
        y_t = Σ_n x_t[:, n]·C_t[n];  out = y + D·u;  out = out·silu(z) if z is given.

    ``backend``: None or "auto" (the environment variable DIMBENCH_SCAN_BACKEND if set, else automatic),
    or one of "reference", "chunked", "mamba_ssm", "triton"; a named backend that cannot run raises.
    """
    check_inputs(u, delta, A, B, C, D, z, delta_bias)
    name = _resolve_untraced(backend, u.device)
    return torch.ops.dimbench_scan.selective_scan(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), name)[0]


@torch.compiler.assume_constant_result
def _resolve_untraced(backend: str | None, device: torch.device) -> str:
    """``resolve_backend``, run as plain Python when torch.compile traces a call: its result (a name) becomes a
    constant of the graph. Traced, the resolution breaks the graph on CUDA, where "auto" tries to import mamba_ssm
    (an import dynamo cannot trace: about 3 breaks per scan, 150 per DiM-H forward). So a compiled model keeps the
    backend chosen when it was traced, as it keeps any other Python decision: recompile to change it."""
    return resolve_backend(backend, device)


@torch.library.custom_op("dimbench_scan::selective_scan", mutates_args=())
def _scan_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
             z: Tensor | None, delta_bias: Tensor | None, delta_softplus: bool,
             backend: str) -> tuple[Tensor, Tensor]:
    """(out, saved): the scan, and what the backend's forward keeps for its backward (empty for most)."""
    name = resolve_backend(backend, u.device)
    impl = get_backend(name)
    # No autograd state in the forward: the backward recomputes (see the module docstring).
    with torch.no_grad():
        if impl.forward_saving is not None:
            out, saved = impl.forward_saving(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        else:
            out, saved = impl.fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus), u.new_empty(0)
    if out.shape != u.shape or out.dtype != u.dtype or out.device != u.device:
        raise RuntimeError(f"scan backend {name!r} returned {tuple(out.shape)} {out.dtype} on {out.device}; "
                           f"expected {tuple(u.shape)} {u.dtype} on {u.device}")
    _LAST_BACKEND[:] = [name, u.device.type]
    return _fresh(out.contiguous(), (u, delta, A, B, C, D, z, delta_bias)), saved


@_scan_op.register_fake
def _scan_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend):
    impl = get_backend(resolve_backend(backend, u.device))
    saved = u.new_empty(0) if impl.saved_like is None else impl.saved_like(u, A)
    return torch.empty_like(u, memory_format=torch.contiguous_format), saved


@torch.library.custom_op("dimbench_scan::selective_scan_backward", mutates_args=())
def _scan_backward_op(grad_out: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                      D: Tensor | None, z: Tensor | None, delta_bias: Tensor | None, saved: Tensor,
                      delta_softplus: bool, backend: str, needs: list[bool]) -> list[Tensor]:
    """Gradients (contiguous, each input's dtype) of the inputs among (u, delta, A, B, C, D, z, delta_bias)
    whose ``needs`` flag is set and that are not None, in that order: the backend's analytic backward if it has
    one (given ``saved`` if its forward keeps something), else autograd of its forward, recomputed here."""
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    impl = get_backend(resolve_backend(backend, u.device))
    if impl.backward is not None:
        kept = {} if impl.forward_saving is None else {"saved": saved}
        with torch.no_grad():
            grads = impl.backward(grad_out, *inputs, delta_softplus, needs, **kept)
        return [_fresh(g, inputs + (grad_out,)) for g in grads]
    fn = impl.fn
    with _autograd_dispatch_enabled(), torch.enable_grad():
        leaves = [None if t is None else t.detach().requires_grad_(bool(need))
                  for t, need in zip(inputs, needs, strict=True)]
        wrt = [t for t, need in zip(leaves, needs, strict=True) if t is not None and need]
        out = fn(*leaves, delta_softplus)
        grads = torch.autograd.grad(out, wrt, grad_out, allow_unused=True)
    return [_fresh((torch.zeros_like(x) if g is None else g).contiguous(), inputs + (grad_out,))
            for g, x in zip(grads, wrt, strict=True)]


@_scan_backward_op.register_fake
def _scan_backward_fake(grad_out, u, delta, A, B, C, D, z, delta_bias, saved, delta_softplus, backend, needs):
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    return [torch.empty_like(t, memory_format=torch.contiguous_format)
            for t, need in zip(inputs, needs, strict=True) if t is not None and need]


# Custom-op kernels run with the autograd dispatch keys excluded (the op's own autograd formula stands for
# them), so ops inside the backward kernel would record nothing. The recompute (backends without an analytic
# backward) needs autograd, so the backward kernel lifts that exclusion for its duration. This uses torch._C's
# dispatch-key guards (private, present and used by torch's own higher-order ops since torch 2.1);
# tests/test_scan.py checks the gradients.
_AUTOGRAD_KEYS = (torch._C.DispatchKeySet(torch._C.DispatchKey.AutogradFunctionality)
                  | torch._C.DispatchKeySet(torch._C.DispatchKey.AutogradOther)
                  | torch._C.DispatchKeySet(torch._C.DispatchKey.AutogradNestedTensor)
                  | torch._C.DispatchKeySet(torch._C.DispatchKey.ADInplaceOrView))


def _autograd_dispatch_enabled():
    excluded = torch._C._dispatch_tls_local_exclude_set() - _AUTOGRAD_KEYS
    return torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), excluded)


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.delta_softplus = delta_softplus
    ctx.backend = backend


def _backward(ctx, grad_out, _grad_saved):
    # grad_out as autograd hands it (a transposed view in DiM): each backend's backward takes any strides (the C
    # kernel reads them; triton makes it contiguous itself), so no copy is made for one that does not need it.
    *inputs, saved = ctx.saved_tensors
    needs = [bool(n) and t is not None for n, t in zip(ctx.needs_input_grad[:8], inputs, strict=True)]
    if not any(needs):
        return (None,) * 10
    grads = iter(torch.ops.dimbench_scan.selective_scan_backward(
        grad_out, *inputs, saved, ctx.delta_softplus, ctx.backend, needs))
    return (*[next(grads) if need else None for need in needs], None, None)


_scan_op.register_autograd(_backward, setup_context=_setup_context)


def _fresh(t: Tensor, inputs) -> Tensor:
    """``t``, or a copy of it if it shares memory with an input (custom ops must not return aliases)."""
    ptr = t.untyped_storage().data_ptr()
    if any(x is not None and x.untyped_storage().data_ptr() == ptr for x in inputs):
        return t.clone()
    return t


@register_flop_formula(torch.ops.dimbench_scan.selective_scan)
def _scan_flop_formula(u_shape, delta_shape, A_shape, B_shape, C_shape, D_shape, z_shape, delta_bias_shape,
                       *args, out_shape=None, **kwargs) -> int:
    batch, d_inner, length = u_shape
    return scan_flops(batch, d_inner, length, A_shape[1], D_shape is not None, z_shape is not None)


@register_flop_formula(torch.ops.dimbench_scan.selective_scan_backward)
def _scan_backward_flop_formula(grad_shape, u_shape, delta_shape, A_shape, B_shape, C_shape, D_shape, z_shape,
                                delta_bias_shape, saved_shape, *args, out_shape=None, **kwargs) -> int:
    batch, d_inner, length = u_shape
    return scan_backward_flops(batch, d_inner, length, A_shape[1], D_shape is not None, z_shape is not None)
