"""Energy per forward pass from NVML (CUDA): a sampler of utilisation, SM clock and power in a background thread,
with the card's energy counter read at both ends.

Energy comes from the card's energy counter (or the trapezoid integral of the sampled power where the card has
none), over a timed run of forward passes, divided by the passes; it is device-wide (anything else running on
the card counts). Without a GPU or NVML the sampler says ``not available: <reason>`` and never raises, so the
``profile`` metric records a skipped row with that reason.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import torch

from dimbench.metrics.common import synchronize
from dimbench.metrics.hardware import nvml_handle


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
        try:  # imported where NVML is read: without nvidia-ml-py only this reading fails
            import pynvml
        except ImportError as exc:
            raise RuntimeError(f"pynvml (nvidia-ml-py) does not import: {exc}") from None
        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle, _ = nvml_handle(pynvml, self.device)

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


def energy_run(forward, device: torch.device, seconds: float) -> dict[str, Any]:
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
