"""Profiling per component (models/profiling.py, dimbench/metrics/profile.py, `dimbench profile`, the report's
profile section), on the CPU with the tiny models (5 blocks, width 64, 16 px).

Nothing here asserts on a time: only on what the profile is made of (every component present and timed, the
parts adding up to the whole, the FLOPs adding up to the flops metric's count, the files it writes, the messages).
"""

from __future__ import annotations

import gzip
import json

import pytest
import torch

import models
from conftest import run_cli
from dimbench import results
from dimbench.cli import main
from dimbench.metrics.energy import NvmlSampler
from dimbench.metrics.flops import FLOPS, count_point_flops
from dimbench.metrics.profile import PROFILE, affordable_resolution
from dimbench.points import SweepPoint
from dimbench.worker import make_row
from models import profiling
from models.profiling import COMPONENTS, PREFIX
from models.scan import resolve_backend

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ("dim_tiny_4", "dit_tiny_4", "uvit_tiny_4")
BLOCK = {"norm_mod", "residual"}
EXPECTED = {
    "dim_tiny_4": {"patch_embed", "conditioning", "grid_conv", "pad", "scan_switch", "skip_fusion", "in_proj",
                   "conv1d", "ssm_proj", "scan", "out_proj", "final_layer"} | BLOCK,
    "dit_tiny_4": {"patch_embed", "conditioning", "attention", "mlp", "final_layer"} | BLOCK,
    "uvit_tiny_4": {"patch_embed", "conditioning", "skip_fusion", "attention", "mlp", "final_layer"} | BLOCK,
}
# The named ranges are disjoint and nested in the forward's own range, so their sum cannot exceed it; "other" is
# the rest, so components + other = the profiled forward up to float rounding.
SUM_TOLERANCE = 1e-6


def _point(model: str, resolution: int = 16, batch: int = 2) -> SweepPoint:
    return SweepPoint("test", model, resolution, resolution, batch, "float32", "cpu", ("profile",))


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    """Each tiny model profiled once through the metric (warm-up 1, 2 profiled passes), rows by model."""
    out = tmp_path_factory.mktemp("profile")
    torch.set_num_threads(1)
    by_model = {m: PROFILE.measure(_point(m), out_dir=str(out), warmup=1, repeats=2) for m in TINY}
    return out, by_model


def _rows(measurements, name):
    return [m for m in measurements if m.metric == name]


@pytest.mark.slow
@pytest.mark.parametrize("model", TINY)
def test_every_named_component_has_a_positive_time(profiled, model):
    _, by_model = profiled
    times = {m.extra["component"]: m.value for m in _rows(by_model[model], "profile_ms")}
    assert EXPECTED[model] <= set(times), f"missing: {EXPECTED[model] - set(times)}"
    assert set(times) <= set(COMPONENTS)
    assert all(times[c] > 0 for c in EXPECTED[model]), times
    assert times["other"] >= 0
    steps = [m.extra["step"] for m in _rows(by_model[model], "profile_ms")]
    assert steps == sorted(set(steps)) and steps == [list(COMPONENTS).index(c) for c in times]
    (fwd,) = _rows(by_model[model], "profile_forward_ms")
    assert fwd.extra["time_kind"] == "cpu range wall time (self + children)" and fwd.extra["timed_resolution"] == 16
    assert fwd.extra["scan_backend"] == (resolve_backend(None, "cpu") if model.startswith("dim") else None)
    assert fwd.extra["attention_backend"] == ("none" if model.startswith("dim") else "cpu_flash")


@pytest.mark.slow
@pytest.mark.parametrize("model", TINY)
def test_component_times_add_up_to_the_whole_forward(profiled, model):
    _, by_model = profiled
    (fwd,) = _rows(by_model[model], "profile_forward_ms")
    times = {m.extra["component"]: m.value for m in _rows(by_model[model], "profile_ms")}
    whole = fwd.extra["forward_range_ms"]
    named = sum(v for c, v in times.items() if c != "other")
    assert named <= whole * (1 + SUM_TOLERANCE)
    assert sum(times.values()) == pytest.approx(whole, rel=SUM_TOLERANCE)
    assert fwd.value == pytest.approx(whole, rel=SUM_TOLERANCE)
    shares = [m.value for m in _rows(by_model[model], "profile_share")]
    assert sum(shares) == pytest.approx(100.0, rel=SUM_TOLERANCE)


@pytest.mark.slow
@pytest.mark.parametrize("model", TINY)
def test_component_flops_add_up_to_the_flops_metric(profiled, model):
    _, by_model = profiled
    flops = {m.extra["component"]: m.value for m in _rows(by_model[model], "profile_gflop")}
    (gflops,) = [m for m in FLOPS.measure(_point(model)) if m.metric == "gflops"]
    assert sum(flops.values()) == pytest.approx(gflops.value, rel=1e-12)
    assert flops.get("other", 0) == 0  # the named ranges cover every counted operation
    heavy = {"scan", "in_proj", "out_proj"} if model.startswith("dim") else {"attention", "mlp"}
    assert all(flops[c] > 0 for c in heavy)
    assert all(flops[c] == 0 for c in ("pad", "scan_switch", "residual") if c in flops)  # data movement only
    moved = {m.extra["component"]: m.value for m in _rows(by_model[model], "profile_gbytes")}
    assert all(moved[c] > 0 for c in EXPECTED[model])
    assert moved.get("other", 0) == 0  # ... and every byte-moving one
    (fwd,) = _rows(by_model[model], "profile_forward_ms")
    assert fwd.extra["gbytes"] == pytest.approx(sum(moved.values()))
    for row in fwd.extra["components"]:  # the roofline's coordinates where a component has FLOPs and a time
        if row["gflop"] > 0:
            assert row["intensity"] > 0 and row["achieved_gflops"] > 0
    roof = fwd.extra["roofline"]
    assert roof["peak_gflops"] > 0 and roof["bandwidth_gbps"] > 0 and "torch.mm" in roof["peak_method"]


@pytest.mark.slow
@pytest.mark.parametrize("model", TINY)
def test_the_trace_is_json_naming_the_components(profiled, model):
    out, by_model = profiled
    (fwd,) = _rows(by_model[model], "profile_forward_ms")
    path = out / fwd.extra["trace"]  # relative to the run folder
    assert path.is_file()
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    data = json.loads(raw)  # Chrome's trace format: {"traceEvents": [{"name": ..., ...}, ...], ...}
    assert isinstance(data, dict) and data["traceEvents"]
    names = {e.get("name", "") for e in data["traceEvents"] if isinstance(e, dict)}
    assert {PREFIX + c for c in EXPECTED[model]} | {PREFIX + "forward"} <= names
    assert fwd.extra["memory_snapshot"] is None  # CUDA only


@pytest.mark.slow
def test_energy_without_a_gpu_is_skipped_with_the_reason(profiled):
    _, by_model = profiled
    (energy,) = _rows(by_model["dit_tiny_4"], "profile_energy_j")
    assert energy.status == "skipped" and energy.error.startswith("not available: ")


def test_the_nvml_sampler_says_not_available_and_never_raises(monkeypatch):
    with NvmlSampler("cpu") as s:
        pass
    assert not s.available and s.reason == "not available: no CUDA device (profiling on cpu)"
    assert s.result() == {"available": False, "reason": s.reason}
    if not torch.cuda.is_available():
        with NvmlSampler("cuda") as s:
            pass
        assert s.result()["reason"] == "not available: CUDA is not available to torch"
    # A CUDA machine without nvidia-ml-py: said, not raised.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(__import__("sys").modules, "pynvml", None)
    with NvmlSampler("cuda") as s:
        pass
    assert s.reason.startswith("not available: pynvml (nvidia-ml-py) does not import")


@pytest.mark.slow
def test_a_costly_cpu_size_is_timed_at_the_largest_affordable_one(tmp_path):
    point = _point("dim_tiny_4", resolution=48, batch=1)
    step = models.model_info(point.model).resolution_step
    counts = {r: count_point_flops(point.at_resolution(r)).gflops for r in range(step, 49, step)}
    bound = (counts[32] + counts[36]) / 2  # 32 px fits, 36 px does not
    assert affordable_resolution(point, bound) == (32, pytest.approx(counts[32]))
    assert affordable_resolution(point, counts[step] / 2)[0] == step  # none fits: the smallest
    rows = PROFILE.measure(point, out_dir=str(tmp_path), warmup=0, repeats=1, cpu_max_gflop=bound)
    (fwd,) = _rows(rows, "profile_forward_ms")
    assert fwd.extra["timed_resolution"] == 32 and fwd.extra["requested_resolution"] == 48
    assert "timed at 32 px" in fwd.method and "not at the requested 48 px" in fwd.method
    flops = sum(m.value for m in _rows(rows, "profile_gflop"))
    assert flops == pytest.approx(counts[48], rel=1e-12)  # FLOP shares: at the requested size
    assert all("timed at 32 px" in m.method for m in _rows(rows, "profile_ms"))


def test_ranges_cost_nothing_and_change_nothing_when_off():
    assert not profiling.enabled()
    assert profiling.component("scan") is profiling.component("attention")  # one shared no-op context
    with profiling.listening(record=False):
        with profiling.component("scan") as r:
            assert profiling.current() == "scan" and r.name == "scan"
        assert profiling.current() == "other"
    assert profiling.current() == "other"
    torch.manual_seed(0)
    for name in TINY:
        model = models.create_model(name).eval()
        x, t = torch.randn(2, 1, 16, 16), torch.tensor([10.0, 500.0])
        with torch.inference_mode():
            plain = model(x, t)
            with profiling.listening():
                ranged = model(x, t)
        assert torch.equal(plain, ranged)


@pytest.mark.slow
def test_rows_are_valid_result_rows(profiled):
    _, by_model = profiled
    for model, measurements in by_model.items():
        rows = [make_row(_point(model), PROFILE, m, started_at="t", duration_s=0.0) for m in measurements]
        assert not [r for r in rows if r["status"] == "error"], [r["error"] for r in rows if r["error"]]
        assert {r["metric"] for r in rows} == set(PROFILE.produces)
        json.dumps(rows)  # one JSON line each


@pytest.mark.slow
def test_the_cli_profiles_end_to_end(tmp_path):
    out = tmp_path / "prof"
    r = run_cli("profile", "dit_tiny_4", "--resolution", "16", "--batch", "2", "--warmup", "0", "--repeats", "1",
                "--out", str(out))
    assert r.returncode == 0, r.stderr
    for text in ("attention", "mlp", "share %", "GFLOPs", "CPU range wall time", "wall time of each named range",
                 "backends: scan=none ran", "attention=cpu_flash", "energy per image: not available:", "trace"):
        assert text in r.stdout, text
    rows = results.read_rows(out)
    assert {row["metric"] for row in rows} == set(PROFILE.produces)
    assert all(row["status"] in ("ok", "skipped") for row in rows)
    fwd = next(row for row in rows if row["metric"] == "profile_forward_ms")
    assert (out / fwd["extra"]["trace"]).is_file()
    assert (out / results.ENVIRONMENT_FILE).is_file()


@pytest.mark.parametrize("args, message", [
    (["no_such_model", "--resolution", "16"], "unknown model 'no_such_model'"),
    (["dit_tiny_4", "--resolution", "18"], "--resolution 18: dit_tiny_4 needs a positive multiple of 4 px"),
    (["dim_h_2", "--resolution", "100"], "--resolution 100: dim_h_2 needs a positive multiple of 16 px"),
    (["dit_tiny_4", "--resolution", "16", "--dtype", "int8"], "--dtype int8: expected one of"),
])
def test_bad_arguments_are_one_line_and_exit_2(capsys, tmp_path, args, message):
    assert main(["profile", *args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dimbench: error: ") and message in err[0], err
    assert not (tmp_path / "results.jsonl").exists()


@pytest.mark.slow
def test_the_report_shows_the_profile_section(profiled, tmp_path):
    import report_fixtures as rf
    from matplotlib.figure import Figure as MplFigure

    from dimbench.report import build_report, content, data

    _, by_model = profiled
    rows = [make_row(_point(m), PROFILE, x, started_at="t", duration_s=0.0) for m, ms in by_model.items() for x in ms]
    d = rf.write_results(tmp_path / "r", rows)
    for (src, m) in zip(by_model.values(), TINY, strict=True):  # the traces, where the rows say they are
        trace = _rows(src, "profile_forward_ms")[0].extra["trace"]
        (d / trace).parent.mkdir(parents=True, exist_ok=True)
        (d / trace).write_bytes((profiled[0] / trace).read_bytes())
        assert m in trace
    rep = content.build(data.load(d))
    by = {s.heading: s for s in rep.sections}
    sec = by["Profile: time per component"]
    assert [f.title for f in sec.figures] == ["Share of time per component", "Share of FLOPs per component",
                                              "Roofline of the components"]
    for f in sec.figures:
        fig = MplFigure(figsize=f.size, layout="constrained")
        f.draw(fig)
        assert fig.axes
    top, files = sec.tables
    assert {r[0].text for r in top.rows if r[0].text} == set(TINY)
    assert {r[3].text for r in top.rows} >= {"scan", "attention", "mlp"}
    assert all(r[3].text.endswith(".json.gz") and r[5].text.startswith("not available") for r in files.rows)
    assert any("Roofline ceilings on cpu" in p for p in sec.paragraphs)
    full = by["Full results"]
    series = [r.label for r in PROFILE.rows if r.series]
    assert not any(t.caption.startswith(tuple(series)) for t in full.tables)  # series rows: not pivoted
    assert any(t.caption.startswith("profiled forward time") for t in full.tables)
    html, _ = build_report(d)
    assert "Profile: time per component" in html.read_text(encoding="utf-8")
