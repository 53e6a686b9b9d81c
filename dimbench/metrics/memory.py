"""Peak memory of one forward pass: predicted (anywhere) and, on CUDA, measured.

Predicted (``mem_predicted_gib``): the model is built on the meta device, its parameters, buffers and the inputs
are re-created as FakeTensors on the point's device (no memory, no compute), and one forward pass under
torch.inference_mode runs under a dispatch mode that adds up the bytes of every live tensor storage (a storage
counts once however many views share it; a weakref finalizer subtracts it when it dies). The peak over the pass
is the prediction. It includes parameters, buffers, inputs, activations and outputs; it does not include kernel
workspaces (cuBLAS/cuDNN, attention kernels' scratch), allocator rounding and caching, or the CUDA context.
The selective scan is a custom op whose fake kernel only makes its output: when the backend that would run is the
pure-PyTorch ``chunked`` one, its peak work (output included) is estimated once per shape from two short runs of
its code on meta tensors (see ``LiveStorageTracker._scan_work_bytes``) and added on top of what is live at the
call; for the CPU's C kernel (``cpu_fused``) its wrapper's tensors and the kernel's scratch are traced the same
way at full size; for a GPU kernel (mamba_ssm, triton) or the step-by-step ``reference`` backend only the output
counts. The attention
path the prediction followed is recorded: it matters (the math path materialises the L x L score matrix, flash
and memory-efficient kernels do not), and on a machine without CUDA a fake CUDA tensor can only take the math
path, so CUDA points are predicted on the CUDA machine itself.

Measured on CUDA: ``torch.cuda.reset_peak_memory_stats`` then ``max_memory_allocated`` / ``max_memory_reserved``
around one forward pass (after one warm-up pass); and NVML's device-wide "used" memory after it, which includes
the CUDA context, the allocator's cache and any other process on the card.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.utils._pytree import tree_leaves

from dimbench.metrics.base import Gate, Measurement, Metric, MetricContext, Plot, PlotSection, Ratio, Row, Summary
from dimbench.metrics.common import (
    KernelRecorder,
    autocast_context,
    build_model,
    compile_label,
    compile_model,
    device_name,
    first_call,
    point_inputs,
    precision_label,
    probe_backends,
    resolve_device,
    resolve_dtype,
    synchronize,
)
from dimbench.metrics.hardware import nvml_handle
from dimbench.points import SweepPoint
from models import scan

GIB = 2**30

SCAN_OP = torch.ops.dimbench_scan.selective_scan
# Backends whose Python code is cheap to run on fake tensors (about 2·sqrt(L) steps); "reference" takes L steps.
TRACED_SCAN_BACKENDS = ("chunked", "cpu_fused")

PREDICTED_METHOD = (
    "FakeTensor predicted peak: live tensor storage over one forward (inference_mode), parameters, buffers, inputs "
    "and activations included{scan}; kernel workspaces, allocator overhead and CUDA context excluded"
)


def predicted_method(scan_memory: dict[str, str]) -> str:
    """The predicted row's method, naming the scan backend whose work tensors were traced (the peak depends on it:
    the C kernel's scratch is smaller than the chunked scan's intermediates)."""
    traced = ", ".join(f"the {name} scan's" for name in scan_memory)
    return PREDICTED_METHOD.format(scan=f" ({traced} work tensors too)" if traced else "")


class LiveStorageTracker(KernelRecorder):
    """Tracks the bytes of live tensor storages produced by ops (and by :meth:`track`), and their peak.

    Composite ops are decomposed under the tracker (as FlopCounterMode does) so their intermediates are seen; the
    attention kernels the pass took are recorded on the way (:class:`KernelRecorder`).
    Storage Python objects are preserved by PyTorch (one per storage), which is what makes the weakref finalizer
    a reliable "freed" signal.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._alive: set[int] = set()
        self.scan_backends: dict[str, str] = {}  # backend name -> how its memory was counted
        self._scan_cache: dict[tuple, int] = {}

    def _free(self, key: int, nbytes: int) -> None:
        self._alive.discard(key)
        self.live -= nbytes

    def track(self, tensor: Any) -> None:
        if not isinstance(tensor, torch.Tensor):
            return
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._alive:
            return
        nbytes = storage.nbytes()
        self._alive.add(key)
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, nbytes)

    def _scan_work_bytes(self, args, kwargs) -> int | None:
        """Peak bytes the selective scan allocates inside one call (its output included), or None when its
        backend is not traced; cached per shape, so 49 identical blocks cost one estimate.

        The chunked backend's peak is affine in the chunk length T for a fixed number of chunks K (its work
        tensors are (batch, K, T, .) copies plus (batch, K, N, d_inner) states), but a CPU-sized T can be
        thousands of steps. So its Python code runs on meta tensors at T = 4 and T = 8 with the same K as the
        real call (a few dozen cheap steps), and the line through those two peaks is read at the real T.
        """
        backend = args[9] if len(args) > 9 else kwargs.get("backend")
        if backend not in TRACED_SCAN_BACKENDS:
            self.scan_backends[str(backend)] = "output only (fused or step-by-step backend: work not traced)"
            return None
        inputs = args[:8]
        key = (backend, str(inputs[0].device), bool(args[8]), *(None if t is None else (tuple(t.shape), t.dtype)
                                                                  for t in inputs))
        if backend == "cpu_fused":  # its work tensors do not grow with any chunking: traced at full size
            self.scan_backends[backend] = "work tensors traced on meta (the C kernel's scratch included)"
            if key not in self._scan_cache:
                self._scan_cache[key] = self._meta_peak(scan.cpu_fused_scan, inputs, bool(args[8]))
            return self._scan_cache[key]
        self.scan_backends[backend] = "work tensors traced on meta at two short chunk lengths, extrapolated in T"
        if key not in self._scan_cache:
            u, A = inputs[0], inputs[2]
            batch, d_inner, length = u.shape
            chunk = scan.default_chunk_size(batch, d_inner, length, A.shape[1], u.device)
            chunks = -(-length // chunk)
            if chunk <= 8:
                self._scan_cache[key] = self._chunked_peak(inputs, bool(args[8]), chunks, chunk, length)
            else:
                peaks = {probe: self._chunked_peak(inputs, bool(args[8]), chunks, probe) for probe in (4, 8)}
                per_step = (peaks[8] - peaks[4]) / 4
                self._scan_cache[key] = int(peaks[4] + per_step * (chunk - 4))
        return self._scan_cache[key]

    @staticmethod
    def _chunked_peak(inputs, softplus: bool, chunks: int, chunk: int, length: int | None = None) -> int:
        """Peak live bytes of one chunked scan on meta tensors of sequence length ``length`` (default K*T)."""
        def run(*meta, delta_softplus):
            return scan.chunked_scan(*meta, delta_softplus=delta_softplus, chunk_size=chunk)

        return LiveStorageTracker._meta_peak(run, inputs, softplus, chunks * chunk if length is None else length)

    @staticmethod
    def _meta_peak(scan_fn, inputs, softplus: bool, length: int | None = None) -> int:
        """Peak live bytes of ``scan_fn`` on meta tensors shaped like ``inputs`` (sequences of ``length``, default
        theirs)."""
        with unset_fake_temporarily():
            meta = []
            for t in inputs:
                if t is None:
                    meta.append(None)
                    continue
                shape = list(t.shape)
                if t.dim() == 3 and length is not None:  # (batch, channels, L) sequences take the probe length
                    shape[-1] = length
                meta.append(torch.empty(shape, dtype=t.dtype, device="meta"))
            inner = LiveStorageTracker()
            with inner:
                scan_fn(*meta, delta_softplus=softplus)
        return inner.peak

    def observe(self, func, args, kwargs) -> None:
        super().observe(func, args, kwargs)
        if func._overloadpacket is SCAN_OP:
            work = self._scan_work_bytes(args, kwargs)
            if work is not None:
                self.peak = max(self.peak, self.live + work)

    def produced(self, out):
        for leaf in tree_leaves(out):
            self.track(leaf)
        return out


def predict_forward_peak(point: SweepPoint, device: torch.device | str | None = None) -> dict[str, Any]:
    """Predicted peak bytes of one forward pass at the point (see the module docstring for what it includes).

    ``device`` defaults to the point's device; a CUDA prediction needs the CUDA machine to follow the real
    attention kernel (on a machine without CUDA SDPA falls back to the math path).
    """
    device = torch.device(device if device is not None else point.device)
    dtype = resolve_dtype(point)
    model = build_model(point, "meta")
    names_and_tensors = list(model.named_parameters()) + list(model.named_buffers())
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    tracker = LiveStorageTracker()
    with fake_mode:
        state = {n: torch.empty(p.shape, dtype=p.dtype, device=device) for n, p in names_and_tensors}
        x, t, y = point_inputs(point, model, device, shapes_only=True)
    for tensor in (*state.values(), x, t, y):
        tracker.track(tensor)
    resident = tracker.live
    with fake_mode, tracker, torch.inference_mode(), autocast_context(device, dtype):
        out = torch.func.functional_call(model, state, (x, t, y))
    return {
        "peak_bytes": tracker.peak,
        "resident_bytes": resident,
        "activation_peak_bytes": tracker.peak - resident,
        "output_bytes": out.untyped_storage().nbytes(),
        "attention_path": ",".join(sorted(tracker.attention)) or "none",
        "scan_memory": tracker.scan_backends,
        "device": str(device),
    }


def _nvml_used_bytes(device: torch.device) -> tuple[int, str]:
    """Device-wide used memory from NVML for the torch device, and the NVML identity it was matched by.

    Matched by the GPU's UUID (what CUDA_VISIBLE_DEVICES renumbering cannot change), else by PCI bus id; a device
    matched by neither is an error, never another GPU's number.
    """
    import pynvml  # imported where NVML is read: without nvidia-ml-py only this reading fails

    pynvml.nvmlInit()
    try:
        handle, identity = nvml_handle(pynvml, device)
        return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used), identity
    finally:
        pynvml.nvmlShutdown()


def measure_cuda_forward_peak(point: SweepPoint) -> dict[str, Any]:
    """max_memory_allocated / max_memory_reserved of one forward, and NVML device used after it."""
    device, dtype = resolve_device(point), resolve_dtype(point)
    # Blocks cached by earlier metrics in this worker process would count as reserved (and NVML used): free them.
    gc.collect()
    torch.cuda.empty_cache()
    model = build_model(point, device)
    run = compile_model(model, point)
    x, t, y = point_inputs(point, model, device)

    def forward(net=run):
        with torch.inference_mode(), autocast_context(device, dtype):
            return net(x, t, y)

    backends = probe_backends(lambda: forward(model))  # also the warm-up pass (workspaces, kernel selection)
    backends.update(first_call(forward, point, device))  # compiled: the compiling call, before the peak is reset
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    out = forward()
    synchronize(device)
    allocated = torch.cuda.max_memory_allocated(device)
    reserved = torch.cuda.max_memory_reserved(device)
    used, nvml_id = _nvml_used_bytes(device)
    del out
    return {
        "allocated_bytes": allocated,
        "reserved_bytes": reserved,
        "allocated_before_bytes": before,
        "nvml_used_bytes": used,
        "nvml_device": nvml_id,
        **backends,
    }


def memory_metric(point: SweepPoint, ctx: MetricContext) -> list[Measurement]:
    device, dtype = torch.device(point.device), resolve_dtype(point)
    if device.type == "cuda":
        device = resolve_device(point)
    common = {"batch": point.batch, "precision": precision_label(dtype)}
    if point.compile:
        # The prediction follows the eager model's tensors; the eager point of the suite holds it.
        rows = [Measurement("mem_predicted_gib", None, "GiB", "not measured", status="skipped",
                            error="predicted for the eager model only (FakeTensor run of its tensors); see the eager "
                            "point")]
        if device.type != "cuda":
            reason = "CUDA only: measured by the CUDA caching allocator and NVML"
            return rows + [Measurement(name, None, "GiB", "not measured", status="skipped", error=reason)
                           for name in ("mem_allocated_gib", "mem_reserved_gib", "mem_device_gib")]
        return rows + _measured_rows(point, device, common, None)
    pred = predict_forward_peak(point, device)
    pred_extra = {
        **common,
        "resident_gib": pred["resident_bytes"] / GIB,
        "activation_peak_gib": pred["activation_peak_bytes"] / GIB,
        "output_gib": pred["output_bytes"] / GIB,
        "attention_path": pred["attention_path"],
        "predicted_for": pred["device"],
        "scan_memory": pred["scan_memory"],
    }
    rows = [Measurement("mem_predicted_gib", pred["peak_bytes"] / GIB, "GiB", predicted_method(pred["scan_memory"]),
                        pred_extra)]
    if device.type != "cuda":
        reason = "CUDA only: measured by the CUDA caching allocator and NVML"
        for name in ("mem_allocated_gib", "mem_reserved_gib", "mem_device_gib"):
            rows.append(Measurement(name, None, "GiB", "not measured", status="skipped", error=reason))
        return rows

    return rows + _measured_rows(point, device, common, pred["peak_bytes"] / GIB)


def _measured_rows(point: SweepPoint, device: torch.device, common: dict,
                   predicted_gib: float | None) -> list[Measurement]:
    real = measure_cuda_forward_peak(point)
    extra = {
        **common,
        "device_name": device_name(device),
        "attention_backend": real["attention_backend"],
        "scan_backend": real["scan_backend"],
        "allocated_before_gib": real["allocated_before_bytes"] / GIB,
        "predicted_gib": predicted_gib,
    }
    if point.compile:
        extra.update(compile=point.compile, compile_first_call_s=real["compile_first_call_s"])
    region = ("one forward (inference_mode) after one warm-up forward, parameters and inputs included, "
              f"{compile_label(point)}")
    if point.compile:
        region += " (after its first, compiling call)"
    return [
        Measurement(
            "mem_allocated_gib",
            real["allocated_bytes"] / GIB,
            "GiB",
            f"torch.cuda.max_memory_allocated over {region}",
            dict(extra),
        ),
        Measurement(
            "mem_reserved_gib",
            real["reserved_bytes"] / GIB,
            "GiB",
            f"torch.cuda.max_memory_reserved over {region} (allocator cache included)",
            dict(extra),
        ),
        Measurement(
            "mem_device_gib",
            real["nvml_used_bytes"] / GIB,
            "GiB",
            "NVML device used after one forward: device-wide, includes the CUDA context, the allocator cache and "
            "other processes on the card",
            {**extra, "nvml_device": real["nvml_device"]},
        ),
    ]


# The report's section of these rows against resolution (dimbench.report.plotted): one panel per facet, the
# source told by line style.
MEMORY_PLOT = PlotSection(
    "memory", "Memory", order=40, together=True, title="Peak memory — {facet}", panel="Peak memory — {facet}",
    ylabel="memory [{unit}]", table="Peak memory", size=(8.5, 5.2),
    caption="Peak memory vs resolution, log-log, {facet}. ",
    batch_note="memory is the peak of one pass over the whole batch, not per image — weights and workspaces are paid "
    "once per batch, so it does not divide by the batch. ",
    notes="Line style gives the source: solid = allocator peak (tensors only), dashed = allocator reserved, dash-dot "
    "= NVML device-wide used (includes the CUDA context), dotted with hollow markers = predicted under FakeTensorMode "
    "(not measured). ")

MEMORY = Metric(
    name="memory",
    rows=(
        # Gated within 1 %: the prediction follows the model's tensors exactly but also torch's kernels' scratch;
        # on CUDA it follows the attention kernel and scan backend that card and install would run.
        Row("mem_predicted_gib", "GiB", "predicted peak memory (FakeTensor)", predicted=True, deterministic=True,
            summary=Summary("mem GiB\n(predicted)", "{:.2f}"), ratio=Ratio("predicted peak memory", "#2e8b3a"),
            gate=Gate(0.01, worse="higher", same_device="cuda"), plot=Plot(MEMORY_PLOT, linestyle=":")),
        Row("mem_allocated_gib", "GiB", "allocator peak (max_memory_allocated)",
            summary=Summary("mem GiB\n(allocated peak)", "{:.2f}"), ratio=Ratio("allocator peak memory", "#2e8b3a"),
            gate=Gate(0.02, worse="higher", same_device=True), plot=Plot(MEMORY_PLOT, linestyle="-")),
        Row("mem_reserved_gib", "GiB", "allocator reserved peak (max_memory_reserved)",
            plot=Plot(MEMORY_PLOT, linestyle="--")),
        Row("mem_device_gib", "GiB", "device memory used (NVML, incl. CUDA context)",
            summary=Summary("mem GiB\n(NVML device)", "{:.2f}"), plot=Plot(MEMORY_PLOT, linestyle="-.")),
    ),
    fn=memory_metric,
    description="peak memory of one forward: FakeTensor-predicted everywhere; allocator peaks and NVML device "
    "used on CUDA",
    compiles=True,
)
