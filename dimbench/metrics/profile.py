"""Where one forward pass spends its time, FLOPs, bytes and energy, per named component of the model.

The models mark their components with :func:`models.profiling.component` (names and meanings in
``models.profiling.COMPONENTS``; ranges are flat, so they partition a forward pass; what runs outside every range
is ``other``). Three measurements, each labelled in its rows:

- **Time per component**: one untimed probe pass (records the scan and attention backends), warm-up passes, then
  ``repeats`` forward passes under ``torch.profiler`` with the ranges open. On CUDA a component's time is the
  **CUDA kernel time** of the kernels launched inside its range (the profiler's device time of the range and its
  children); on the CPU it is the range's **wall time on the calling thread** (the profiler's CPU total, self +
  children; with several threads it is still elapsed time, not CPU-seconds summed over threads). Each is the
  mean over the repeats (means add up; medians would not). ``other`` = the whole forward's range − the named
  ranges, so the components and ``other`` add up to the whole forward exactly; the named ranges can never
  exceed it (they are disjoint and nested in it). The profiler's own bookkeeping is inside those times: compare
  components with each other, and use the ``latency`` metric for the un-profiled speed. A Chrome/Perfetto trace of the
  profiled passes is saved beside the results; on CUDA also a memory snapshot
  (``torch.cuda.memory._record_memory_history`` over one extra pass; open it at https://pytorch.org/memory_viz).
- **FLOPs and bytes per component**, on the meta device (free at any size): FLOPs by the same FlopCounterMode
  and attention mapping as the ``flops`` metric (so they add up to its number), attributed to the innermost open
  range; bytes moved by a dispatch mode above it that charges every non-view op with its tensor inputs read once
  and its outputs written once (broadcast dimensions counted once): the traffic of an eager run in which each
  dispatched op is one kernel and nothing stays in cache; fused kernels move less, and the chunked CPU scan
  backend moves more than its op's inputs and output. Achieved FLOP/s (FLOPs / time) and arithmetic intensity
  (FLOPs / bytes) place each component on a roofline.
- **Energy per image** (CUDA): NVML sampled in a background thread during a timed run of forward passes
  (utilisation, SM clock, power), energy from the card's energy counter (or the integral of the sampled power
  where the card has none), divided by the images computed. Device-wide: it includes anything else running on the
  card. Without a GPU or NVML the sampler says ``not available: <reason>`` and the row is skipped with that reason.

On the CPU a size whose forward pass counts more than ``cpu_max_gflop`` GFLOP (meta count, at the point's batch) is
not timed: the FLOP and byte shares come from the meta count at the requested size and the time shares from the
largest resolution under that bound (the rows say which, in ``extra["timed_resolution"]`` and their method).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import models
from dimbench.metrics.base import Measurement, Metric, MetricContext, Row, slug
from dimbench.metrics.common import (
    autocast_context,
    build_model,
    device_name,
    point_inputs,
    precision_label,
    probe_backends,
    resolve_device,
    resolve_dtype,
    synchronize,
)
from dimbench.metrics.flops import _CUSTOM_MAPPING
from dimbench.points import SweepPoint
from dimbench.schema import Field, Integer, Number
from models.profiling import COMPONENTS, PREFIX

PROFILE_DIR = "profiles"
FORWARD_RANGE = PREFIX + "forward"
NAMED = tuple(c for c in COMPONENTS if c != "other")

#: The suite's top-level ``warmup`` and ``repeats`` keys set these too (same names as the timed metrics' options).
WARMUP = Field("warmup", Integer(0), 2, "untimed forward passes before the profiled ones (after one probe pass)")
REPEATS = Field("repeats", Integer(1), 5, "profiled forward passes (each component's mean over them is reported: "
                "means add up to the forward's)")
CPU_MAX_GFLOP = Field(
    "cpu_max_gflop", Number(0, "GFLOP"), 200.0,
    "on the CPU, the largest forward pass (meta-count GFLOP at the point's batch) that is timed; above it the time "
    "shares come from the largest resolution under this bound (FLOP and byte shares stay at the requested size)",
)
ENERGY_SECONDS = Field("energy_seconds", Number(0, "seconds"), 2.0,
                       "CUDA: the least time forward passes run under the NVML sampler for the energy per image")

COUNT_METHOD = ("meta-device count: FLOPs by FlopCounterMode (2 per multiply-add, the flops metric's count) and "
                "bytes moved by a dispatch mode (each non-view op reads its inputs once and writes its outputs "
                "once), each attributed to the innermost open named range")


# ------------------------------------------------------------------------------------------------------------------
# Counting on the meta device


def _touched_bytes(t: torch.Tensor) -> int:
    """Bytes a kernel must touch to read or write ``t``: dimensions of stride 0 (broadcasts) count once."""
    n = 1
    for size, stride in zip(t.shape, t.stride(), strict=True):
        if stride != 0:
            n *= size
    return n * t.element_size() if t.numel() else 0


class _ComponentFlops(FlopCounterMode):
    """FlopCounterMode (with the flops metric's attention mapping) that also adds each count to the innermost
    open named range."""

    def __init__(self) -> None:
        super().__init__(display=False, custom_mapping=_CUSTOM_MAPPING)
        self.by_component: dict[str, int] = collections.defaultdict(int)

    def _count_flops(self, func_packet, out, args, kwargs):
        if func_packet in self.flop_registry:
            n = self.flop_registry[func_packet](*args, **kwargs, out_val=out)
            self.by_component[models.profiling.current()] += int(n)
        return super()._count_flops(func_packet, out, args, kwargs)


_FREE_OPS = {"_unsafe_view", "lift_fresh", "detach", "alias"}  # no data moves (views without the view tag)


def _moves_data(func) -> bool:
    """Whether an op reads and writes tensor data: not a view (returns aliasing an input, read-only) nor a free
    op; in-place ops (write aliases) do move data."""
    if not isinstance(func, torch._ops.OpOverload) or func._overloadpacket.__name__ in _FREE_OPS:
        return False
    for ret in func._schema.returns:
        if ret.alias_info is not None and not ret.alias_info.is_write:
            return False
    return True


class _ComponentBytes(TorchDispatchMode):
    """Bytes read and written per op (views and metadata ops are free), by component."""

    def __init__(self) -> None:
        super().__init__()
        self.by_component: dict[str, int] = collections.defaultdict(int)
        self.by_op: dict[str, int] = collections.defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if _moves_data(func):
            seen: set[int] = set()
            total = 0
            for leaf in torch.utils._pytree.tree_leaves((args, kwargs, out)):
                if isinstance(leaf, torch.Tensor) and id(leaf) not in seen:
                    seen.add(id(leaf))
                    total += _touched_bytes(leaf)
            if isinstance(out, torch.Tensor) and any(out is a for a in torch.utils._pytree.tree_leaves(args)):
                total += _touched_bytes(out)  # an in-place op: its tensor is read and written
            self.by_component[models.profiling.current()] += total
            self.by_op[str(func)] += total
        return out


@dataclasses.dataclass
class ComponentCount:
    """FLOPs and bytes of one forward pass per component (``other`` included), and the totals."""

    flops: dict[str, int]
    bytes: dict[str, int]

    @property
    def total_flops(self) -> int:
        return sum(self.flops.values())

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())


def count_components(point: SweepPoint) -> ComponentCount:
    """FLOPs and bytes moved per component of one forward at the point, on the meta device (no compute)."""
    model = build_model(point, "meta")
    x, t, y = point_inputs(point, model, "meta")
    flops, moved = _ComponentFlops(), _ComponentBytes()
    with models.profiling.listening(record=False), torch.inference_mode(), flops, moved:
        model(x, t, y)
    names = [c for c in COMPONENTS if c in flops.by_component or c in moved.by_component]
    names += [c for c in {**flops.by_component, **moved.by_component} if c not in names]
    return ComponentCount({c: int(flops.by_component.get(c, 0)) for c in names},
                          {c: int(moved.by_component.get(c, 0)) for c in names})


# ------------------------------------------------------------------------------------------------------------------
# Which size the CPU can afford to time


def affordable_resolution(point: SweepPoint, max_gflop: float) -> tuple[int, float]:
    """The largest resolution <= the point's (a multiple of the model's step) whose forward at the point's batch
    counts at most ``max_gflop`` GFLOP, and its count; the smallest resolution when none is under the bound.
    FLOPs grow with the resolution, so a bisection over the multiples of the step finds it."""
    from dimbench.metrics.flops import count_point_flops

    step = models.model_info(point.model).resolution_step

    def gflop(k: int) -> float:
        return count_point_flops(point.at_resolution(k * step)).gflops

    lo, hi = 1, point.resolution // step
    best = (lo, gflop(lo))
    if best[1] > max_gflop:
        return lo * step, best[1]
    while lo < hi:  # invariant: lo is affordable
        mid = (lo + hi + 1) // 2
        g = gflop(mid)
        if g <= max_gflop:
            lo, best = mid, (mid, g)
        else:
            hi = mid - 1
    return best[0] * step, best[1]


# ------------------------------------------------------------------------------------------------------------------
# NVML sampling


class NvmlSampler:
    """Samples NVML (GPU utilisation %, SM clock MHz, power W) in a background thread while open, and reads the
    card's energy counter at both ends. Never raises: without a GPU, without NVML or on any NVML error it is
    ``available = False`` with ``reason = "not available: <why>"``, and its result says so."""

    def __init__(self, device: torch.device | str | None, interval_s: float = 0.02):
        self.device = torch.device(device) if device is not None else None
        self.interval_s = interval_s
        self.available = False
        self.reason = "not available: not started"
        self.samples: list[tuple[float, float | None, float | None, float | None]] = []  # t, util, sm MHz, W
        self._nvml = None
        self._handle = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._energy0: float | None = None
        self._energy1: float | None = None
        self._t0 = self._t1 = 0.0

    def _open(self) -> None:
        if self.device is None or self.device.type != "cuda":
            raise RuntimeError(f"no CUDA device (profiling on {self.device.type if self.device else 'no device'})")
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA is not available to torch")
        try:
            import pynvml
        except ImportError as exc:
            raise RuntimeError(f"pynvml (nvidia-ml-py) does not import: {exc}") from None
        pynvml.nvmlInit()
        self._nvml = pynvml
        props = torch.cuda.get_device_properties(self.device)
        uuid = getattr(props, "uuid", None)
        tried = []
        if uuid is not None:
            text = str(uuid)
            text = text if text.startswith("GPU-") else f"GPU-{text}"
            try:
                self._handle = pynvml.nvmlDeviceGetHandleByUUID(text)
            except pynvml.NVMLError as exc:
                tried.append(f"uuid {text}: {exc}")
        if self._handle is None and all(hasattr(props, a) for a in ("pci_domain_id", "pci_bus_id", "pci_device_id")):
            pci = f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
            try:
                self._handle = pynvml.nvmlDeviceGetHandleByPciBusId(pci)
            except pynvml.NVMLError as exc:
                tried.append(f"pci {pci}: {exc}")
        if self._handle is None:
            raise RuntimeError(f"NVML found no device for torch {self.device}: {'; '.join(tried) or 'no identity'}")

    def _energy_mj(self) -> float | None:
        try:
            return float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except Exception:  # noqa: BLE001 - cards before Volta have no energy counter
            return None

    def _sample(self) -> None:
        nv = self._nvml

        def read(fn):
            try:
                return fn()
            except Exception:  # noqa: BLE001 - a field this card does not report
                return None

        while not self._stop.is_set():
            util = read(lambda: float(nv.nvmlDeviceGetUtilizationRates(self._handle).gpu))
            clock = read(lambda: float(nv.nvmlDeviceGetClockInfo(self._handle, nv.NVML_CLOCK_SM)))
            power = read(lambda: nv.nvmlDeviceGetPowerUsage(self._handle) / 1e3)
            self.samples.append((time.perf_counter(), util, clock, power))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> NvmlSampler:
        try:
            self._open()
        except Exception as exc:  # noqa: BLE001 - the sampler never takes a measurement down with it
            self.available = False
            self.reason = f"not available: {str(exc).strip() or type(exc).__name__}"
            self._shutdown()
            return self
        self.available, self.reason = True, "available"
        self._energy0 = self._energy_mj()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._sample, name="dimbench-nvml", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if not self.available:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._t1 = time.perf_counter()
        self._energy1 = self._energy_mj()
        self._shutdown()

    def _shutdown(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001
                pass
            self._nvml = None

    def result(self) -> dict[str, Any]:
        """What was measured: energy (J) and how, mean utilisation / SM clock / power, sample count; or why not."""
        if not self.available:
            return {"available": False, "reason": self.reason}

        def mean(i: int) -> float | None:
            vals = [s[i] for s in self.samples if s[i] is not None]
            return sum(vals) / len(vals) if vals else None

        out: dict[str, Any] = {"available": True, "seconds": self._t1 - self._t0, "samples": len(self.samples),
                               "interval_s": self.interval_s, "mean_util_pct": mean(1), "mean_sm_clock_mhz": mean(2),
                               "mean_power_w": mean(3), "energy_j": None}
        if self._energy0 is not None and self._energy1 is not None:
            out["energy_j"] = (self._energy1 - self._energy0) / 1e3
            out["energy_method"] = "NVML total energy counter (mJ) read before and after"
        else:
            power = [(s[0], s[3]) for s in self.samples if s[3] is not None]
            if len(power) >= 2:
                out["energy_j"] = sum((b[0] - a[0]) * (a[1] + b[1]) / 2 for a, b in zip(power, power[1:], strict=False))
                out["energy_method"] = (f"trapezoid integral of NVML power sampled every {self.interval_s * 1e3:g} "
                                        "ms (no energy counter on this card)")
            else:
                out["reason"] = "not available: too few NVML power samples and no energy counter"
        return out


# ------------------------------------------------------------------------------------------------------------------
# Timing per component


@dataclasses.dataclass
class Timing:
    """Per-forward time of each component (ms, ``other`` included) and of the whole forward, and how."""

    ms: dict[str, float]
    forward_ms: float
    kind: str  # "cuda kernel time" | "cpu range wall time (self + children)"
    method: str
    backends: dict[str, Any]
    trace: Path | None = None
    memory_snapshot: Path | None = None
    energy: dict[str, Any] | None = None


def profile_model(model: torch.nn.Module, inputs: tuple, device: torch.device, dtype: torch.dtype, *, warmup: int,
                  repeats: int, folder: Path | None = None, energy_seconds: float = 0.0) -> Timing:
    """Profile ``repeats`` forward passes of ``model(*inputs)`` (see the module docstring); with ``folder``, save the
    Chrome trace there (and on CUDA a memory snapshot); with ``energy_seconds`` > 0 on CUDA, sample NVML during a
    separate timed run of at least that long."""
    from torch.profiler import ProfilerActivity, profile, record_function

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    x, t, y = inputs
    cuda = device.type == "cuda"

    def forward() -> torch.Tensor:
        with torch.inference_mode(), autocast_context(device, dtype):
            return model(x, t, y)

    backends = probe_backends(forward)
    for _ in range(warmup):
        forward()
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with models.profiling.listening(), profile(activities=activities) as prof:
        for _ in range(repeats):
            with record_function(FORWARD_RANGE):
                forward()
        synchronize(device)

    totals = _range_totals_us(prof, cuda)
    forward_ms = totals.get(FORWARD_RANGE, 0.0) / repeats / 1e3
    ms = {c: totals[PREFIX + c] / repeats / 1e3 for c in NAMED if PREFIX + c in totals}
    ms["other"] = max(forward_ms - sum(ms.values()), 0.0)
    kind = "cuda kernel time" if cuda else "cpu range wall time (self + children)"
    method = (f"torch.profiler, mean of {repeats} forward passes after {warmup} warm-up (+1 untimed probe pass); "
              + ("CUDA kernel time of the kernels launched inside each named range" if cuda else
                 "wall time of each named range on the calling thread (the profiler's CPU total, self + children), "
                 f"{torch.get_num_threads()} threads")
              + f"; 'other' = whole forward − named ranges; {precision_label(dtype)}; {device_name(device)}")
    timing = Timing(ms, forward_ms, kind, method, backends)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        timing.trace = folder / "trace.json.gz"  # gzip-compressed Chrome trace JSON (Perfetto opens it as is)
        prof.export_chrome_trace(str(timing.trace))
        if cuda:
            timing.memory_snapshot = _memory_snapshot(forward, device, folder / "memory_snapshot.pickle")
    if energy_seconds > 0 and cuda:
        timing.energy = _energy_run(forward, device, energy_seconds)
    elif not cuda:
        with NvmlSampler(device) as sampler:  # says why not (no CUDA device), never raises
            pass
        timing.energy = sampler.result()
    return timing


def _range_totals_us(prof, cuda: bool) -> dict[str, float]:
    """Total time of each named range (µs, summed over its calls): on CUDA the device time of the kernels launched
    inside it (``device_time_total`` of the range's CPU-side event: its kernels and its children's; the GPU-side
    copies of user ranges, which span the gaps between kernels too, are left out); on the CPU its duration on the
    calling thread, which is the profiler's CPU time total (self + children). The CPU totals are read from the raw
    profiler events: building the profiler's Python event tree first takes longer than the profiled passes when an
    op-heavy backend (the chunked scan) makes hundreds of thousands of events."""
    totals: dict[str, float] = collections.defaultdict(float)
    if cuda:
        from torch.autograd import DeviceType

        for event in prof.events():
            if event.device_type == DeviceType.CPU and event.name.startswith(PREFIX):
                totals[event.name] += float(event.device_time_total)
        return dict(totals)
    for event in prof.profiler.kineto_results.events():
        name = event.name()
        if name.startswith(PREFIX):
            totals[name] += event.duration_ns() / 1e3
    return dict(totals)


def _memory_snapshot(forward, device: torch.device, path: Path) -> Path | None:
    """PyTorch's memory history over one forward pass, dumped for https://pytorch.org/memory_viz."""
    try:
        torch.cuda.memory._record_memory_history(max_entries=100_000)
        forward()
        synchronize(device)
        torch.cuda.memory._dump_snapshot(str(path))
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    return path


def _energy_run(forward, device: torch.device, seconds: float) -> dict[str, Any]:
    """Forward passes for at least ``seconds`` under the NVML sampler: energy per forward pass and the readings."""
    with NvmlSampler(device) as sampler:
        if not sampler.available:
            return sampler.result()
        n, t0 = 0, time.perf_counter()
        while True:
            forward()
            n += 1
            if n % 4 == 0 or n == 1:
                synchronize(device)
                if time.perf_counter() - t0 >= seconds:
                    break
        synchronize(device)
    out = sampler.result()
    out["forwards"] = n
    if out.get("energy_j") is not None:
        out["energy_per_forward_j"] = out["energy_j"] / n
    return out


# ------------------------------------------------------------------------------------------------------------------
# The roofline's two ceilings


def _median_ms(fn, device: torch.device, repeats: int = 5) -> float:
    import statistics

    fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure_ceilings(device: torch.device, out_dir: str | None) -> dict[str, Any]:
    """The roofline's ceilings on this device, measured: a matrix-product peak (GFLOP/s) and a copy bandwidth
    (GB/s, bytes read + written). CUDA: the card's dense bf16 matmul peak as hardware.py measures and caches it
    (the roof for every dtype: what the card can do at best) and a 1 GiB device-to-device copy; CPU: a float32
    2048³ torch.mm and a 256 MiB tensor copy with this process's threads (median of 5 each, wall clock)."""
    if device.type == "cuda":
        from dimbench.metrics.hardware import bf16_peak

        peak = bf16_peak(device, out_dir)
        n = 2**28  # 1 GiB of float32
        src = torch.empty(n, device=device).normal_()
        dst = torch.empty_like(src)
        ms = _median_ms(lambda: dst.copy_(src), device, repeats=10)
        return {"peak_gflops": peak["bf16_dense_tflops"] * 1e3,
                "peak_method": f"dense bf16 matmul peak: {peak['method']}",
                "bandwidth_gbps": 2 * n * 4 / (ms / 1e3) / 1e9,
                "bandwidth_method": "1 GiB device-to-device copy_ (bytes read + written), median of 10, synchronized "
                "wall clock", "device": device_name(device)}
    size, n = 2048, 2**26  # 2048^3 matmul; 256 MiB of float32
    a, b = torch.randn(size, size), torch.randn(size, size)
    mm_ms = _median_ms(lambda: torch.mm(a, b), device)
    src = torch.empty(n).normal_()
    dst = torch.empty_like(src)
    copy_ms = _median_ms(lambda: dst.copy_(src), device)
    threads = torch.get_num_threads()
    return {"peak_gflops": 2 * size**3 / (mm_ms / 1e3) / 1e9,
            "peak_method": f"float32 torch.mm {size}x{size}x{size}, median of 5, wall clock, {threads} threads",
            "bandwidth_gbps": 2 * n * 4 / (copy_ms / 1e3) / 1e9,
            "bandwidth_method": f"256 MiB tensor copy_ (bytes read + written), median of 5, wall clock, {threads} "
            "threads", "device": "cpu"}


# ------------------------------------------------------------------------------------------------------------------
# The metric


def _rel(path: Path | None, out_dir: str | None) -> str | None:
    """A saved file's path relative to the run folder (the report links it), absolute outside a run."""
    if path is None:
        return None
    if out_dir:
        try:
            return str(path.resolve().relative_to(Path(out_dir).resolve()))
        except ValueError:
            pass
    return str(path)


def profile_point(point: SweepPoint, options: dict[str, Any], out_dir: str | None,
                  folder: Path | None = None) -> dict[str, Any]:
    """Everything the profile metric reports at a point, as plain data (the CLI prints it, the metric writes it)."""
    device = resolve_device(point) if point.device.startswith("cuda") else torch.device(point.device)
    dtype = resolve_dtype(point)
    counts = count_components(point)
    requested_gflop = counts.total_flops / 1e9
    timed = point
    note = f"timed at the requested {point.resolution} px"
    if device.type == "cpu" and requested_gflop > options["cpu_max_gflop"]:
        res, g = affordable_resolution(point, options["cpu_max_gflop"])
        timed = point.at_resolution(res)
        under = "the largest" if g <= options["cpu_max_gflop"] else "none is under the bound: the smallest"
        note = (f"timed at {res} px ({under} resolution whose forward counts ≤ {options['cpu_max_gflop']:g} GFLOP on "
                f"the CPU; {g:.1f} GFLOP there), not at the requested {point.resolution} px ({requested_gflop:.1f} "
                "GFLOP): time shares are those of the smaller size, FLOP and byte shares those of the requested one")
    timed_counts = counts if timed is point else count_components(timed)
    if folder is None:
        base = Path(out_dir) if out_dir else Path(".")
        folder = base / PROFILE_DIR / slug(point.key)
    model = build_model(timed, device)
    inputs = point_inputs(timed, model, device)
    timing = profile_model(model, inputs, device, dtype, warmup=options["warmup"], repeats=options["repeats"],
                           folder=folder, energy_seconds=options.get("energy_seconds", 0.0))
    del model, inputs
    ceilings = measure_ceilings(device, out_dir)
    return {"ceilings": ceilings, "point": point, "timed": timed, "note": note, "counts": counts,
            "timed_counts": timed_counts, "timing": timing, "device": device, "dtype": dtype, "out_dir": out_dir}


def component_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per component (names in COMPONENTS order, then any other): time, share, FLOPs, bytes, rates."""
    counts, timed_counts, timing = result["counts"], result["timed_counts"], result["timing"]
    names = [c for c in COMPONENTS if c in timing.ms or c in counts.flops]
    names += [c for c in {**timing.ms, **counts.flops} if c not in names]
    total_ms = sum(timing.ms.values())
    total_flops, total_bytes = counts.total_flops, counts.total_bytes
    table = []
    for c in names:
        ms = timing.ms.get(c, 0.0)
        f_t, b_t = timed_counts.flops.get(c, 0), timed_counts.bytes.get(c, 0)
        table.append({
            "component": c,
            "ms": ms,
            "share_pct": 100.0 * ms / total_ms if total_ms else 0.0,
            "gflop": counts.flops.get(c, 0) / 1e9,
            "gbytes": counts.bytes.get(c, 0) / 1e9,
            "flop_share_pct": 100.0 * counts.flops.get(c, 0) / total_flops if total_flops else 0.0,
            "byte_share_pct": 100.0 * counts.bytes.get(c, 0) / total_bytes if total_bytes else 0.0,
            "gflop_timed": f_t / 1e9,
            "gbytes_timed": b_t / 1e9,
            "achieved_gflops": f_t / 1e9 / (ms / 1e3) if ms > 0 else None,
            "achieved_gbps": b_t / 1e9 / (ms / 1e3) if ms > 0 else None,
            "intensity": f_t / b_t if b_t else None,  # FLOP per byte, at the timed size
            "intensity_requested": counts.flops.get(c, 0) / counts.bytes[c] if counts.bytes.get(c) else None,
        })
    return table


def profile_metric(point: SweepPoint, ctx: MetricContext) -> list[Measurement]:
    options = ctx.options
    result = profile_point(point, options, ctx.out_dir,
                           None if ctx.out_dir else ctx.state_dir)
    return measurements(result)


def measurements(result: dict[str, Any]) -> list[Measurement]:
    """The profile's rows (declared in :data:`PROFILE`) from :func:`profile_point`'s result."""
    point, timed, timing = result["point"], result["timed"], result["timing"]
    out_dir = result["out_dir"]
    table = component_table(result)
    where = {
        "timed_resolution": timed.resolution,
        "timed_input_size": timed.input_size,
        "requested_resolution": point.resolution,
        "timing_note": result["note"],
        "time_kind": timing.kind,
        "device_name": device_name(result["device"]),
        "precision": precision_label(result["dtype"]),
        "batch": point.batch,
        "scan_backend": timing.backends.get("scan_backend"),
        "attention_backend": timing.backends.get("attention_backend"),
        "trace": _rel(timing.trace, out_dir),
        "memory_snapshot": _rel(timing.memory_snapshot, out_dir),
    }
    time_method = f"{timing.method}; {result['note']}"
    rows = [Measurement("profile_forward_ms", sum(timing.ms.values()), "ms",
                        f"{time_method}; the sum of the component times (= the profiled forward pass)",
                        {**where, "components": table, "forward_range_ms": timing.forward_ms,
                         "gflop": result["counts"].total_flops / 1e9, "gbytes": result["counts"].total_bytes / 1e9,
                         "count_method": COUNT_METHOD, "roofline": result["ceilings"]})]
    for row in table:
        step = list(COMPONENTS).index(row["component"]) if row["component"] in COMPONENTS else len(COMPONENTS)
        extra = {**where, **row, "step": step}
        rows += [
            Measurement("profile_ms", row["ms"], "ms", time_method, dict(extra)),
            Measurement("profile_share", row["share_pct"], "%", f"component time / profiled forward; {time_method}",
                        dict(extra)),
            Measurement("profile_gflop", row["gflop"], "GFLOP", f"{COUNT_METHOD}, at {point.resolution} px",
                        dict(extra)),
            Measurement("profile_gbytes", row["gbytes"], "GB", f"{COUNT_METHOD}, at {point.resolution} px",
                        dict(extra)),
        ]
    energy = timing.energy
    if energy is None:
        rows.append(Measurement("profile_energy_j", None, "J", "not measured", status="skipped",
                                error="not measured: the option energy_seconds is 0"))
    elif energy.get("energy_per_forward_j") is None:
        rows.append(Measurement("profile_energy_j", None, "J", "not measured", status="skipped",
                                error=energy.get("reason", "not available: no energy reading")))
    else:
        per_image = energy["energy_per_forward_j"] / point.batch
        rows.append(Measurement(
            "profile_energy_j", per_image, "J",
            f"{energy['energy_method']}, over {energy['forwards']} forward passes ({energy['seconds']:.2f} s) at "
            f"{timed.resolution} px, divided by the images computed; NVML sampled every "
            f"{energy['interval_s'] * 1e3:g} ms in a background thread; device-wide (anything else on the card counts)",
            {**where, **{k: v for k, v in energy.items() if k != "available"}}))
    return rows


PROFILE = Metric(
    name="profile",
    rows=(
        Row("profile_forward_ms", "ms", "profiled forward time (sum of the components)", per_pass=True,
            per_image_label="profiled forward time per image"),
        Row("profile_ms", "ms", "component time per forward", per_pass=True, series=True,
            per_image_label="component time per image"),
        Row("profile_share", "%", "component share of the forward time", series=True),
        Row("profile_gflop", "GFLOP", "component GFLOPs (2 per multiply-add)", task="count", per_pass=True,
            deterministic=True, series=True, per_image_label="component GFLOPs per image"),
        Row("profile_gbytes", "GB", "component bytes moved (each op reads its inputs, writes its outputs)",
            task="count", per_pass=True, deterministic=True, series=True,
            per_image_label="component bytes moved per image"),
        Row("profile_energy_j", "J", "energy per image (NVML)"),
    ),
    fn=profile_metric,
    description="per named component of the model (models.profiling.COMPONENTS): time (CUDA kernel time, or CPU "
    "time), share of the forward, FLOPs and bytes moved (meta count), a Chrome trace; on CUDA a memory snapshot and "
    "the energy per image from NVML",
    options=(WARMUP, REPEATS, CPU_MAX_GFLOP, ENERGY_SECONDS),
)


def read_trace(path: str | Path) -> Any:
    """A saved Chrome trace's JSON (gzip-compressed when its name ends in .gz)."""
    import gzip

    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return json.loads(raw)


def trace_names(path: str | Path) -> set[str]:
    """The event names of a saved Chrome trace (tests and the report check the components are in it)."""
    data = read_trace(path)
    events = data["traceEvents"] if isinstance(data, dict) else data
    return {e.get("name", "") for e in events if isinstance(e, dict)}
