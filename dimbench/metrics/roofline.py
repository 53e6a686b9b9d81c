"""The roofline's two ceilings on this device, measured: a matrix-product peak and a copy bandwidth.

The ``profile`` metric places each component (FLOPs / time, FLOPs / bytes) under them.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from dimbench.metrics.common import device_name, synchronize
from dimbench.metrics.hardware import bf16_peak


def _median_ms(fn, device: torch.device, repeats: int = 5) -> float:
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
