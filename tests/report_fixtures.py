"""Results folders for the report tests, written the way the runner writes them (docs/contracts.md).

The numbers are realistic in shape, not measurements: GMACs follow a linear term per token plus, for the
attention models, a quadratic one, anchored on the published DiT-XL/2 counts (118.6 GMACs at 256 px, 524.6 at
512 px); DiM-H/2 grows linearly and costs more at low resolution, so DiM/DiT crosses 1 between 1024 and 2048 px.

:func:`varying_batch_rows` is shaped like the H200 run of suites/resolution_scaling.yaml: the batch shrinks as
the resolution grows (32, 8, 2, 1), float32 only at 256 px, DiM's scan on the chunked backend; its per-image
numbers are those of that run, rounded.
"""

from __future__ import annotations

import json
from pathlib import Path

MODELS = ["dim_h_2", "dit_xl_2", "uvit_h_2"]
RESOLUTIONS = [256, 512, 1024, 2048]
# Per family (the model name's prefix, so made-up names work too):
# GMACs = lin * tokens + quad * tokens^2, tokens = (resolution / 8 / patch 2)^2
GMAC_TERMS = {"dim": (0.80, 0.0), "dit": (0.4469, 6.383e-5), "uvit": (0.50, 7.0e-5)}
PARAMS = {"dim": 860e6, "dit": 675e6, "uvit": 501e6}
OOM_POINT = ("dit_xl_2", 2048)
ERROR_POINT = ("uvit_h_2", 2048)
ERROR_MESSAGE = "RuntimeError: CUDA error: an illegal memory access was encountered"

FLOP_METHOD = "meta-device FlopCounterMode (1 MAC = 2 FLOPs)"
TIME_METHOD = "cuda events, median of 50 after 10 warm-up"


def gmacs(model: str, res: int) -> float:
    lin, quad = GMAC_TERMS[model.split("_")[0]]
    t = (res // 16) ** 2
    return lin * t + quad * t * t


def _row(model, res, metric, value, unit, method, task, status="ok", error=None, extra=None, batch=1,
         dtype="bfloat16", device="cuda", suite="resolution_scaling"):
    key = f"{model}|r{res}|b{batch}|{dtype}|{device}"
    return {
        "suite": suite, "point_key": key, "model": model, "resolution": res, "input_size": res // 8,
        "batch": batch, "dtype": dtype, "device": device, "task": task, "metric": metric,
        "value": value if status == "ok" else None, "unit": unit, "status": status, "method": method,
        "started_at": "2025-01-01T00:00:00+00:00", "duration_s": 1.0, "error": error, "extra": extra or {},
    }


def realistic_rows(models=MODELS, resolutions=RESOLUTIONS, oom=OOM_POINT, error=ERROR_POINT,
                   error_message=ERROR_MESSAGE) -> list[dict]:
    """3 models x 4 resolutions on a (pretend) GPU: counts, timing, memory, efficiency; one OOM, one error,
    and NVML memory skipped everywhere (as when nvidia-ml-py is missing)."""
    rows = []
    for m in models:
        for r in resolutions:
            g = gmacs(m, r)
            rows += [
                _row(m, r, "params", PARAMS[m.split("_")[0]], "count", "sum of parameter numel", "count"),
                _row(m, r, "gmacs", g, "GMAC", FLOP_METHOD, "count"),
                _row(m, r, "gflops", 2 * g, "GFLOP", FLOP_METHOD, "count"),
                _row(m, r, "mem_predicted_gib", 2.0 + g / 400, "GiB", "FakeTensor predicted peak", "forward"),
            ]
            measured = [("latency_ms", "ms", TIME_METHOD), ("throughput", "img/s", TIME_METHOD),
                        ("mem_allocated_gib", "GiB", "torch.cuda.max_memory_allocated"),
                        ("tflops_achieved", "TFLOP/s", "counted FLOPs / cuda-event time"),
                        ("mfu", "%", "achieved / measured dense bf16 peak")]
            if (m, r) in (oom, error):
                status = "oom" if (m, r) == oom else "error"
                msg = "CUDA out of memory. Tried to allocate 20.00 GiB" if status == "oom" else error_message
                rows += [_row(m, r, k, None, u, meth, "forward", status=status, error=msg) for k, u, meth in measured]
            else:
                # a fixed launch overhead, then ~300 GMAC/ms: small inputs use the card poorly
                lat = 0.25 + g / 300.0 * (1.0 if m.startswith("dim") else 0.8)
                # a scan backend where a scan ran (DiM), an attention backend where attention did
                backends = {"scan_backend": "mamba_ssm"} if m.startswith("dim") else {"attention_backend": "flash"}
                rows += [
                    _row(m, r, "latency_ms", lat, "ms", TIME_METHOD, "forward", extra=backends),
                    _row(m, r, "throughput", 1000.0 / lat, "img/s", TIME_METHOD, "forward"),
                    _row(m, r, "mem_allocated_gib", 1.8 + g / 450, "GiB", "torch.cuda.max_memory_allocated",
                         "forward"),
                    _row(m, r, "tflops_achieved", 2 * g / lat, "TFLOP/s", "counted FLOPs / cuda-event time",
                         "forward"),
                    _row(m, r, "mfu", 2 * g / lat / 9.89, "%", "achieved / measured dense bf16 peak", "forward"),
                ]
            rows.append(_row(m, r, "mem_device_gib", None, "GiB", "NVML device used", "forward", status="skipped",
                             error="nvidia-ml-py is not installed"))
    return rows


# Per image, at 256 / 512 / 1024 / 1536 px (the H200 run, rounded): GMACs, forward ms, allocator peak GiB (whole
# batch). GMACs per image cross between 1024 and 1536 px (DiM/DiT 1.31 -> 0.87); times never do.
VARYING_BATCH = {256: 32, 512: 8, 1024: 2, 1536: 1}
PER_IMAGE = {
    "dim_h_2": {"gmacs": [311.1, 1045.6, 3820.3, 8335.9], "ms": [30.2, 107.4, 425.3, 827.8],
                "gib": [6.44, 5.79, 5.51, 5.70]},
    "dit_xl_2": {"gmacs": [118.6, 524.5, 2909.2, 9589.5], "ms": [1.0, 4.285, 21.46, 62.97],
                 "gib": [2.82, 2.82, 2.83, 2.89]},
    "uvit_h_2": {"gmacs": [133.2, 582.3, 3167.1, 10277.5], "ms": [0.887, 3.793, 20.0, 63.12],
                 "gib": [2.75, 2.75, 2.76, 2.90]},
}
FLOAT32_SLOWDOWN = {"dim_h_2": 1.33, "dit_xl_2": 6.02, "uvit_h_2": 7.37}  # float32 / bfloat16 time at 256 px


def varying_batch_rows() -> list[dict]:
    """3 models x 4 resolutions, one batch per resolution (VARYING_BATCH), as the H200 run recorded them:
    GMACs / GFLOPs of the whole batch (extra ``gmacs_per_image`` on the GMACs rows only, so both ways of getting
    per-image counts are used), latency of the whole batch, throughput in img/s, allocator peak of the whole
    batch; bfloat16 everywhere and float32 (timing and memory) at 256 px only."""
    rows = []
    for m, per in PER_IMAGE.items():
        for i, (r, b) in enumerate(VARYING_BATCH.items()):
            g = per["gmacs"][i]
            rows += [
                _row(m, r, "gmacs", g * b, "GMAC", FLOP_METHOD, "count", batch=b, extra={"gmacs_per_image": g}),
                _row(m, r, "gflops", 2 * g * b, "GFLOP", FLOP_METHOD, "count", batch=b),
            ]
            timing = {"scan_backend": "chunked"} if m.startswith("dim") else {"attention_backend": "cudnn"}
            for dtype in ("bfloat16", "float32") if r == 256 else ("bfloat16",):
                ms = per["ms"][i] * (FLOAT32_SLOWDOWN[m] if dtype == "float32" else 1.0)
                lat = ms * b
                spread = {"p10_ms": lat * 0.99, "p90_ms": lat * 1.01}
                rows += [
                    _row(m, r, "latency_ms", lat, "ms", TIME_METHOD, "forward", batch=b, dtype=dtype,
                         extra={**timing, **spread}),
                    _row(m, r, "throughput", 1000.0 / ms, "img/s", TIME_METHOD, "forward", batch=b, dtype=dtype,
                         extra=timing),
                    _row(m, r, "mem_allocated_gib", per["gib"][i], "GiB", "torch.cuda.max_memory_allocated",
                         "forward", batch=b, dtype=dtype, extra=timing),
                    _row(m, r, "tflops_achieved", 2 * g / ms, "TFLOP/s", "counted FLOPs / cuda-event time",
                         "forward", batch=b, dtype=dtype, extra=timing),
                ]
    return rows


# The shape of dimbench.environment's record (the report reads gpu_name, driver, cpu, versions, git).
ENVIRONMENT = {
    "started_at": "2025-01-01T00:00:00+00:00",
    "command": "dimbench run suites/resolution_scaling.yaml --out runs/h100",
    "versions": {"python": "3.11.2", "torch": "2.11.0", "cuda": "12.8", "triton": "3.3.0"},
    "device": "cuda",
    "gpu_name": "NVIDIA H100 80GB HBM3",
    "driver": "570.86",
    "cpu": {"processor": "x86_64", "cores": 16},
    "attention_backends_enabled": {"flash": True, "mem_efficient": True, "math": True},
    "scan_backend_override": None,
    "git": {"commit": "0123456789abcdef0123", "dirty": False},
}


def write_results(directory: Path, rows: list[dict], environment: dict | None = ENVIRONMENT,
                  torn_tail: str | None = None) -> Path:
    """Write results.jsonl (+ environment.json) like the runner; ``torn_tail`` appends an incomplete line."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "results.jsonl", "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
        if torn_tail:
            fh.write(torn_tail)
    if environment is not None:
        (directory / "environment.json").write_text(json.dumps(environment, indent=2), encoding="utf-8")
    return directory
