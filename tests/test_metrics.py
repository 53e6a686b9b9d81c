"""Metric registry, timing, memory prediction, CUDA-only rows, shared helpers; CUDA paths under @pytest.mark.cuda.

CPU timings are never asserted on (shared, noisy machines): only that rows are well formed and say how they were
obtained.
"""

from __future__ import annotations

import dataclasses
import json
import re
import statistics

import pytest
import torch

import models
from dimbench.metrics import (  # noqa: F401  (SkipMetric: part of the API)
    METRICS,
    Measurement,
    SkipMetric,
    hardware,
    row_declaration,
)
from dimbench.metrics.common import build_model, ensure_real, make_inputs, point_inputs, resolve_device
from dimbench.metrics.memory import predict_forward_peak, predicted_method
from dimbench.points import SweepPoint

OPTIONS = {"warmup": 1, "repeats": 3}


# One OpenMP thread (tests/conftest.py: tiny models, busy machines).
pytestmark = pytest.mark.usefixtures("one_thread")


def point(model="dit_s_2", input_size=8, batch=2, dtype="float32", device="cpu", **kw) -> SweepPoint:
    latent = models.model_info(model).latent
    resolution = input_size * 8 if latent else input_size
    return SweepPoint("test", model, resolution, input_size, batch, dtype, device, (), **kw)


def rows_by_metric(name: str, p: SweepPoint, options=OPTIONS) -> dict[str, Measurement]:
    metric = METRICS[name]
    known = {f.name for f in metric.option_record().fields} | {"out_dir"}  # memory has no warmup/repeats
    rows = metric.measure(p, **{k: v for k, v in options.items() if k in known})
    assert all(isinstance(r, Measurement) for r in rows)
    assert {r.metric for r in rows} <= set(METRICS[name].produces)
    return {r.metric: r for r in rows}


def test_every_registered_metric_declares_well_formed_rows():
    """What holds for every metric, the built-in ones and any added later: a description, rows with a unit and a
    label, row names that are identifiers unique across metrics (they are result columns and file names), and
    each name resolving to its own declaration."""
    assert len(METRICS) >= 5  # the registry is populated (the built-ins register on import)
    produced = [row for m in METRICS.values() for row in m.produces]
    assert len(produced) == len(set(produced)), "a row name is declared by two metrics"
    for name, metric in METRICS.items():
        assert metric.name == name and metric.description and metric.rows, name
        assert metric.produces == tuple(r.name for r in metric.rows)
        for row in metric.rows:
            assert re.fullmatch(r"[a-z][a-z0-9_]*", row.name), row.name
            assert row.unit and row.label, row.name
            assert row_declaration(row.name) is row
            assert row.summary is None or row.summary.header, row.name
            # A count is compared exactly; samples to test belong to measured values, never to a count.
            assert not row.deterministic or row.gate_policy is not None, row.name
            assert row.gate_policy is None or row.gate_policy.samples is None or not row.deterministic, row.name


@pytest.mark.parametrize("name", [m.name for m in METRICS.values() if all(r.deterministic for r in m.rows)])
def test_each_counting_metric_writes_exactly_its_declared_rows(name):
    """The metrics whose every row is a count are cheap on a tiny model: each writes each of its rows once, ok
    or skipped with a reason, and nothing it does not declare."""
    for model in ("dim_tiny_4", "dit_tiny_4"):
        rows = METRICS[name].measure(point(model, 8, batch=1))
        assert sorted(r.metric for r in rows) == sorted(METRICS[name].produces), (name, model)
        assert all(r.status == "ok" or (r.status == "skipped" and r.error) for r in rows), (name, model)


# --- inputs ---------------------------------------------------------------------------------------------------------


def test_inputs_follow_each_family_convention():
    x, t, y = make_inputs("dit_s_2", 64, 8, "cpu")
    assert x.shape == (64, 4, 8, 8) and t.dtype == torch.long and 0 <= t.min() and t.max() <= 999
    assert y.dtype == torch.long and 0 <= y.min() and y.max() < 1000
    x, t, y = make_inputs("dim_h_2", 64, 8, "cpu")
    assert t.is_floating_point() and 1 <= t.min() and t.max() <= 1000
    x, t, y = make_inputs("uvit_s_2", 4, 32, "cpu")
    assert x.shape == (4, 3, 32, 32) and y is None  # unconditional
    again = make_inputs("uvit_s_2", 4, 32, "cpu")
    assert torch.equal(x, again[0]) and torch.equal(t, again[1])  # seeded


def test_cuda_point_without_cuda_is_an_error_not_a_cpu_run():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device(point(device="cuda"))


# --- latency and train step -----------------------------------------------------------------------------------------


def test_latency_rows_on_a_tiny_model():
    rows = rows_by_metric("latency", point("dit_s_2", 8, batch=2))
    lat, thr = rows["latency_ms"], rows["throughput"]
    assert lat.status == "ok" and lat.unit == "ms" and lat.value > 0
    assert thr.unit == "img/s" and thr.value == pytest.approx(2 / (lat.value / 1e3))
    assert "cpu wall clock (perf_counter), median of 3 after 1 warm-up" in lat.method
    assert "inference_mode" in lat.method and "float32" in lat.method
    e = lat.extra
    assert e["n"] == 3 and len(e["samples_ms"]) == 3
    assert e["min_ms"] <= e["p10_ms"] <= e["median_ms"] <= e["p90_ms"] <= e["max_ms"]
    assert e["median_ms"] == lat.value
    assert e["attention_backend"] == "cpu_flash" and e["scan_backend"] is None
    assert set(e["tf32"]) >= {"cuda_matmul_allow_tf32", "float32_matmul_precision"}
    # CUDA-only rows are skipped rows with a reason, not missing.
    for name in ("tflops_achieved", "mfu"):
        assert rows[name].status == "skipped" and rows[name].value is None and "CUDA only" in rows[name].error
    # The time relative to the reference matmul timed in the same rounds: what regression gates compare.
    rel = rows["latency_rel"]
    assert rel.status == "ok" and rel.unit == "x ref"
    ref = rel.extra["reference_samples_ms"]
    assert len(ref) == 3 and all(r > 0 for r in ref)
    assert rel.value == pytest.approx(statistics.median(s / r for s, r in zip(e["samples_ms"], ref, strict=True)))
    assert "float32 matmul 512x512x512 on cpu" in rel.method and rel.extra["reference"] in rel.method


@pytest.mark.slow
def test_latency_bf16_runs_under_autocast_and_dim_records_its_scan_backend():
    rows = rows_by_metric("latency", point("dim_s_2", 4, batch=1, dtype="bfloat16"), {"warmup": 0, "repeats": 1})
    lat = rows["latency_ms"]
    assert "torch.autocast(bfloat16)" in lat.method
    assert lat.extra["attention_backend"] == "none"
    assert lat.extra["scan_backend"] in models.scan.known_backends()
    assert "dimbench_scan::selective_scan" in lat.extra["custom_ops"]


@pytest.mark.slow
def test_train_step_rows_and_it_follows_an_inference_forward_of_dim():
    """DiM caches token index maps; maps cached by an inference_mode forward must not break a training step."""
    p = point("dim_s_2", 2, batch=1)  # the smallest grid: a DiM backward on the CPU is slow
    rows_by_metric("latency", p, {"warmup": 0, "repeats": 1})
    rows = rows_by_metric("train_step", p, {"warmup": 0, "repeats": 1})
    step, thr = rows["train_step_ms"], rows["train_throughput"]
    assert step.status == "ok" and step.value > 0 and step.unit == "ms"
    assert thr.value == pytest.approx(1 / (step.value / 1e3))
    assert "backward + AdamW" in step.method
    assert "median of 1 after 1 warm-up" in step.method  # at least one untimed step (optimizer state)
    rel = rows["train_step_rel"]
    assert rel.value == pytest.approx(step.value / rel.extra["reference_samples_ms"][0]) and rel.unit == "x ref"


@pytest.mark.slow
def test_train_step_on_dit_trains_on_eps_channels():
    rows = rows_by_metric("train_step", point("dit_s_2", 8, batch=2), {"warmup": 1, "repeats": 1})
    assert rows["train_step_ms"].extra["attention_backend"] == "cpu_flash"


def test_a_point_with_a_checkpoint_runs_the_checkpoint_weights(tmp_path):
    with torch.device("cpu"):
        source = models.create_model("dit_s_8", input_size=16)
    torch.nn.init.normal_(source.final_layer.linear.weight)  # zero-initialised in a fresh model
    models.checkpoints.save_checkpoint(source, tmp_path / "dit.pt")
    p = point("dit_s_8", 16, batch=1, checkpoint=str(tmp_path / "dit.pt"))
    loaded = build_model(p, "cpu")
    assert torch.equal(loaded.final_layer.linear.weight, source.final_layer.linear.weight)
    assert rows_by_metric("latency", p, {"warmup": 0, "repeats": 1})["latency_ms"].status == "ok"
    missing = dataclasses.replace(p, checkpoint=str(tmp_path / "absent.pt"))
    with pytest.raises(Exception, match="absent.pt"):
        build_model(missing, "cpu")


@pytest.mark.slow
def test_a_forward_after_a_prediction_really_computes():
    """The memory prediction runs under FakeTensorMode; model caches must not turn later real runs fake."""
    p = point("dim_s_2", 4, batch=1)
    predict_forward_peak(p)
    model = build_model(p, "cpu")
    x, t, y = point_inputs(p, model, "cpu")
    with torch.inference_mode():
        out = model(x, t, y)
    ensure_real(out)
    assert torch.isfinite(out).all()


def test_ensure_real_rejects_fake_outputs():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        fake = torch.empty(2)
    with pytest.raises(RuntimeError, match="FakeTensor"):
        ensure_real((fake, None))


# --- memory ---------------------------------------------------------------------------------------------------------


def _state_bytes(model) -> int:
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def test_predicted_memory_rows_and_cuda_rows_skipped_on_cpu():
    rows = rows_by_metric("memory", point("dit_s_2", 8, batch=2))
    pred = rows["mem_predicted_gib"]
    assert pred.status == "ok" and pred.unit == "GiB" and pred.value > 0
    assert "predicted" in pred.method and "FakeTensor" in pred.method
    assert pred.extra["attention_path"] == "cpu_flash"
    for name in ("mem_allocated_gib", "mem_reserved_gib", "mem_device_gib"):
        assert rows[name].status == "skipped" and "CUDA only" in rows[name].error


def test_predicted_memory_counts_parameters_and_inputs_exactly_and_grows_with_batch():
    small = predict_forward_peak(point("dit_s_2", 16, batch=1))
    large = predict_forward_peak(point("dit_s_2", 16, batch=8))
    model = build_model(point("dit_s_2", 16), "meta")
    x, t, y = make_inputs("dit_s_2", 8, 16, "meta")
    inputs = sum(v.numel() * v.element_size() for v in (x, t, y))
    assert large["resident_bytes"] == _state_bytes(model) + inputs
    assert 0 < small["activation_peak_bytes"] < large["activation_peak_bytes"]
    # Activations scale with the batch (8x, up to the batch-independent conditioning tensors).
    assert 6 < large["activation_peak_bytes"] / small["activation_peak_bytes"] <= 8.5
    assert large["peak_bytes"] > small["peak_bytes"]


def _cpu_forward_peak_bytes(p: SweepPoint) -> int:
    """Real CPU peak of one forward: parameters + inputs + the allocator's peak during the pass (profiler)."""
    from torch.profiler import ProfilerActivity, profile

    model = build_model(p, "cpu")
    x, t, y = point_inputs(p, model, "cpu")
    resident = _state_bytes(model) + sum(v.numel() * v.element_size() for v in (x, t, y) if v is not None)
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model(x, t, y)
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return resident + peak


@pytest.mark.slow
@pytest.mark.parametrize("model, input_size, batch", [("dit_s_2", 16, 8), ("uvit_s_2", 16, 4), ("dim_s_2", 8, 2)])
def test_predicted_memory_is_close_to_the_real_cpu_peak(model, input_size, batch):
    p = point(model, input_size, batch=batch)
    predicted = predict_forward_peak(p)
    real = _cpu_forward_peak_bytes(p)
    assert 0.9 < predicted["peak_bytes"] / real < 1.1
    # The activation part alone too (the resident part is exact by construction): for DiM this needs the chunked
    # scan's work tensors, which the op's fake kernel alone would miss (about half of them at this size).
    real_activations = real - predicted["resident_bytes"]
    assert real_activations > 0
    assert 0.8 < predicted["activation_peak_bytes"] / real_activations < 1.25
    if model.startswith("dim"):
        (backend, how), = predicted["scan_memory"].items()
        assert how.startswith("work tensors traced on meta")
        # the row names the backend whose work tensors it counts (the peak depends on it)
        assert f"(the {backend} scan's work tensors too)" in predicted_method(predicted["scan_memory"])


@pytest.mark.slow
def test_prediction_for_dim_h_2_at_1536_px_is_cheap_and_sane():
    """No compute and no memory: 862M parameters and a 9806-token sequence, predicted in seconds."""
    p = point("dim_h_2", 192, batch=1)
    pred = predict_forward_peak(p)
    # 862,407,184 parameters at 256 px; the position embedding grows from 2 + 16^2 to 2 + 96^2 rows at 1536 px.
    params = 862_407_184 + (96**2 - 16**2) * 1536
    inputs = (1 * 4 * 192 * 192 + 1) * 4 + 8  # x (float32), t (float32), y (int64)
    assert pred["resident_bytes"] == params * 4 + inputs
    # At least the fp32 residual stream and a mixer's (b, 2*d_inner, L) in_proj output are live at once.
    assert pred["activation_peak_bytes"] > (9806 * 1536 + 2 * 3072 * 9806) * 4
    assert pred["attention_path"] == "none"


def test_fake_cuda_prediction_without_cuda_records_the_math_attention_path():
    """Without a GPU, fake CUDA tensors can only take SDPA's math path (L x L scores): the path is recorded, and
    the prediction for a CUDA point is therefore made on the CUDA machine (see memory.py)."""
    if torch.cuda.is_available():
        pytest.skip("with CUDA the fake tensors follow the real kernel choice")
    p = point("dit_s_2", 64, batch=1)
    on_cpu = predict_forward_peak(p, "cpu")
    on_fake_cuda = predict_forward_peak(p, "cuda")
    assert on_cpu["attention_path"] == "cpu_flash" and on_fake_cuda["attention_path"] == "math"
    assert on_fake_cuda["activation_peak_bytes"] > on_cpu["activation_peak_bytes"]


# --- the measured bf16 peak cache -----------------------------------------------------------------------------------


def test_bf16_peak_is_read_from_the_run_folder_when_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Test GPU")
    key = f"Test GPU|torch {torch.__version__}"
    (tmp_path / hardware.HARDWARE_FILE).write_text(
        json.dumps({key: {"bf16_dense_tflops": 123.0, "method": "measured: test"}})
    )

    def must_not_measure(*args, **kwargs):
        raise AssertionError("measured although cached")

    monkeypatch.setattr(hardware, "measure_bf16_peak", must_not_measure)
    peak = hardware.bf16_peak(torch.device("cuda", 0), tmp_path)
    assert peak["bf16_dense_tflops"] == 123.0 and peak["cached"] is True


def test_bf16_peak_is_measured_once_then_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Test GPU")
    calls = []

    def fake_measure(device):
        calls.append(device)
        return {"bf16_dense_tflops": 500.0 + len(calls), "method": "measured: test"}

    monkeypatch.setattr(hardware, "measure_bf16_peak", fake_measure)
    first = hardware.bf16_peak(torch.device("cuda", 0), tmp_path)
    second = hardware.bf16_peak(torch.device("cuda", 0), tmp_path)
    assert len(calls) == 1 and first["cached"] is False and second["cached"] is True
    assert first["bf16_dense_tflops"] == second["bf16_dense_tflops"] == 501.0
    assert not list(tmp_path.glob(".hardware.*"))  # no temporary file left behind


def test_nvml_reading_is_matched_to_the_torch_device_by_uuid_or_pci(monkeypatch):
    """The NVML handle must be the torch device's own (CUDA_VISIBLE_DEVICES renumbers devices); an unmatched
    device is an error, not another GPU's number. NVML is replaced by a stand-in with two GPUs."""
    import sys
    import types

    from dimbench.metrics import memory

    gpus = {"GPU-aaaa": ("00000000:3b:00.0", 5 * 2**30), "GPU-bbbb": ("00000000:86:00.0", 7 * 2**30)}

    class NVMLError(Exception):
        pass

    def by_uuid(uuid):
        if uuid not in gpus:
            raise NVMLError("not found")
        return uuid

    def by_pci(bus):
        for uuid, (pci, _) in gpus.items():
            if pci == bus:
                return uuid
        raise NVMLError("not found")

    fake = types.SimpleNamespace(
        NVMLError=NVMLError, nvmlInit=lambda: None, nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByUUID=by_uuid, nvmlDeviceGetHandleByPciBusId=by_pci,
        nvmlDeviceGetMemoryInfo=lambda handle: types.SimpleNamespace(used=gpus[handle][1]),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)

    def props(uuid, bus):
        return types.SimpleNamespace(uuid=uuid, pci_domain_id=0, pci_bus_id=bus, pci_device_id=0)

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: props("bbbb", 0x86))
    assert memory._nvml_used_bytes(torch.device("cuda", 0)) == (7 * 2**30, "uuid GPU-bbbb")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: props("unknown", 0x3B))
    assert memory._nvml_used_bytes(torch.device("cuda", 0)) == (5 * 2**30, "pci 00000000:3b:00.0")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: props("unknown", 0x11))
    with pytest.raises(RuntimeError, match="NVML found no device"):
        memory._nvml_used_bytes(torch.device("cuda", 0))


# --- CUDA (run by scripts/gpu_check.sh on a GPU machine) -------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_latency_tflops_and_mfu(dtype, tmp_path):
    p = point("dit_s_2", 32, batch=8, dtype=dtype, device="cuda")
    rows = rows_by_metric("latency", p, {"warmup": 3, "repeats": 10, "out_dir": str(tmp_path)})
    lat = rows["latency_ms"]
    assert lat.status == "ok" and lat.value > 0 and "cuda events, median of 10 after 3 warm-up" in lat.method
    assert lat.extra["attention_backend"] in {"flash", "efficient", "cudnn", "math"}
    tflops, mfu = rows["tflops_achieved"], rows["mfu"]
    assert tflops.status == "ok" and tflops.value > 0
    assert mfu.status == "ok" and 0 < mfu.value < 100
    assert mfu.value == pytest.approx(100 * tflops.value / mfu.extra["peak_bf16_tflops"])
    assert "measured" in mfu.extra["peak_method"]
    cache = json.loads((tmp_path / hardware.HARDWARE_FILE).read_text())
    (entry,) = cache.values()
    assert entry["bf16_dense_tflops"] > 10  # any datacenter GPU of the last years


@pytest.mark.cuda
def test_cuda_memory_rows_and_prediction_against_the_allocator(tmp_path):
    p = point("dit_s_2", 32, batch=8, device="cuda")
    rows = rows_by_metric("memory", p, {"out_dir": str(tmp_path)})
    alloc, reserved, device = rows["mem_allocated_gib"], rows["mem_reserved_gib"], rows["mem_device_gib"]
    pred = rows["mem_predicted_gib"]
    assert all(r.status == "ok" for r in rows.values())
    assert 0 < alloc.value <= reserved.value <= device.value
    assert "max_memory_allocated" in alloc.method and "NVML" in device.method
    assert 0.5 < pred.value / alloc.value < 2.0
    assert pred.extra["attention_path"] in {"flash", "efficient", "cudnn"}  # the real kernel choice, not math


@pytest.mark.cuda
def test_cuda_train_step_and_dim_latency(tmp_path):
    options = {"warmup": 1, "repeats": 3, "out_dir": str(tmp_path)}
    step = rows_by_metric("train_step", point("dit_s_2", 32, batch=4, device="cuda"), options)["train_step_ms"]
    assert step.status == "ok" and step.value > 0 and "cuda events" in step.method
    lat = rows_by_metric("latency", point("dim_s_2", 32, batch=4, device="cuda"), options)["latency_ms"]
    assert lat.status == "ok" and lat.extra["scan_backend"] in models.scan.known_backends()


def test_points_round_trip_through_dataclasses_replace():
    """Metrics build variant points with dataclasses.replace (fvcore's batch-1 count): keys stay stable."""
    p = point("dim_h_2", 64, batch=4, options={"pad_layout": "cyclic"})
    assert dataclasses.replace(p, batch=1).key == "dim_h_2|r512|b1|float32|cpu|pad=cyclic"
