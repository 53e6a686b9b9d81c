"""The ``triton_v1`` backend: the first fused selective scan (Mamba-1) in Triton, forward and analytic backward.

Kept beside its successor (``triton_fused``, the ``triton`` backend) for comparison: it recomputes the decays of
every chunk in the forward (2.33 special-function operations per element) and its backward runs three passes over
a per-program scratch; see ``triton_fused``'s docstring for what replaced it and why.

Semantics, shapes and dtypes as every backend (``models.scan.common``): u, delta, z (batch, D, L), B, C
(batch, N, L) in float32, bfloat16 or float16 (loaded as they are, computed in float32); A (D, N), D and
delta_bias (D,) are cast to float32 once (small). The state is float32 throughout; Δ-bias and softplus, the D skip
and the SiLU(z) gate are fused; out is written in u's dtype.

Design (why chunked, why three launches). Mamba-1's decay Ā = exp(Δ·A) differs per (channel, state), so Mamba-2's
SSD matrix form does not apply; the recurrence is run sequentially. Parallel over (batch, channel) alone, batch 1
at d_inner 3072 gives 3072 channel lanes: too few to fill a GPU (132 multiprocessors of 64 warps each). So the
sequence is cut into K chunks of T steps and the grid is (batch, ⌈D/BD⌉, K):

1. ``chunk_summary_kernel``: each chunk from a zero state: its end state E_k and Σ_t Δ_t (no outputs);
2. ``carry_kernel``: K sequential steps per (batch, channel block), S_{k+1} = exp(A·ΣΔ_k) ⊙ S_k + E_k: the state
   S_k entering every chunk, (batch, K, N, D) float32 (d innermost: see ``triton_kernels``);
3. ``forward_kernel``: each chunk again from S_k, writing the outputs.

Inside a chunk the loop is sequential (one step: an exp per (channel, state), a few multiply-adds, a sum over N),
not ``tl.associative_scan``: no reverse-scan correctness doubts, and 20x faster under the interpreter. No
(batch, D, L, N) tensor is ever written: the state lives in registers, only chunk boundaries go to memory. The
price of the chunk parallelism is phase 1, a second pass of exps over K-1 chunks, so K is kept as small as the
parallelism allows (``default_chunk_size``): K = 1 (one launch, no summary) once batch·D channel lanes alone fill
the GPU, else about ``FWD_TARGET_LANES`` (channel, chunk) lanes. That constant is a first guess: only a GPU
measurement (``benchmarks/scan_gpu.py --sweep``) can set it.

Backward (``triton_scan_backward``, the contract of ``chunked.chunked_scan_backward``; formulas in that module's
docstring). The operator saves only the inputs (``models.scan.op``: one op for every backend), so the backward
first recomputes the chunk-boundary states, the adjoint's as well: ``chunk_summary_kernel`` in ADJOINT mode gives
per chunk E_k, ΣΔ and Hh_k = Σ_t (Π_{s≤t} Ā_s) ⊙ C_t ⊗ dy_t (the adjoint g_t = C_t ⊗ dy_t + Ā_{t+1} ⊙ g_{t+1} is
linear too, and its chunk decay is the same exp(A·ΣΔ_k)), computed forward in time in the same loop;
``carry_kernel`` then gives S_k and H_k = Ā_{t1} ⊙ g_{t1} (what enters chunk k from the right). Saved between
launches: S, H (batch, K, N, D) float32 and their inputs E, Hh, ΣΔ, nothing per step. ``backward_kernel`` then
needs, for each step t taken backward, x_{t-1} (for Q_t = g_t ⊙ Ā_t ⊙ x_{t-1}, the gradient through the decay)
while g runs backward in time and x forward; a sequential loop cannot index registers by step, and recomputing
x_{t-1} from S_k at every step is quadratic in T. So each program recomputes its chunk's states forward into a
per-program scratch slot of (T + 1)·BD·N float32 (x_{t0-1} .. x_{t1-1}, 66 KiB at T = 32, BD = 32, N = 16) and
reads them back in reverse; the kernel is persistent (as many programs as ``BWD_PROGRAMS_PER_SM`` per
multiprocessor, each looping over (batch, channel block, chunk) tiles), so the scratch is one slot per program
(tens of MiB, L2-sized), not a (batch, D, L, N) tensor. Channel reductions (dB, dC) and the (batch, time)
reductions (dA, dD, d delta_bias) are float32 atomic adds, so the last bits of those gradients can differ from
run to run. Exps: 3 per (channel, state, step) in the backward (summary, forward phase, backward phase), 1 + (K-1)/K
in the forward.

Interpreter and compiled modes: see ``triton_runtime`` (shared with ``triton_fused``).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import Tensor

from . import triton_runtime

_LOG2E = 1.4426950408889634
#: channels per program (a power of two).
BLOCK_D = 32
#: forward: aim for about this many (channel, chunk) lanes in the grid before chunking stops (see the docstring).
FWD_TARGET_LANES = 1 << 16
#: forward: chunks are at least this long (shorter ones spend more on the carry than they gain).
FWD_MIN_CHUNK = 16
#: backward: chunk length (its scratch slot holds T + 1 states of a channel block).
BWD_CHUNK = 32
#: backward: persistent programs per multiprocessor on CUDA (one scratch slot each).
BWD_PROGRAMS_PER_SM = 8
#: backward under the interpreter: programs (slots); a few, so the persistent loop is exercised.
INTERPRET_PROGRAMS = 3
_KERNELS_FILE = Path(__file__).with_name("triton_kernels.py")


def triton_status(device) -> tuple[bool, str]:
    """(can the v1 kernel run on ``device``, reason). Imports triton (once) if it was not imported yet."""
    return triton_runtime.status(device, "first fused Triton kernel (v1)")


@functools.lru_cache(maxsize=1)
def _kernels():
    """The kernel module, loaded from ``triton_kernels.py`` in the mode triton was imported in."""
    return triton_runtime.load_kernels(_KERNELS_FILE, f"{__package__}._triton_kernels", "forward_kernel")


def default_chunk_size(batch: int, d_inner: int, length: int) -> int:
    """Forward chunk length T: K = ⌈FWD_TARGET_LANES / (batch·d_inner)⌉ chunks (1 once the channels alone fill
    the grid), at most ⌈L / FWD_MIN_CHUNK⌉; T = ⌈L / K⌉."""
    chunks = -(-FWD_TARGET_LANES // max(1, batch * d_inner))
    chunks = max(1, min(chunks, -(-length // FWD_MIN_CHUNK)))
    return max(1, -(-length // chunks))


def _block_n(N: int) -> int:
    return max(2, 1 << (N - 1).bit_length())


class _Prepared:
    """Contiguous inputs (big ones in their dtype), float32 small ones, sizes and flags for the kernels."""

    def __init__(self, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        self.u, self.delta = u.contiguous(), delta.contiguous()
        self.B, self.C = B.contiguous(), C.contiguous()
        self.z = None if z is None else z.contiguous()
        self.A2 = (A.float().t() * _LOG2E).contiguous()                # (N, D), see triton_kernels; decays
        self.A_shape = tuple(A.shape)                                    # as exp2(Δ·A·log2 e)
        self.D = None if D is None else D.float().contiguous()
        self.bias = None if delta_bias is None else delta_bias.float().contiguous()
        self.softplus = bool(delta_softplus)
        self.batch, self.d_inner, self.length = u.shape
        self.N = A.shape[1]
        self.BN = _block_n(self.N)
        self.n_dblocks = -(-self.d_inner // BLOCK_D)
        if u.device.type not in ("cuda", "cpu"):
            raise RuntimeError(f"triton scan: tensors on {u.device} (needs CUDA, or the CPU under TRITON_INTERPRET=1)")
        self.kernels = _kernels()
        self.interpret = triton_runtime.interpreted()
        if u.device.type == "cpu" and not self.interpret:
            raise RuntimeError("triton scan: CPU tensors need Triton's interpreter (TRITON_INTERPRET=1 before "
                               "triton's first import)")

    def dummy(self, t):
        """A pointer argument for an absent optional tensor (never read: its flag is off)."""
        return self.u if t is None else t

    def summaries(self, T: int, K: int, go: Tensor | None, z: Tensor | None):
        """Phases 1 and 2: (S, H) (batch, K, D, N) float32, the states entering each chunk (and, with ``go``, the
        adjoint entering from the right); H is None without ``go``."""
        adjoint = go is not None
        shape = (self.batch, K, self.N, self.d_inner)
        E = self.u.new_empty(shape, dtype=torch.float32)
        Hh = torch.empty_like(E) if adjoint else E
        dtsum = self.u.new_empty((self.batch, K, self.d_inner), dtype=torch.float32)
        # The forward needs the end states of chunks 0..K-2 only; the adjoint all chunks but the first.
        grid = (self.batch, self.n_dblocks, K if adjoint else K - 1)
        self.kernels.chunk_summary_kernel[grid](
            self.u, self.delta, self.A2, self.B, self.C, self.dummy(z), self.dummy(go), self.dummy(self.bias),
            E, Hh, dtsum, self.d_inner, self.length, self.N, T, K,
            ADJOINT=adjoint, HAS_Z=z is not None, HAS_BIAS=self.bias is not None, SOFTPLUS=self.softplus,
            BD=BLOCK_D, BN=self.BN, **self.launch())
        S = torch.empty_like(E)
        H = torch.empty_like(E) if adjoint else S
        self.kernels.carry_kernel[(self.batch, self.n_dblocks)](
            E, Hh, dtsum, self.A2, S, H, self.d_inner, self.N, K,
            ADJOINT=adjoint, BD=BLOCK_D, BN=self.BN, **self.launch())
        return S, (H if adjoint else None)

    def launch(self) -> dict:
        return {} if self.interpret else {"num_warps": 1}


def triton_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True,
                chunk_size: int | None = None) -> Tensor:
    """Fused selective scan; shapes as in ``models.scan.common``; returns (batch, D, L) contiguous in u's dtype.

    ``chunk_size``: T (None: ``default_chunk_size``); any T ≥ 1 gives the same result up to float32 rounding.
    """
    p = _Prepared(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    T = chunk_size or default_chunk_size(p.batch, p.d_inner, p.length)
    if T < 1:
        raise ValueError(f"triton_scan: chunk_size must be >= 1; got {T}")
    T = min(T, p.length)
    K = -(-p.length // T)
    S = p.summaries(T, K, None, None)[0] if K > 1 else None
    out = torch.empty_like(p.u)
    p.kernels.forward_kernel[(p.batch, p.n_dblocks, K)](
        p.u, p.delta, p.A2, p.B, p.C, p.dummy(p.D), p.dummy(p.z), p.dummy(p.bias), p.dummy(S), out,
        p.d_inner, p.length, p.N, T, K,
        HAS_INIT=S is not None, HAS_D=p.D is not None, HAS_Z=p.z is not None, HAS_BIAS=p.bias is not None,
        SOFTPLUS=p.softplus, BD=BLOCK_D, BN=p.BN, **p.launch())
    return out


def _backward_programs(device: torch.device, interpret: bool, tiles: int) -> int:
    if interpret:
        return max(1, min(tiles, INTERPRET_PROGRAMS))
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(tiles, sms * BWD_PROGRAMS_PER_SM))


def triton_scan_backward(grad_out: Tensor, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                         delta_softplus: bool = True, needs=(True,) * 8, chunk_size: int | None = None,
                         programs: int | None = None) -> list[Tensor]:
    """Analytic gradients of ``triton_scan`` for ``grad_out`` (batch, D, L): those of (u, delta, A, B, C, D, z,
    delta_bias) whose ``needs`` flag is set and that are not None, in that order, each contiguous and in its
    input's dtype (the contract of ``chunked.chunked_scan_backward``). See "Backward" in the module docstring.

    ``chunk_size``: T (None: ``BWD_CHUNK``); ``programs``: persistent programs (None: the default). Any values
    give the same result up to float32 rounding. Memory: S, H, E, Hh (batch, K, N, D) float32, the scratch
    (programs · (T + 1) · BLOCK_D · N floats), float32 dA, dB, dC, dD, d delta_bias, and du, d delta, dz in the
    inputs' dtypes. Every gradient is computed whatever ``needs`` says (one kernel computes them together).
    """
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    need = {k: bool(f) and t is not None for k, f, t in zip(names, needs, inputs, strict=True)}
    p = _Prepared(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    go = grad_out.contiguous()
    if go.shape != p.u.shape:
        raise ValueError(f"triton_scan_backward: grad_out has shape {tuple(go.shape)}; expected {tuple(p.u.shape)}")
    T = min(chunk_size or BWD_CHUNK, p.length)
    if T < 1:
        raise ValueError(f"triton_scan_backward: chunk_size must be >= 1; got {T}")
    K = -(-p.length // T)
    S, H = p.summaries(T, K, go, p.z) if K > 1 else (None, None)

    f32 = {"dtype": torch.float32, "device": p.u.device}
    du, ddelta = torch.empty_like(p.u), torch.empty_like(p.delta)
    dz = torch.empty_like(p.z) if p.z is not None else None
    dA = torch.zeros(p.A_shape[::-1], **f32)                         # (N, D)
    dB, dC = torch.zeros(p.B.shape, **f32), torch.zeros(p.C.shape, **f32)
    dD = torch.zeros(p.d_inner, **f32)
    dbias = torch.zeros(p.d_inner, **f32)
    tiles = p.batch * p.n_dblocks * K
    nprog = programs or _backward_programs(p.u.device, p.interpret, tiles)
    scratch = p.u.new_empty((nprog, T + 1, p.BN, BLOCK_D), dtype=torch.float32)
    p.kernels.backward_kernel[(nprog,)](
        p.u, p.delta, p.A2, p.B, p.C, p.dummy(p.D), p.dummy(p.z), go, p.dummy(p.bias),
        p.dummy(S), p.dummy(H), scratch, du, ddelta, p.dummy(dz), dA, dB, dC, dD, dbias,
        p.d_inner, p.length, p.N, T, K, p.n_dblocks, tiles,
        HAS_INIT=S is not None, HAS_D=p.D is not None, HAS_Z=p.z is not None, HAS_BIAS=p.bias is not None,
        SOFTPLUS=p.softplus, BD=BLOCK_D, BN=p.BN, **p.launch())
    grads = {"u": du, "delta": ddelta, "A": dA.t(), "B": dB, "C": dC, "D": dD, "z": dz, "delta_bias": dbias}
    return [grads[k].to(t.dtype).contiguous() for k, t in zip(names, inputs, strict=True) if need[k]]
