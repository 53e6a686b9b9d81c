"""Facts about the card a metric runs on: its measured dense bfloat16 matmul peak, the denominator of model FLOP
utilisation (MFU), and its NVML handle.

The peak is measured, not taken from a datasheet: a large bf16 matmul (8192^3 by default), timed with CUDA events,
median of 10 after warm-up. The result is cached per device name and torch version in ``<out_dir>/hardware.json``
so each worker subprocess of a run measures it at most once.
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
from pathlib import Path
from typing import Any

import torch

from dimbench.files import atomic_write

HARDWARE_FILE = "hardware.json"


def nvml_handle(nvml: Any, device: torch.device) -> tuple[Any, str]:
    """The NVML handle of the torch CUDA ``device`` and the identity it was matched by ("uuid GPU-..." or
    "pci 00000000:3b:00.0"); ``nvml`` is the pynvml module, initialised.

    Matched by the GPU's UUID (what CUDA_VISIBLE_DEVICES renumbering cannot change), else by PCI bus id; a device
    matched by neither is a RuntimeError, never another GPU's handle.
    """
    props = torch.cuda.get_device_properties(device)
    candidates = []
    uuid = getattr(props, "uuid", None)
    if uuid is not None:
        text = str(uuid)
        candidates.append(("uuid", text if text.startswith("GPU-") else f"GPU-{text}"))
    if all(hasattr(props, a) for a in ("pci_domain_id", "pci_bus_id", "pci_device_id")):
        candidates.append(("pci", f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"))
    errors = []
    for kind, ident in candidates:
        lookup = nvml.nvmlDeviceGetHandleByUUID if kind == "uuid" else nvml.nvmlDeviceGetHandleByPciBusId
        try:
            return lookup(ident), f"{kind} {ident}"
        except nvml.NVMLError as exc:
            errors.append(f"{kind} {ident}: {exc}")
    raise RuntimeError(f"NVML found no device for torch {device}: {'; '.join(errors) or 'no identity known'}")


def measure_bf16_peak(device: torch.device, size: int = 8192, warmup: int = 3, repeats: int = 10) -> dict[str, Any]:
    """Time ``size``^3 bf16 matmuls on ``device``; returns TFLOP/s (2 FLOPs per multiply-add) and how."""
    if device.type != "cuda":
        raise ValueError("the bf16 peak is measured on CUDA devices only")
    with torch.cuda.device(device):
        a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
        b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
        out = torch.empty(size, size, device=device, dtype=torch.bfloat16)
        for _ in range(warmup):
            torch.mm(a, b, out=out)
        torch.cuda.synchronize(device)
        times_ms = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.mm(a, b, out=out)
            end.record()
            end.synchronize()
            times_ms.append(start.elapsed_time(end))
        del a, b, out
    median_ms = statistics.median(times_ms)
    return {
        "bf16_dense_tflops": 2 * size**3 / (median_ms * 1e-3) / 1e12,
        "method": f"measured: bf16 torch.mm {size}x{size}x{size}, cuda events, median of {repeats} after "
        f"{warmup} warm-up",
        "times_ms": times_ms,
        "device_name": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _cache_key(device: torch.device) -> str:
    return f"{torch.cuda.get_device_name(device)}|torch {torch.__version__}"


def read_cache(out_dir: str | os.PathLike | None) -> dict[str, Any]:
    if not out_dir:
        return {}
    path = Path(out_dir) / HARDWARE_FILE
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def _write_cache(out_dir: str | os.PathLike, data: dict[str, Any]) -> None:
    """Atomic replace, so concurrent workers never read a half-written file (a lost update only costs a
    second measurement)."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / HARDWARE_FILE, json.dumps(data, indent=2, sort_keys=True))


def bf16_peak(device: torch.device, out_dir: str | os.PathLike | None) -> dict[str, Any]:
    """The measured bf16 peak for ``device``: from ``<out_dir>/hardware.json`` when a worker of this run already
    measured it, else measured now (and cached when ``out_dir`` is given)."""
    key = _cache_key(device)
    cached = read_cache(out_dir).get(key)
    if cached is not None:
        return {**cached, "cached": True}
    entry = measure_bf16_peak(device)
    if out_dir:
        data = read_cache(out_dir)
        data[key] = entry
        _write_cache(out_dir, data)
    return {**entry, "cached": False}
