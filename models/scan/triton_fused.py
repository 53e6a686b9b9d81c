"""The ``triton`` backend: a selective scan (Mamba-1) in Triton built to reach the hardware bound, forward and
analytic backward. Its kernels are in ``triton_fused_kernels`` (the tile and its layout are described there).

Semantics, shapes and dtypes as every backend (``models.scan.common``): u, delta, z (batch, D, L) and B, C
(batch, N, L) in float32, bfloat16 or float16, read as they are with their strides (no ``.contiguous()`` copy of
the big inputs: DiM hands x, z as views of one in_proj product and B, C as slices of x_proj's); computed in
float32; out written contiguous in u's dtype; Δ-bias, softplus, the D skip and the SiLU(z) gate fused.

Design, against the bound. At DiM-H/2, 1536 px (L = 9806, d_inner 3072, N 16) the scan is bound by its
exponentials (one per (channel, step, state): 482 M per layer, 115 µs at an H100's 132 SMs × 16 MUFU/clk ×
1.98 GHz) more than by its bytes (241.6 MB, 72-80 µs). So:

- one exponential per element in the forward, none recomputed: a program owns ``BD`` channels of one batch
  element for the whole sequence and walks it in chunks of ``BT = LANES·TE`` steps (``CUDA_TILES``: 8 channels on
  4 warps, chunks of 256 steps; grid (batch, ⌈D / BD⌉), 384 programs at batch 1), carrying the state between
  chunks. Time-parallel inside a chunk: for each state n, one ``tl.associative_scan`` on (decay, input) pairs along
  time, TE consecutive steps per thread (a sequential scan in registers), then log2(LANES) shuffle rounds; the
  entering state is folded into the first step's input, the leaving one written to S.
- per-channel work (softplus of Δ, the gate, loads of u, Δ, z) once per (channel, step), not per state: with the
  MUFU ops of softplus (exp and a reciprocal: log1p as an atanh series, no log) and of the gate's sigmoid (exp,
  reciprocal), 1 + 4/16 = 1.25 MUFU ops per element at N = 16.
- B and C, (t, n) values every channel reads, come from one padded float32 copy (batch, 2, N, K·BT) made here (a
  few hundred kB): aligned 16-byte loads with no masks or bf16 unpacking in the inner loop.
- the forward writes the state entering every chunk, S (batch, K, D, N) float32 (K = ⌈L / BT⌉; 7.6 MB per layer
  at the size above), which the operator keeps for the backward (``models.scan.op``).

Backward (``triton_scan_backward``): the same tile, chunks from last to first, per chunk and state: the forward
scan again from S (the decays are needed anyway), and the reverse scan of the adjoint on the decays shifted by one
step in registers (one extra exponential per lane, 1/TE per element); dB and dC summed over the program's channels
before any atomic add; dA, dD, dΔ-bias as per-(batch, channel) partials in a fixed order, summed over the batch
here. The atomic adds make dB and dC's last bits vary from run to run; ``deterministic`` (argument, else the
environment variable ``DIMBENCH_SCAN_DETERMINISTIC=1`` or ``torch.use_deterministic_algorithms(True)``) instead
writes one partial per channel block, (⌈D / BD⌉, batch, 2, N, K·BT) float32 (981 MB at batch 1 at the size above),
summed by torch in a fixed order: bit-identical gradients from run to run, at that memory cost.

The static view of all this (registers, spills, SASS instructions and MUFU ops per element, a modelled time) is
``benchmarks/scan_static.py``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from . import triton_runtime

_LOG2E = 1.4426950408889634
#: environment variable that selects the deterministic backward (see the module docstring).
DETERMINISTIC_ENV = "DIMBENCH_SCAN_DETERMINISTIC"
_KERNELS_FILE = Path(__file__).with_name("triton_fused_kernels.py")


@dataclass(frozen=True)
class Tile:
    """A program's tile: ``bd`` channels on ``warps`` warps, chunks of ``lanes · te`` steps, ``te`` consecutive
    steps per thread (4, 8 or 16), ``lanes`` threads along time (``bd · lanes = 32 · warps``)."""
    bd: int
    lanes: int
    te: int
    warps: int

    @property
    def steps(self) -> int:
        return self.lanes * self.te

    def check(self, compiled: bool) -> None:
        lanes_ok = self.bd * self.lanes == 32 * self.warps if compiled else True
        if self.te not in (4, 8, 16) or self.lanes > 32 or self.lanes & (self.lanes - 1) or not lanes_ok:
            raise ValueError(f"triton scan: bad tile {self}")


@dataclass(frozen=True)
class Tiles:
    """The forward's and the backward's tiles; they chunk alike (the backward reads the forward's chunk states)."""
    fwd: Tile
    bwd: Tile

    @property
    def steps(self) -> int:
        return self.fwd.steps

    def check(self, compiled: bool) -> None:
        self.fwd.check(compiled)
        self.bwd.check(compiled)
        if self.fwd.steps != self.bwd.steps:
            raise ValueError(f"triton scan: forward and backward chunk differently: {self}")


#: on CUDA (benchmarks/scan_static.py: no spills with Triton 3.6 or 3.8): the forward with 16 steps per thread and
#: 2 channels per warp (16 lanes along time), 8 channels per program, so that every B and C value read from the L2
#: serves 8 channels; the backward, holding more tiles, with 8 steps per thread and one channel per warp. Both chunk
#: by 256 steps.
CUDA_TILES = Tiles(fwd=Tile(bd=8, lanes=16, te=16, warps=4), bwd=Tile(bd=4, lanes=32, te=8, warps=4))
#: under the interpreter (one "warp" of any size): small, so that tests at small L cross several chunks and channel
#: blocks, with both the forward's and the backward's steps per thread differing as on CUDA.
INTERPRET_TILES = Tiles(fwd=Tile(bd=2, lanes=2, te=8, warps=1), bwd=Tile(bd=2, lanes=4, te=4, warps=1))


def triton_status(device) -> tuple[bool, str]:
    """(can the kernel run on ``device``, reason). Imports triton (once) if it was not imported yet."""
    return triton_runtime.status(device, "fused Triton scan kernel", "triton")


@functools.lru_cache(maxsize=1)
def _kernels():
    return triton_runtime.load_kernels(_KERNELS_FILE, f"{__package__}._triton_fused_kernels", "scan_fwd_kernel")


def default_tiles() -> Tiles:
    return INTERPRET_TILES if triton_runtime.interpreted() else CUDA_TILES


def deterministic_default() -> bool:
    """The backward's mode when not given: deterministic if DIMBENCH_SCAN_DETERMINISTIC=1 or torch's
    deterministic algorithms are on."""
    return os.environ.get(DETERMINISTIC_ENV, "0") == "1" or torch.are_deterministic_algorithms_enabled()


def chunks(length: int, tiles: Tiles | None = None) -> int:
    """K, the number of chunks (and of chunk states) for a sequence of ``length`` steps."""
    return -(-length // (tiles or default_tiles()).steps)


class _Prepared:
    """Sizes, strides, flags and the small float32 operands of a call (any device, meta included: the static
    compile in benchmarks/scan_static.py builds launches for DiM-H's shapes on meta tensors)."""

    def __init__(self, u, delta, A, B, C, D, z, delta_bias, delta_softplus, tiles: Tiles, interpret: bool):
        tiles.check(not interpret)
        self.tiles, self.interpret = tiles, interpret
        self.u, self.delta, self.z = u, delta, z
        self.batch, self.d_inner, self.length = u.shape
        self.N = A.shape[1]
        self.K = chunks(self.length, tiles)
        self.LP = self.K * tiles.steps
        self.f32 = {"dtype": torch.float32, "device": u.device}
        self.A2 = (A.float() * _LOG2E).contiguous()                      # (D, N): decays are exp2(Δ·A2)
        self.D = None if D is None else D.float().contiguous()
        self.bias = None if delta_bias is None else delta_bias.float().contiguous()
        self.softplus = bool(delta_softplus)
        # B then C, float32, zero beyond L: whole aligned chunks for the 16-byte loads of the inner loop.
        self.BC = torch.zeros((self.batch, 2, self.N, self.LP), **self.f32)
        self.BC[:, 0, :, :self.length] = B
        self.BC[:, 1, :, :self.length] = C

    def dummy(self, t):
        """A pointer argument for an absent optional tensor (never read: its flag is off)."""
        return self.A2 if t is None else t

    @staticmethod
    def strides(t) -> tuple[int, int, int]:
        return (0, 0, 0) if t is None else tuple(t.stride())

    def blocks(self, tile: Tile) -> int:
        return -(-self.d_inner // tile.bd)

    def flags(self, tile: Tile) -> dict:
        return dict(N=self.N, HAS_D=self.D is not None, HAS_Z=self.z is not None, HAS_BIAS=self.bias is not None,
                    SOFTPLUS=self.softplus, BD=tile.bd, LANES=tile.lanes, TE=tile.te,
                    **({} if self.interpret else {"num_warps": tile.warps, "num_stages": 1}))

    def forward_launch(self, out, S) -> Launch:
        tile = self.tiles.fwd
        return Launch("scan_fwd_kernel", (self.batch, self.blocks(tile)), (
            self.u, self.delta, self.dummy(self.z), out, self.A2, self.BC, self.dummy(self.D), self.dummy(self.bias),
            S, *self.strides(self.u), *self.strides(self.delta), *self.strides(self.z),
            self.d_inner, self.length, self.K, self.LP), self.flags(tile))

    def backward_buffers(self, deterministic: bool) -> dict:
        """The backward's outputs and work buffers, by argument name."""
        shape, dev = (self.batch, self.d_inner, self.length), self.u.device
        parts = (self.blocks(self.tiles.bwd),) if deterministic else ()
        return {
            "du": torch.empty(shape, dtype=self.u.dtype, device=dev),
            "ddelta": torch.empty(shape, dtype=self.delta.dtype, device=dev),
            "dz": None if self.z is None else torch.empty(shape, dtype=self.z.dtype, device=dev),
            # atomic adds need zeros; the deterministic partials are all written
            "dBC": (torch.empty if deterministic else torch.zeros)((*parts, self.batch, 2, self.N, self.LP),
                                                                   **self.f32),
            "dA": torch.empty((self.batch, self.d_inner, self.N, self.tiles.bwd.lanes), **self.f32),
            "dD": torch.empty((self.batch, self.d_inner), **self.f32),
            "dbias": torch.empty((self.batch, self.d_inner), **self.f32),
            "H": torch.empty((self.batch, 2, self.d_inner, self.N), **self.f32),
        }

    def backward_launch(self, grad_out, saved, buf: dict, deterministic: bool) -> Launch:
        tile = self.tiles.bwd
        return Launch("scan_bwd_kernel", (self.batch, self.blocks(tile)), (
            self.u, self.delta, self.dummy(self.z), grad_out, self.A2, self.BC, self.dummy(self.D),
            self.dummy(self.bias), saved, buf["H"], buf["du"], buf["ddelta"], self.dummy(buf["dz"]), buf["dBC"],
            buf["dA"], buf["dD"], buf["dbias"], *self.strides(self.u), *self.strides(self.delta),
            *self.strides(self.z), *self.strides(grad_out), self.d_inner, self.length, self.K, self.LP),
            dict(DETERMINISTIC=deterministic, **self.flags(tile)))


@dataclass(frozen=True)
class Launch:
    """One kernel launch: the kernel's name in ``triton_fused_kernels``, its grid, arguments and constexprs (with
    the launch options num_warps and num_stages when compiled)."""
    kernel: str
    grid: tuple
    args: tuple
    kwargs: dict

    def run(self):
        getattr(_kernels(), self.kernel)[self.grid](*self.args, **self.kwargs)


def _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus, tiles: Tiles | None) -> _Prepared:
    """``_Prepared`` for a run: the device checked and triton's mode read (the kernels load on first run)."""
    if u.device.type not in ("cuda", "cpu"):
        raise RuntimeError(f"triton scan: tensors on {u.device} (needs CUDA, or the CPU under TRITON_INTERPRET=1)")
    interpret = triton_runtime.interpreted()
    if u.device.type == "cpu" and not interpret:
        raise RuntimeError("triton scan: CPU tensors need Triton's interpreter (TRITON_INTERPRET=1 before "
                           "triton's first import)")
    return _Prepared(u, delta, A, B, C, D, z, delta_bias, delta_softplus, tiles or default_tiles(), interpret)


def static_launches(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True, *,
                    deterministic=False, tiles: Tiles = CUDA_TILES) -> list[Launch]:
    """The launches a compiled forward and backward make on these inputs (meta tensors will do: nothing runs)."""
    p = _Prepared(u, delta, A, B, C, D, z, delta_bias, delta_softplus, tiles, interpret=False)
    out = torch.empty(u.shape, dtype=u.dtype, device=u.device)
    S = torch.empty((p.batch, p.K, p.d_inner, p.N), **p.f32)
    return [p.forward_launch(out, S),
            p.backward_launch(torch.empty_like(out), S, p.backward_buffers(deterministic), deterministic)]


def triton_scan_saving(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True,
                       tiles: Tiles | None = None) -> tuple[Tensor, Tensor]:
    """(out, S): the scan (contiguous (batch, D, L) in u's dtype) and the states entering each chunk,
    (batch, K, D, N) float32, for ``triton_scan_backward(..., saved=S)``."""
    p = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus, tiles)
    out = torch.empty((p.batch, p.d_inner, p.length), dtype=u.dtype, device=u.device)
    S = torch.empty((p.batch, p.K, p.d_inner, p.N), **p.f32)
    p.forward_launch(out, S).run()
    return out, S


def triton_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True,
                tiles: Tiles | None = None) -> Tensor:
    """Fused selective scan; shapes as in ``models.scan.common``; returns (batch, D, L) contiguous in u's dtype."""
    return triton_scan_saving(u, delta, A, B, C, D, z, delta_bias, delta_softplus, tiles)[0]


def saved_like(u, A) -> Tensor:
    """An empty tensor shaped like the S ``triton_scan_saving`` returns for these inputs (for fake kernels)."""
    batch, d_inner, length = u.shape
    ok, _ = triton_runtime.import_triton()
    tiles = INTERPRET_TILES if ok and triton_runtime.interpreted() else CUDA_TILES
    return u.new_empty((batch, chunks(length, tiles), d_inner, A.shape[1]), dtype=torch.float32)


def triton_scan_backward(grad_out: Tensor, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                         delta_softplus: bool = True, needs=(True,) * 8, *, saved: Tensor | None = None,
                         deterministic: bool | None = None, tiles: Tiles | None = None) -> list[Tensor]:
    """Analytic gradients of ``triton_scan`` for ``grad_out`` (batch, D, L): those of (u, delta, A, B, C, D, z,
    delta_bias) whose ``needs`` flag is set and that are not None, in that order, each contiguous and in its
    input's dtype (the contract of ``chunked.chunked_scan_backward``).

    ``saved``: the S of ``triton_scan_saving`` on the same inputs and tiles (None: the forward is run here for it).
    ``deterministic``: see the module docstring (None: ``deterministic_default()``). Every gradient is computed
    whatever ``needs`` says (one kernel computes them together).
    """
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    need = {k: bool(f) and t is not None for k, f, t in zip(names, needs, inputs, strict=True)}
    if grad_out.shape != u.shape:
        raise ValueError(f"triton_scan_backward: grad_out has shape {tuple(grad_out.shape)}; expected "
                         f"{tuple(u.shape)}")
    p = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus, tiles)
    if saved is None:
        saved = triton_scan_saving(u, delta, A, B, C, D, z, delta_bias, delta_softplus, p.tiles)[1]
    want = (p.batch, p.K, p.d_inner, p.N)
    if tuple(saved.shape) != want or saved.dtype != torch.float32:
        raise ValueError(f"triton_scan_backward: saved states have shape {tuple(saved.shape)} {saved.dtype}; "
                         f"expected {want} float32 (from triton_scan_saving with the same tiles)")
    det = deterministic_default() if deterministic is None else bool(deterministic)
    buf = p.backward_buffers(det)
    p.backward_launch(grad_out, saved, buf, det).run()
    dBC = buf["dBC"]
    if det:
        dBC = dBC.sum(0)
    grads = {"u": buf["du"], "delta": buf["ddelta"], "A": buf["dA"].sum((0, 3)), "B": dBC[:, 0, :, :p.length],
             "C": dBC[:, 1, :, :p.length], "D": buf["dD"].sum(0), "z": buf["dz"], "delta_bias": buf["dbias"].sum(0)}
    return [grads[k].to(t.dtype).contiguous() for k, t in zip(names, inputs, strict=True) if need[k]]
