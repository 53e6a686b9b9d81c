"""The ``cpu_fused`` backend: a fused C kernel for the selective scan on the CPU, compiled on first use.

Why: on a CPU the pure-PyTorch ``chunked`` scan makes about 9 passes over batch·L·N·d_inner floats in the forward
and 20 in the backward, each a separate tensor operation (and ``exp`` alone is one of them). At the sizes of
dimbench's tiny models (batch 32, d_inner 128, N 16, L = 54: DiM at 8 px with patch 2) that made a DiM training
step about 7x a DiT step of the same width and depth, the scan about three quarters of it. The kernel
(``cpu_fused.c``) runs the recurrence once per block of 8 channels with the block's state in registers and L1
cache: the forward reads each input once; the backward recomputes the block's states and decays into a scratch
buffer of 2·L·N·8 floats, then runs the adjoint recurrence back over them (see the C file). The inputs are read
at their own strides (DiM hands z and the output's gradient as transposed views; B and C need a step stride of
1), so no copy is made of a float32 input. Same recurrence and
order of operations per channel as ``reference``; the decays are 2**(Δ·A·log2 e) through a polynomial (relative
error < 2e-7; below 2**-126 flushed to 0, as the chunked backend's whole-chunk decays are).

Build: the system C compiler (``$CC``, else ``cc``) with -O3 (AVX2 and FMA when the CPU has them, by torch's
reading of the CPU), into a per-user cache folder (``$DIMBENCH_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/dimbench``
or ``~/.cache/dimbench``; created mode 0700), the file named by a hash of the source, the compiler's path and
``--version``, the flags and the CPU architecture. Each build writes its own temporary file in that folder and
renames it into place (``os.replace``, atomic), so processes building at once each load a complete library and
later processes load the cached one. A shared library is code this process will run: a cache folder that is not
the user's own, or that others may write to, is refused (with the reason), and a cached file that does not load
is rebuilt once. No compiler, or a failing build: the backend is unavailable with the reason
(``cpu_fused_status``; ``dimbench env`` and the rows' ``scan_backend_why`` show it), and ``auto`` takes
``chunked``.

Threads: the work items (batch element, block of 8 channels) are split into ``torch.get_num_threads()``
contiguous ranges run in Python threads (ctypes releases the GIL), so one knob sets the threads of the whole
model; a small problem stays on one thread (``MIN_WORK_PER_THREAD``). Each thread accumulates its own dA, dB, dC,
dD and Δ-bias gradients, summed afterwards (their last bits depend on the split; the forward does not).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

from .common import INPUT_NAMES

SOURCE = Path(__file__).with_name("cpu_fused.c")
#: channels per block of the kernel (its W): d_inner is zero-padded to a multiple of it
BLOCK = 8
_LOG2E = 1.4426950408889634
_BASE_FLAGS = ("-O3", "-std=c11", "-fPIC", "-shared", "-ffp-contract=fast", "-fno-math-errno", "-fno-trapping-math",
               "-fopenmp-simd")

_lock = threading.Lock()
_state: dict[str, object] = {}  # "lib" (ctypes.CDLL) or "error" (str), once tried
_pool: list[ThreadPoolExecutor | None] = [None]


def cache_dir() -> Path:
    """Where built kernels are kept (see the module docstring)."""
    env = os.environ.get("DIMBENCH_KERNEL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dimbench"


def _arch_flags() -> tuple[str, ...]:
    capability = str(torch.backends.cpu.get_cpu_capability())
    return ("-mavx2", "-mfma") if capability in ("AVX2", "AVX512") else ()


def _compiler() -> str:
    return os.environ.get("CC") or "cc"


def _library_path(source: bytes, flags: tuple[str, ...]) -> Path:
    """The cache file for this source, compiler, flags and machine."""
    try:
        version = subprocess.run([_compiler(), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"no C compiler ({_compiler()}): {e}") from e
    if not version.strip():
        raise RuntimeError(f"no C compiler ({_compiler()}): '{_compiler()} --version' printed nothing")
    key = hashlib.sha256(b"\0".join([source, _compiler().encode(), version.encode(), " ".join(flags).encode(),
                                     platform.machine().encode()])).hexdigest()[:20]
    return cache_dir() / f"scan_cpu_fused_{key}.so"


def _private_folder(folder: Path) -> None:
    """Create ``folder`` (mode 0700) or check that an existing one is the user's own and that nobody else may
    write to it: a library loaded from it runs as this process."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = folder.stat()
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise RuntimeError(f"the kernel cache {folder} belongs to another user (uid {st.st_uid}): set "
                           "DIMBENCH_KERNEL_CACHE to a folder of your own")
    if st.st_mode & 0o022:
        raise RuntimeError(f"the kernel cache {folder} may be written by others (mode {st.st_mode & 0o777:o}): "
                           "chmod go-w it or set DIMBENCH_KERNEL_CACHE to a private folder")


def _compile(flags: tuple[str, ...], path: Path) -> None:
    """Compile into a temporary file of the cache folder, then rename it to ``path`` (atomic: a racing process
    sees no file or a complete one, never a partial one)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        try:
            done = subprocess.run([_compiler(), *flags, str(SOURCE), "-o", tmp], capture_output=True, text=True,
                                  timeout=300)
        except (OSError, subprocess.SubprocessError) as e:
            raise RuntimeError(f"{_compiler()} could not be run: {e}") from e
        if done.returncode != 0:
            raise RuntimeError(f"{_compiler()} failed to build {SOURCE.name}: {done.stderr.strip()[-500:]}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _build() -> ctypes.CDLL:
    source = SOURCE.read_bytes()
    flags = (*_BASE_FLAGS, *_arch_flags())
    path = _library_path(source, flags)
    _private_folder(path.parent)
    if not path.exists():
        _compile(flags, path)
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:  # a damaged cached file (its name is the hash of what built it): build it again, once
        _compile(flags, path)
        lib = ctypes.CDLL(str(path))
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    i32 = ctypes.c_int
    lib.dimbench_scan_op_forward.argtypes = [ptr, ptr, ptr, i32] + [ptr] * 7 + [i64] * 5 + [ptr]
    lib.dimbench_scan_op_forward.restype = None
    lib.dimbench_scan_op_backward.argtypes = [ptr] * 4 + [i32] + [ptr] * 15 + [i64] * 5 + [ptr]
    lib.dimbench_scan_op_backward.restype = None
    lib.dimbench_conv_silu_forward.argtypes = [ptr] * 5 + [i64] * 5 + [ptr]
    lib.dimbench_conv_silu_forward.restype = None
    lib.dimbench_conv_silu_backward.argtypes = [ptr] * 9 + [i64] * 5 + [ptr]
    lib.dimbench_conv_silu_backward.restype = None
    return lib


def _library() -> ctypes.CDLL:
    """The loaded kernel (built on first use); RuntimeError with the reason when it cannot be."""
    with _lock:
        if "lib" not in _state and "error" not in _state:
            try:
                _state["lib"] = _build()
            except Exception as e:  # noqa: BLE001 - any build or load failure makes the backend unavailable
                _state["error"] = f"{type(e).__name__}: {e}"
        if "lib" in _state:
            return _state["lib"]  # type: ignore[return-value]
        raise RuntimeError(str(_state["error"]))


def cpu_fused_status(device) -> tuple[bool, str]:
    """(can the kernel run on ``device``, why)."""
    if torch.device(device).type != "cpu":
        return False, "a CPU kernel: it runs on CPU tensors only"
    try:
        _library()
    except RuntimeError as e:
        return False, f"the C kernel could not be built or loaded: {e}"
    return True, f"fused C kernel built with {_compiler()} ({' '.join(_arch_flags()) or 'no vector flags'})"


# ------------------------------------------------------------------------------------------------- running it
#: state updates (steps x states x channels) a thread should have before a second one is worth starting
MIN_WORK_PER_THREAD = 1 << 17


def _ranges(items: int, work_per_item: int) -> list[tuple[int, int]]:
    """Contiguous item ranges, one per thread (see the module docstring)."""
    threads = max(1, min(torch.get_num_threads(), items, items * work_per_item // MIN_WORK_PER_THREAD))
    cuts = [items * k // threads for k in range(threads + 1)]
    return [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]


def _run(calls) -> None:
    """Run the zero-argument callables, in parallel threads when there are several."""
    if len(calls) == 1:
        calls[0]()
        return
    with _lock:
        if _pool[0] is None or _pool[0]._max_workers < len(calls):  # noqa: SLF001 - sized once per thread count
            _pool[0] = ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="dimbench-scan")
        pool = _pool[0]
    for future in [pool.submit(c) for c in calls]:
        future.result()


def _threads_total(acc: list[tuple[Tensor, ...]], k: int) -> Tensor:
    """The sum over threads of each thread's k-th accumulator (the first one itself when there is one thread)."""
    return acc[0][k] if len(acc) == 1 else sum((a[k] for a in acc[1:]), acc[0][k])


def _p(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _f32(t: Tensor | None) -> Tensor | None:
    """float32, contiguous (the input itself when it already is)."""
    return None if t is None else t.float().contiguous()


def _f32_strided(t: Tensor | None) -> Tensor | None:
    """float32 at its own strides (the kernel reads views: DiM's z and ∂L/∂out are transposed ones, whose copies
    cost a fifth of the scan); a copy only when a dtype conversion makes one anyway."""
    return None if t is None else t.float()


def _f32_steps_contiguous(t: Tensor) -> Tensor:
    """float32 with a step stride of 1 (the kernel's loops over states read B and C at a fixed step)."""
    t = t.float()
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _strides(u, delta, z, go, B, C) -> Tensor:
    """The kernel's strides_t: element strides (batch, channel or state, step) of each input, zeros for one that
    is absent. Kept alive by the caller for the duration of the call."""
    return torch.tensor([s for t in (u, delta, z, go, B, C) for s in (t.stride() if t is not None else (0, 0, 0))],
                        dtype=torch.int64)


def _scaled_A(A: Tensor, padded: int, scale: float = 1.0) -> Tensor:
    """A (d_inner, N) -> (N, padded) float32 times ``scale``, channels zero-padded to whole blocks."""
    out = A.new_zeros(A.shape[1], padded, dtype=torch.float32)
    out[:, : A.shape[0]] = A.float().t() * scale
    return out


def cpu_fused_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True) -> Tensor:
    """Selective scan by the C kernel, prologue and epilogue included; shapes as in ``models.scan.common``;
    returns (batch, d_inner, L) in u's dtype. Not differentiable by autograd itself: the op's backward calls
    ``cpu_fused_scan_backward``. On meta tensors it allocates what a real call allocates and computes nothing
    (the memory prediction traces it)."""
    lib = None if u.device.type == "meta" else _library()
    batch, d_inner, length = u.shape
    n = A.shape[1]
    blocks = -(-d_inner // BLOCK)
    u32, d32, z32 = _f32_strided(u), _f32_strided(delta), _f32_strided(z)
    B32, C32 = _f32_steps_contiguous(B), _f32_steps_contiguous(C)
    bias, skip = _f32(delta_bias), _f32(D)
    A2 = _scaled_A(A, blocks * BLOCK, _LOG2E)
    strides = _strides(u32, d32, z32, None, B32, C32)
    out = torch.empty(batch, d_inner, length, dtype=torch.float32, device=u.device)
    ranges = _ranges(batch * blocks, length * n * BLOCK)
    scratch = [out.new_empty((4 * length + n + 1) * BLOCK) for _ in ranges]
    if lib is not None:
        _run([lambda i0=i0, i1=i1, w=w: lib.dimbench_scan_op_forward(
            _p(u32), _p(d32), _p(bias), int(delta_softplus), _p(A2), _p(B32), _p(C32), _p(skip), _p(z32), _p(out),
            _p(strides), length, d_inner, n, i0, i1, _p(w)) for (i0, i1), w in zip(ranges, scratch, strict=True)])
    return out.to(u.dtype)


def cpu_fused_scan_backward(grad_out: Tensor, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                            delta_softplus: bool = True, needs=(True,) * 8) -> list[Tensor]:
    """Analytic gradients of ``cpu_fused_scan`` (the contract of ``chunked.chunked_scan_backward``): the kernel
    computes all of them at once; those of the inputs whose ``needs`` flag is set and that are not None are
    returned, in order, contiguous, each in its input's dtype."""
    lib = _library()
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    batch, d_inner, length = u.shape
    n = A.shape[1]
    blocks = -(-d_inner // BLOCK)
    padded = blocks * BLOCK
    go, u32, d32, z32 = _f32_strided(grad_out), _f32_strided(u), _f32_strided(delta), _f32_strided(z)
    B32, C32 = _f32_steps_contiguous(B), _f32_steps_contiguous(C)
    bias, skip = _f32(delta_bias), _f32(D)
    A_c, A2 = _scaled_A(A, padded), _scaled_A(A, padded, _LOG2E)
    strides = _strides(u32, d32, z32, go, B32, C32)
    du, ddelta = (torch.empty(batch, d_inner, length, dtype=torch.float32, device=u.device) for _ in range(2))
    dz = torch.empty_like(du) if z is not None else None
    ranges = _ranges(batch * blocks, length * n * BLOCK)
    # per thread: dA, dB, dC, dD, dbias accumulators and the kernel's scratch
    acc = [(du.new_zeros(n, padded), du.new_zeros(batch, n, length), du.new_zeros(batch, n, length),
            du.new_zeros(d_inner), du.new_zeros(d_inner),
            du.new_empty((4 * length * n + 2 * n + 10 * length) * BLOCK)) for _ in ranges]
    _run([lambda i0=i0, i1=i1, a=a: lib.dimbench_scan_op_backward(
        _p(go), _p(u32), _p(d32), _p(bias), int(delta_softplus), _p(A_c), _p(A2), _p(B32), _p(C32), _p(skip),
        _p(z32), _p(du), _p(ddelta), _p(dz), *(_p(t) for t in a[:5]), _p(strides), length, d_inner, n, i0, i1,
        _p(a[5]))
        for (i0, i1), a in zip(ranges, acc, strict=True)])
    dA, dB, dC, dD, dbias = (_threads_total(acc, k) for k in range(5))
    grads = {"u": du, "delta": ddelta, "A": dA[:, :d_inner].t(), "B": dB, "C": dC, "D": dD, "z": dz,
             "delta_bias": dbias}
    return [grads[k].to(t.dtype).contiguous() for k, t, need in zip(INPUT_NAMES, inputs, needs, strict=True)
            if need and t is not None]


# ------------------------------------------------------------------------------------- causal conv1d + SiLU
# DiM's depthwise conv feeding the scan, for CPU training (models/scan/conv.py decides when): x (b, D, S) at any
# strides, weight (D, 1, KW), bias (D,) or None -> SiLU(conv1d(x, padding=KW-1)[..., :S]), contiguous.


def _conv_row_floats(s: int, kw: int) -> int:
    """The C kernel's padded row buffer (conv_row_floats): whole vectors of BLOCK steps, zeros past the data."""
    return (s + kw + 3 * BLOCK - 1) // BLOCK * BLOCK


def _conv_operands(x: Tensor, weight: Tensor, bias: Tensor | None):
    """float32 x (its own strides), weight (D, KW) and bias, after checking that they are a depthwise conv's:
    the kernel reads D·KW weights and D biases."""
    d = x.shape[1] if x.dim() == 3 else None
    if d is None or weight.dim() != 3 or tuple(weight.shape[:2]) != (d, 1):
        raise ValueError(f"causal depthwise conv: x (batch, D, S) and weight (D, 1, KW) expected, got x "
                         f"{tuple(x.shape)} and weight {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (d,):
        raise ValueError(f"causal depthwise conv: bias ({d},) expected, got {tuple(bias.shape)}")
    w = weight.detach().reshape(weight.shape[0], -1).float().contiguous()
    b = None if bias is None else bias.detach().float().contiguous()
    return x.float(), w, b


def cpu_conv_silu(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """SiLU of the causal depthwise conv by the C kernel (float32 arithmetic, the output in x's dtype)."""
    lib = _library()
    batch, d, s = x.shape
    x32, w, b = _conv_operands(x, weight, bias)
    kw = w.shape[1]
    out = torch.empty(batch, d, s, dtype=torch.float32, device=x.device)
    strides = torch.tensor(x32.stride(), dtype=torch.int64)
    ranges = _ranges(batch * d, s * kw)
    work = [out.new_empty(3 * _conv_row_floats(s, kw)) for _ in ranges]
    _run([lambda r0=r0, r1=r1, wk=wk: lib.dimbench_conv_silu_forward(
        _p(x32), _p(strides), _p(w), _p(b), _p(out), d, s, kw, r0, r1, _p(wk))
        for (r0, r1), wk in zip(ranges, work, strict=True)])
    return out.to(x.dtype)


def cpu_conv_silu_backward(grad_out: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None) -> list[Tensor]:
    """[dx, dweight, dbias (None without bias)] of ``cpu_conv_silu``, each in its input's dtype and shape."""
    lib = _library()
    batch, d, s = x.shape
    x32, w, b = _conv_operands(x, weight, bias)
    go = grad_out.float()
    kw = w.shape[1]
    dx = torch.empty(batch, d, s, dtype=torch.float32, device=x.device)
    strides = [torch.tensor(t.stride(), dtype=torch.int64) for t in (x32, go)]
    ranges = _ranges(batch * d, s * kw)
    acc = [(dx.new_zeros(d, kw), dx.new_zeros(d), dx.new_empty(3 * _conv_row_floats(s, kw))) for _ in ranges]
    _run([lambda r0=r0, r1=r1, a=a: lib.dimbench_conv_silu_backward(
        _p(x32), _p(strides[0]), _p(w), _p(b), _p(go), _p(strides[1]), _p(dx), _p(a[0]), _p(a[1]), d, s, kw, r0, r1,
        _p(a[2])) for (r0, r1), a in zip(ranges, acc, strict=True)])
    dw, db = (_threads_total(acc, k) for k in range(2))
    return [dx.to(x.dtype), dw.reshape(weight.shape).to(weight.dtype),
            None if bias is None else db.to(bias.dtype)]
