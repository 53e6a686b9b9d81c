"""Which selective-scan backends exist, which can run on a device, and which one a call uses.

Backends are functions ``fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus) -> out`` (shapes as in
``models.scan.common``; out (batch, d_inner, L) in u's dtype) that are differentiable with ordinary autograd.
A backend may also have an analytic ``backward(grad_out, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
needs) -> [grads]`` (the contract of ``dimbench_scan::selective_scan_backward``, see ``op``); the operator's
backward calls it when present (``chunked``, ``cpu_fused``, ``triton`` and ``triton_v1`` have one), else
recomputes the backend's forward under autograd and differentiates it (``reference``, ``mamba_ssm``, and by default
a registered one). A backend whose forward keeps something for its backward (``triton``: the chunk states) has
``forward_saving(...) -> (out, saved)``, ``saved_like(u, A)`` (an empty tensor of saved's shape, for fake kernels)
and a backward taking ``saved=``; the operator keeps ``saved`` between the two.

Built in: ``reference`` and ``chunked`` (pure PyTorch, any device), ``cpu_fused`` (``models.scan.cpu_fused``: a
C kernel with an analytic backward, compiled with the system C compiler on first use into a per-user cache; CPU
tensors only), ``mamba_ssm`` (when the package imports and the tensors are on CUDA), ``triton``
(``models.scan.triton_fused``: the fused Triton kernel with its analytic backward) and ``triton_v1``
(``models.scan.triton_backend``: its predecessor, kept for comparison); both available on CUDA when triton imports,
and on the CPU only under TRITON_INTERPRET=1, Triton's slow interpreter, for tests; triton itself is imported only
when that availability is asked or a kernel runs, so the package imports and works without it).
``register_backend("triton", ...)`` puts another kernel in that slot (it takes precedence over the built-in one);
``unregister_backend("triton")`` brings the built-in one back.

Resolution (``resolve_backend``): None or "auto" means the environment variable ``DIMBENCH_SCAN_BACKEND`` when
set, else automatic: on CUDA mamba_ssm if available, else triton if available as the compiled kernel (never
Triton's interpreter, which TRITON_INTERPRET=1 would also allow on CUDA tensors), else chunked; on the CPU
cpu_fused when it builds, else chunked (the reason it did not build is in ``available_backends``, ``dimbench env``
and the rows' scan note); on any other device chunked. ``triton_v1`` runs only when named. A backend named
explicitly (argument or environment) that cannot run raises: there is no silent fallback. On the meta device nothing
runs, so any known name is accepted there.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .chunked import chunked_scan, chunked_scan_backward
from .cpu_fused import cpu_fused_scan, cpu_fused_scan_backward, cpu_fused_status
from .mamba_ssm_backend import mamba_ssm_scan, mamba_ssm_status
from .reference import reference_scan
from .triton_backend import triton_scan as triton_v1_scan
from .triton_backend import triton_scan_backward as triton_v1_scan_backward
from .triton_backend import triton_status as triton_v1_status
from .triton_fused import saved_like, triton_scan, triton_scan_backward, triton_scan_saving, triton_status

ENV_VAR = "DIMBENCH_SCAN_BACKEND"
#: names with a reserved meaning; "auto" is not a backend but a request for automatic choice.
RESERVED_SLOTS = ("reference", "chunked", "cpu_fused", "mamba_ssm", "triton", "triton_v1")
#: backends that cannot be unregistered.
BUILT_IN = ("reference", "chunked", "cpu_fused", "mamba_ssm", "triton_v1")


@dataclass(frozen=True)
class Backend:
    name: str
    fn: Callable
    is_available: Callable[[torch.device], tuple[bool, str]]
    description: str = ""
    backward: Callable | None = None
    forward_saving: Callable | None = None
    saved_like: Callable | None = None


def _everywhere(device) -> tuple[bool, str]:
    return True, "pure PyTorch, runs on any device"


_BACKENDS: dict[str, Backend] = {
    "reference": Backend("reference", reference_scan, _everywhere, "sequential recurrence, L steps (oracle)"),
    "chunked": Backend("chunked", chunked_scan, _everywhere, "chunked exact scan (2·T + K steps), analytic backward",
                       chunked_scan_backward),
    "cpu_fused": Backend("cpu_fused", cpu_fused_scan, cpu_fused_status, "fused C kernel for the CPU (built on first "
                         "use), analytic backward", cpu_fused_scan_backward),
    "mamba_ssm": Backend("mamba_ssm", mamba_ssm_scan, mamba_ssm_status, "mamba-ssm fused CUDA kernel"),
    "triton_v1": Backend("triton_v1", triton_v1_scan, triton_v1_status,
                         "first fused Triton kernel (decays recomputed per chunk), analytic backward",
                         triton_v1_scan_backward),
}

#: the built-in kernel of the "triton" slot, used while no other one is registered under that name.
_BUILTIN_TRITON = Backend("triton", triton_scan, triton_status,
                          "fused Triton kernel (time-parallel chunk scans, states kept for the backward)",
                          triton_scan_backward, triton_scan_saving, saved_like)


def register_backend(name: str, fn: Callable, is_available: Callable, *, description: str = "",
                     replace: bool = False, backward: Callable | None = None) -> None:
    """Add a backend (e.g. the "triton" kernel). ``is_available(device) -> (bool, reason)``.

    ``fn`` must follow the backend signature and be differentiable with autograd. ``backward``, if given, is
    its analytic backward (see the module docstring); without it the backward differentiates ``fn``.
    Re-registering an existing name raises unless ``replace=True``.
    """
    if not isinstance(name, str) or not name.isidentifier() or name == "auto":
        raise ValueError(f"register_backend: name must be an identifier other than 'auto'; got {name!r}")
    if not callable(fn) or not callable(is_available) or not (backward is None or callable(backward)):
        raise TypeError("register_backend: fn, is_available (and backward if given) must be callable")
    if name in _BACKENDS and not replace:
        raise ValueError(f"register_backend: a backend named {name!r} is already registered (pass replace=True)")
    _BACKENDS[name] = Backend(name, fn, is_available, description, backward)


def unregister_backend(name: str) -> None:
    """Remove a backend added with ``register_backend`` (the built-in ones cannot be removed; removing a kernel
    registered as "triton" brings back the built-in one)."""
    if name in BUILT_IN:
        raise ValueError(f"unregister_backend: {name!r} is built in")
    _BACKENDS.pop(name, None)


def known_backends() -> list[str]:
    """Every name a caller may request (registered or reserved), without "auto"."""
    return list(dict.fromkeys([*RESERVED_SLOTS, *_BACKENDS]))


def get_backend(name: str) -> Backend:
    if name not in _BACKENDS:
        if name == "triton":
            return _BUILTIN_TRITON
        raise ValueError(f"unknown scan backend {name!r}; known: {', '.join(['auto', *known_backends()])}")
    return _BACKENDS[name]


def backend_status(name: str, device) -> tuple[bool, str]:
    """(can ``name`` run on ``device``, reason)."""
    ok, reason = get_backend(name).is_available(torch.device(device))
    return bool(ok), str(reason)


def available_backends(device="cpu") -> dict[str, tuple[bool, str]]:
    """{name: (can run on ``device``, reason)} for every known backend, the triton slot included."""
    return {name: backend_status(name, device) for name in known_backends()}


def resolve_backend(requested: str | None, device) -> str:
    """The backend a call with ``backend=requested`` on ``device`` uses (see the module docstring)."""
    device = torch.device(device)
    source = "requested"
    if requested is None or requested == "auto":
        env = os.environ.get(ENV_VAR, "").strip()
        if env and env != "auto":
            requested, source = env, f"requested by the environment variable {ENV_VAR}"
        else:
            return _auto(device)
    if not isinstance(requested, str):
        raise TypeError(f"selective_scan: backend must be a str or None; got {type(requested).__name__}")
    if requested not in known_backends():
        raise ValueError(f"unknown scan backend {requested!r} ({source}); "
                         f"known: {', '.join(['auto', *known_backends()])}")
    if device.type == "meta":
        return requested  # shape inference only: nothing runs, every backend has the same fake kernel
    ok, reason = backend_status(requested, device)
    if not ok:
        raise RuntimeError(f"scan backend {requested!r} ({source}) cannot run on {device}: {reason}")
    return requested


def _auto(device: torch.device) -> str:
    return auto_backend(device)[0]


def auto_backend(device) -> tuple[str, str]:
    """(the backend "auto" picks on ``device``, why: each candidate passed over and its reason)."""
    device = torch.device(device)
    passed_over = []
    if device.type == "cuda":
        for name in ("mamba_ssm", "triton"):
            ok, reason = backend_status(name, device)
            # Under TRITON_INTERPRET=1 the triton backend also runs on CUDA tensors, thousands of times slower: a
            # correctness tool that is only ever used when named, never chosen automatically.
            if ok and "interpreter" not in reason.lower():
                return name, _why(name, device, passed_over, reason)
            passed_over.append(f"{name} not chosen ({reason})")
    elif device.type == "cpu":
        ok, reason = backend_status("cpu_fused", device)
        if ok:
            return "cpu_fused", _why("cpu_fused", device, passed_over, reason)
        passed_over.append(f"cpu_fused unavailable ({reason})")
    return "chunked", _why("chunked", device, passed_over, "pure PyTorch, runs on any device")


def _why(name: str, device: torch.device, passed_over: list[str], reason: str) -> str:
    return f"auto chose {name} on {device.type}: {reason}" + (f"; {'; '.join(passed_over)}" if passed_over else "")


def choice_reason(name: str, device) -> str:
    """Why the backend ``name`` runs when a model calls the scan without naming one (as dimbench's models do):
    the environment variable, or the automatic choice with every candidate passed over and its reason."""
    device = torch.device(device)
    env = os.environ.get(ENV_VAR, "").strip()
    if env and env != "auto":
        return f"requested by the environment variable {ENV_VAR}={env}"
    chosen, why = auto_backend(device)
    return why if chosen == name else f"requested by name ({why})"
