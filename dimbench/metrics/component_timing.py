"""Time per named component of a forward pass, under torch.profiler.

One untimed probe pass (records the scan and attention backends), warm-up passes, then ``repeats`` forward passes
under ``torch.profiler`` with the ranges of :func:`models.profiling.component` open. On CUDA a component's time
is the **CUDA kernel time** of the kernels launched inside its range (the profiler's device time of the range and
its children); on the CPU it is the range's **wall time on the calling thread** (the profiler's CPU total, self +
children; with several threads it is still elapsed time, not CPU-seconds summed over threads). Each is the mean
over the repeats (means add up; medians would not). ``other`` = the whole forward's range − the named ranges, so
the components and ``other`` add up to the whole forward exactly; the named ranges can never exceed it (they are
disjoint and nested in it). The profiler's own bookkeeping is inside those times: compare components with each
other, and use the ``latency`` metric for the un-profiled speed. A Chrome/Perfetto trace of the profiled passes
is saved; on CUDA also a memory snapshot (``torch.cuda.memory._record_memory_history`` over one extra pass; open
it at https://pytorch.org/memory_viz), and the energy per pass (:mod:`dimbench.metrics.energy`).
"""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

import models
from dimbench.metrics.common import autocast_context, device_name, precision_label, probe_backends, synchronize
from dimbench.metrics.energy import NvmlSampler, energy_run
from models.profiling import COMPONENTS, PREFIX

FORWARD_RANGE = PREFIX + "forward"
NAMED = tuple(c for c in COMPONENTS if c != "other")


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
        timing.energy = energy_run(forward, device, energy_seconds)
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
