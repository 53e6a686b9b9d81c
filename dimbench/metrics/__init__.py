"""dimbench's suite-level metrics: each turns a SweepPoint into Measurements (see docs/contracts.md).

    >>> from dimbench.metrics import METRICS
    >>> rows = METRICS["flops"].fn(point, {"warmup": 2, "repeats": 5, "out_dir": "results/run"})

=========== ================================================ ==================================================
metric      rows                                             how
=========== ================================================ ==================================================
params      params, params_trainable                         meta-device model
flops       gmacs, gflops                                    FlopCounterMode on the meta device
fvcore      gmacs_fvcore                                     fvcore FlopCountAnalysis (+ SDPA and scan handlers)
latency     latency_ms, throughput, tflops_achieved, mfu     wall clock (CPU) / CUDA events; MFU vs measured peak
train_step  train_step_ms, train_throughput                  forward + MSE + backward + AdamW, timed likewise
memory      mem_predicted_gib, mem_allocated_gib,            FakeTensor prediction; CUDA allocator peaks; NVML
            mem_reserved_gib, mem_device_gib
=========== ================================================ ==================================================
"""

from __future__ import annotations

from dimbench.metrics.base import DTYPES, Measurement, Metric, SkipMetric
from dimbench.metrics.flops import FLOPS
from dimbench.metrics.fvcore_count import FVCORE
from dimbench.metrics.memory import MEMORY
from dimbench.metrics.params import PARAMS
from dimbench.metrics.timing import LATENCY, TRAIN_STEP

METRICS: dict[str, Metric] = {m.name: m for m in (PARAMS, FLOPS, FVCORE, LATENCY, TRAIN_STEP, MEMORY)}

__all__ = ["DTYPES", "METRICS", "Measurement", "Metric", "SkipMetric"]
