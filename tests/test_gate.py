"""Regression gates: `dimbench baseline` and `dimbench gate`, end to end and verdict by verdict.

End to end, through the real CLI: a probe model (declared here; the CLI loads this module as a plugin,
``--plugin test_gate``) is run and baselined (the run passes against its own baseline), run slowed (its forward
does a hundred times the work: the timing ratio to the reference matmul fails, beyond tolerance and significant) and
run larger (wider: params and GMACs change). Timing ratios on a busy machine are noisy, so the slowed run is 100x
the work against a tolerance of 2x, and no test compares two runs' timings and expects them equal: whether two
runs on a shared machine agree depends on what else it runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import models
from dimbench.errors import UserError
from dimbench.gates import build_baseline, compare, load_baseline, write_baseline
from dimbench.gates.baseline import BaselineError, Entry, Run, run_entries
from dimbench.gates.render import as_json, markdown

ROOT = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------------------------- the probe model (a plugin)
REPEAT_ENV, WIDTH_ENV = "GATE_PROBE_REPEAT", "GATE_PROBE_WIDTH"


class GateProbe(nn.Module):
    """(N, C, S, S) -> (N, C, S, S): two 1x1 convs around ``repeat`` passes of elementwise work on a fixed
    buffer. The elementwise work is not counted by the FLOP counter, so the repeat count (``GATE_PROBE_REPEAT``)
    slows the model without changing its counts; the width (``GATE_PROBE_WIDTH``) changes its counts."""

    def __init__(self, *, input_size: int = 16, in_channels: int = 1, num_classes: int = 0, patch_size: int = 1):
        super().__init__()
        width = int(os.environ.get(WIDTH_ENV, "16"))
        self.repeat = int(os.environ.get(REPEAT_ENV, "2"))
        self.input_size, self.in_channels, self.num_classes, self.patch_size = input_size, in_channels, 0, 1
        self.embed = nn.Conv2d(in_channels, width, 1)
        self.out = nn.Conv2d(width, in_channels, 1)
        self.register_buffer("work", torch.linspace(0, 1, 1 << 18), persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        acc = self.work
        for _ in range(self.repeat):
            acc = torch.sin(acc) * 1.0001
        return self.out(self.embed(x)) + acc[0] * 0


PROBE_FAMILY = models.Family(
    name="gateprobe", display="GateProbe", description="a probe model of the gate tests",
    timestep=models.Timestep(0, 9, integer=True, meaning="ignored"), role="other", order=60,
    module_types=(GateProbe,),
)


def register() -> None:
    """The plugin entry point (``dimbench --plugin test_gate``)."""
    if "gateprobe" not in [f.name for f in models.list_families()]:
        models.register_family(PROBE_FAMILY)
        models.register_model("gateprobe_s", family="gateprobe", official="dimbench", description="gate probe",
                              input_size=16, in_channels=1, num_classes=0, patch_size=1)(GateProbe)


SUITE = """\
name: gate_probe
models: [gateprobe_s]
resolutions: [16]
metrics: [params, flops, latency]
device: cpu
warmup: 2
repeats: 7
"""


def _dimbench(*args: str, **env: str):
    import subprocess

    from conftest import cli_env

    return subprocess.run([sys.executable, "-m", "dimbench.cli", "--plugin", "test_gate", *args],
                          env=cli_env(PYTHONPATH=str(ROOT / "tests"), **env), cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def _run(tmp_path: Path, name: str, **env: str) -> Path:
    suite = tmp_path / "gate_probe.yaml"
    suite.write_text(SUITE)
    out = tmp_path / name
    proc = _dimbench("run", str(suite), "--out", str(out), "--no-report", **env)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def probe_runs(tmp_path_factory):
    """Three runs of the probe suite: the baseline's, a slowed one and a larger one."""
    tmp = tmp_path_factory.mktemp("gate")
    return {
        "base": _run(tmp, "base"),
        "slow": _run(tmp, "slow", **{REPEAT_ENV: "200"}),
        "wide": _run(tmp, "wide", **{WIDTH_ENV: "32"}),
        "tmp": tmp,
    }


def _baseline_file(probe_runs) -> Path:
    path = probe_runs["tmp"] / "baseline.json"
    proc = _dimbench("baseline", str(probe_runs["base"]), "-o", str(path), "--replace")
    assert proc.returncode == 0, proc.stderr
    assert "written: 5 entries, 1 points" in proc.stdout  # params, params_trainable, gmacs, gflops, latency_rel
    return path


@pytest.mark.slow
def test_a_run_passes_against_its_own_baseline_which_keeps_the_timing_samples(probe_runs):
    baseline = _baseline_file(probe_runs)
    proc = _dimbench("gate", str(probe_runs["base"]), "--baseline", str(baseline))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "dimbench gate: PASS" in proc.stdout and "5 ok" in proc.stdout
    data = load_baseline(baseline)
    assert {e.metric for e in data.entries.values()} == {"params", "params_trainable", "gmacs", "gflops",
                                                         "latency_rel"}
    assert data.tolerances["latency_rel"] == 0.30 and data.tolerances["gmacs"] == 0.0
    timing = next(e for e in data.entries.values() if e.metric == "latency_rel")
    counts = [e for e in data.entries.values() if e.metric != "latency_rel"]
    assert len(timing.samples) == 7 and all(e.samples is None for e in counts)  # repeats: 7
    assert timing.value == pytest.approx(sorted(timing.samples)[3], rel=1e-5)  # the value is their median
    text = baseline.read_text()
    assert '"version": 2' in text and text.count('"samples": [') == 1  # the samples on one line


@pytest.mark.slow
def test_slowed_model_fails_on_its_timing_ratio(probe_runs):
    baseline = _baseline_file(probe_runs)
    md, js = probe_runs["tmp"] / "slow.md", probe_runs["tmp"] / "slow.json"
    proc = _dimbench("gate", str(probe_runs["slow"]), "--baseline", str(baseline), "--tolerance", "latency_rel=2",
                     "--markdown", str(md), "--json", str(js))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "dimbench gate: FAIL" in proc.stdout
    result = json.loads(js.read_text())
    failed = [r for r in result["rows"] if r["verdict"] in result["failing_verdicts"]]
    assert {(r["point"], r["metric"]) for r in failed} == {("gateprobe_s 16px b1 float32 cpu", "latency_rel")}
    assert all(r["verdict"] == "regressed" and r["change"] > 2 for r in failed)
    # 7 samples each; every slowed one above every baselined one gives p = 2 / C(14, 7) = 0.00058
    note = failed[0]["note"]
    assert note.startswith("significant: Mann-Whitney U p=") and note.endswith(", 7 vs 7 samples"), note
    assert float(note.split("p=")[1].split(",")[0]) < 0.05
    assert result["alpha"] == 0.05 and any("two-sided Mann-Whitney U" in n for n in result["notes"])
    # The counts of the slowed model did not move: only its time did.
    assert all(r["verdict"] == "ok" for r in result["rows"] if r["metric"] != "latency_rel")
    text = md.read_text()
    assert text.startswith("**dimbench gate: FAIL") and "| gateprobe\\_s 16px b1 float32 cpu | latency\\_rel |" in text


@pytest.mark.slow
def test_larger_model_fails_naming_metric_and_point(probe_runs):
    baseline = _baseline_file(probe_runs)
    proc = _dimbench("gate", str(probe_runs["wide"]), "--baseline", str(baseline), "--tolerance", "latency_rel=2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if "gateprobe_s 16px" in ln]
    # 16 -> 32 wide: 49 -> 97 parameters
    assert any("params" in ln and "changed" in ln and "+48 (+98 %)" in ln for ln in lines), proc.stdout
    assert any("gmacs" in ln and "changed" in ln for ln in lines), proc.stdout


@pytest.mark.slow
def test_bad_and_mismatched_baselines_exit_2_with_the_file_and_key(probe_runs, tmp_path):
    cases = {
        "not json": ("{", "not readable as JSON"),
        "wrong kind": ('{"format": "other"}', "key 'format': expected 'dimbench-baseline'"),
        "bad value": (None, "key 'entries[0].value': expected a finite number"),
    }
    good = json.loads(_baseline_file(probe_runs).read_text())
    for name, (text, message) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.json"
        if text is None:
            bad = json.loads(json.dumps(good))
            bad["entries"][0]["value"] = "12"
            text = json.dumps(bad)
        path.write_text(text)
        proc = _dimbench("gate", str(probe_runs["base"]), "--baseline", str(path))
        assert proc.returncode == 2, (name, proc.stdout, proc.stderr)
        assert str(path) in proc.stderr and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    other = json.loads(json.dumps(good))
    for e in other["entries"]:
        e["point_key"] = e["point_key"].replace("gateprobe_s", "dit_xl_2")
    path = tmp_path / "other.json"
    path.write_text(json.dumps(other))
    proc = _dimbench("gate", str(probe_runs["base"]), "--baseline", str(path))
    assert proc.returncode == 2 and "mismatched baseline" in proc.stderr and "none in common" in proc.stderr
    for args, message in (((str(tmp_path / "nowhere"), "--baseline", str(path)), "no results.jsonl here"),
                          ((str(probe_runs["base"]), "--baseline", str(tmp_path / "none.json")),
                           "no such baseline file"),
                          ((str(probe_runs["base"]), "--baseline", str(path), "--tolerance", "latency_rel"),
                           "expected METRIC=RELATIVE_CHANGE"),
                          ((str(probe_runs["base"]), "--baseline", str(_baseline_file(probe_runs)), "--alpha", "0"),
                           "--alpha 0: expected a significance level between 0 and 1")):
        proc = _dimbench("gate", *args)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_baseline_update_replaces_the_runs_points_and_keeps_the_others(probe_runs, tmp_path):
    path = tmp_path / "b.json"
    first, _ = build_baseline(probe_runs["base"])
    # A point of another run that the update must keep, and a tolerance edited by hand.
    other = {(k[0].replace("r16", "r64"), k[1]): dataclasses.replace(e, point_key=k[0].replace("r16", "r64"),
                                                                       resolution=64) for k, e in first.entries.items()}
    first.entries.update(other)
    first.tolerances["latency_rel"] = 0.5
    write_baseline(first, path)
    proc = _dimbench("baseline", str(probe_runs["wide"]), "-o", str(path))
    assert proc.returncode == 0 and "updated" in proc.stdout, proc.stdout + proc.stderr
    updated = load_baseline(path)
    assert len(updated.entries) == 10 and updated.tolerances["latency_rel"] == 0.5  # the hand edit is kept
    kept = ("gateprobe_s|r64|b1|float32|cpu", "params")
    assert updated.entries[kept] == other[kept]
    assert updated.entries[("gateprobe_s|r16|b1|float32|cpu", "params")].value > first.entries[
        ("gateprobe_s|r16|b1|float32|cpu", "params")].value


# ------------------------------------------------------------------------------------- verdicts, one by one
def _entry(point="m|r16|b1|float32|cpu", metric="gmacs", value=1.0, status="ok", device_class="cpu: X, 2 threads",
           unit="GMAC") -> Entry:
    return Entry(point, "m", 16, 1, "float32", "cpu", device_class, metric, value if status == "ok" else None,
                 unit, status)


def _gate(base: list[Entry], now: list[Entry], **kwargs):
    from dimbench.gates.baseline import Baseline

    baseline = Baseline({e.identity: e for e in base}, {}, "s", "", {}, Path("base.json"))
    run = Run({e.identity: e for e in now}, {}, ["s"], [])
    return compare(baseline, run, "run", **kwargs)


def _verdicts(result) -> dict[tuple[str, str], str]:
    return {(v.point_key, v.metric): v.verdict for v in result.verdicts}


def test_timings_from_another_device_class_are_not_compared_but_counts_are():
    base = [_entry(metric="latency_rel", value=1.0, unit="x ref"), _entry(value=2.0)]
    now = [_entry(metric="latency_rel", value=9.0, unit="x ref", device_class="cpu: Y, 2 threads"),
           _entry(value=2.5, device_class="cpu: Y, 2 threads")]
    result = _gate(base, now)
    assert _verdicts(result) == {("m|r16|b1|float32|cpu", "latency_rel"): "not compared",
                                 ("m|r16|b1|float32|cpu", "gmacs"): "changed"}
    assert not result.passed
    assert any("device class differs: baseline 'cpu: X, 2 threads', run 'cpu: Y, 2 threads'" in n
               for n in result.notes)


def test_direction_tolerance_and_overrides():
    base = [_entry(metric="latency_rel", value=1.0, unit="x ref"), _entry(metric="mem_predicted_gib", value=2.0)]
    faster = [_entry(metric="latency_rel", value=0.5, unit="x ref"), _entry(metric="mem_predicted_gib", value=2.01)]
    assert set(_verdicts(_gate(base, faster)).values()) == {"improved", "ok"}  # memory +0.5 % within 1 %
    slower = [_entry(metric="latency_rel", value=1.25, unit="x ref"), _entry(metric="mem_predicted_gib", value=2.1)]
    v = _verdicts(_gate(base, slower))
    assert v[("m|r16|b1|float32|cpu", "latency_rel")] == "ok"  # +25 % within the declared 30 %
    assert v[("m|r16|b1|float32|cpu", "mem_predicted_gib")] == "regressed"
    tight = _verdicts(_gate(base, slower, overrides={"latency_rel": 0.1}))
    assert tight[("m|r16|b1|float32|cpu", "latency_rel")] == "regressed"


def test_out_of_memory_errors_new_and_removed_points():
    base = [_entry("a|r16|b1|float32|cpu"), _entry("b|r16|b1|float32|cpu", status="oom"),
            _entry("c|r16|b1|float32|cpu")]
    now = [_entry("a|r16|b1|float32|cpu", status="oom"), _entry("b|r16|b1|float32|cpu"),
           _entry("d|r16|b1|float32|cpu")]
    result = _gate(base, now)
    assert _verdicts(result) == {("a|r16|b1|float32|cpu", "gmacs"): "regressed",
                                 ("b|r16|b1|float32|cpu", "gmacs"): "improved",
                                 ("c|r16|b1|float32|cpu", "gmacs"): "removed",
                                 ("d|r16|b1|float32|cpu", "gmacs"): "new"}
    assert [v.verdict for v in result.failed] == ["regressed"]
    strict = _gate(base[1:], now[1:], fail_on_new=True, fail_on_removed=True)
    assert sorted(v.verdict for v in strict.failed) == ["new", "removed"]
    errored = _gate(base[:1], [_entry("a|r16|b1|float32|cpu", status="error")])
    assert [v.verdict for v in errored.failed] == ["regressed"] and "error" in errored.failed[0].note


def test_markdown_escapes_table_syntax_and_html_and_json_serialises():
    base = Entry("k", "a|b<i>", 16, 1, "float32", "cpu", "cpu: X", "gmacs", 1.0, "GMAC", "ok")
    result = _gate([base], [dataclasses.replace(base, value=3.0)])
    text = markdown(result)
    assert "| a\\|b&lt;i> 16px b1 float32 cpu | gmacs | 1 GMAC | 3 GMAC | +200 % | exact | changed" in text
    assert "<i>" not in text
    data = json.loads(json.dumps(as_json(result)))
    assert data["passed"] is False and data["counts"]["changed"] == 1 and data["rows"][0]["change"] == 2.0


def test_baseline_of_a_run_without_gated_rows_is_refused(tmp_path):
    (tmp_path / "results.jsonl").write_text(json.dumps({"point_key": "k", "metric": "latency_ms", "status": "ok",
                                                        "value": 1.0, "model": "m", "resolution": 1, "batch": 1,
                                                        "dtype": "float32", "device": "cpu"}) + "\n")
    with pytest.raises(BaselineError, match="no gated rows"):
        build_baseline(tmp_path)


def test_a_value_that_is_not_a_finite_number_fails_the_gate(tmp_path):
    """An ok row with NaN, inf or null must never pass as 'improved' (NaN compares false with everything)."""
    good = {"suite": "s", "point_key": "m|r16|b1|float32|cpu", "model": "m", "resolution": 16, "batch": 1,
            "dtype": "float32", "device": "cpu", "metric": "mem_predicted_gib", "status": "ok", "value": 2.0,
            "unit": "GiB"}
    base_dir, run_dir = tmp_path / "base", tmp_path / "run"
    base_dir.mkdir()
    run_dir.mkdir()
    (base_dir / "results.jsonl").write_text(json.dumps(good) + "\n")
    baseline, _ = build_baseline(base_dir)
    for bad in ("NaN", "Infinity", "null", "true"):
        (run_dir / "results.jsonl").write_text(json.dumps(good).replace("2.0", bad) + "\n")
        run = run_entries(run_dir)
        result = compare(baseline, run, str(run_dir))
        assert [v.verdict for v in result.verdicts] == ["regressed"], bad
        assert any("not a finite number" in w for w in run.warnings), bad


def test_malformed_result_rows_name_file_and_line(tmp_path):
    row = {"suite": "s", "point_key": "k", "model": "m", "resolution": "abc", "batch": 1, "dtype": "float32",
           "device": "cpu", "metric": "gmacs", "status": "ok", "value": 1.0}
    (tmp_path / "results.jsonl").write_text(json.dumps(dict(row, resolution=16)) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(BaselineError, match=r"results.jsonl:2: key 'resolution': expected an integer"):
        run_entries(tmp_path)
    (tmp_path / "results.jsonl").write_text(json.dumps(dict(row, resolution=16, status="weird")) + "\n")
    with pytest.raises(BaselineError, match=r"results.jsonl:1: key 'status': expected one of ok, oom"):
        run_entries(tmp_path)


def test_a_measure_that_disappears_at_a_point_that_ran_regresses():
    base = [_entry(), _entry(metric="params", value=10.0, unit="count")]
    now_skipped = [_entry(), _entry(metric="params", status="skipped", unit="count")]
    assert _verdicts(_gate(base, now_skipped))[("m|r16|b1|float32|cpu", "params")] == "regressed"
    now_missing = [_entry()]
    result = _gate(base, now_missing)
    assert _verdicts(result)[("m|r16|b1|float32|cpu", "params")] == "regressed"
    assert "not measured in this run" in result.failed[0].note


def test_status_changes_on_another_device_class_are_not_compared_either():
    other = "cpu: Y, 2 threads"
    base = [_entry(metric="latency_rel", value=1.0, unit="x ref"), _entry(metric="mem_allocated_gib", status="oom")]
    now = [_entry(metric="latency_rel", status="oom", unit="x ref", device_class=other),
           _entry(metric="mem_allocated_gib", value=1.0, device_class=other)]
    assert set(_verdicts(_gate(base, now)).values()) == {"not compared"}
    # ... but an error is an error on any device.
    errored = [_entry(metric="latency_rel", status="error", unit="x ref", device_class=other)]
    assert [v.verdict for v in _gate(base[:1], errored).verdicts] == ["regressed"]


def test_predicted_memory_depends_on_the_card_only_on_cuda():
    def mem(device, cls, value):
        return Entry(f"m|r16|b1|float32|{device}", "m", 16, 1, "float32", device, cls, "mem_predicted_gib", value,
                     "GiB", "ok")
    cpu = _gate([mem("cpu", "cpu: X", 1.0)], [mem("cpu", "cpu: Y", 1.5)])
    assert [v.verdict for v in cpu.verdicts] == ["regressed"]  # the CPU prediction is machine-independent
    gpu = _gate([mem("cuda", "cuda: A100", 1.0)], [mem("cuda", "cuda: H200", 1.5)])
    assert [v.verdict for v in gpu.verdicts] == ["not compared"]


def test_zero_baseline_and_tolerance_typos():
    v = _gate([_entry(value=0.0)], [_entry(value=0.5)])
    assert v.verdicts[0].verdict == "changed" and v.verdicts[0].change == float("inf")
    assert _gate([_entry(value=0.0)], [_entry(value=0.0)]).verdicts[0].verdict == "ok"
    with pytest.raises(UserError, match="'latency_ref' is not a gated metric"):
        _gate([_entry()], [_entry()], overrides={"latency_ref": 0.5})


def test_point_labels_tell_compiled_points_apart():
    e = _entry("m|r16|b1|float32|cuda|compile=default")
    assert e.point_label() == "m 16px b1 float32 cpu compile=default"


def test_baseline_update_replaces_per_measure_and_keeps_provenance(tmp_path):
    def write(d, rows):
        d.mkdir()
        (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    row = {"suite": "s", "point_key": "m|r16|b1|float32|cpu", "model": "m", "resolution": 16, "batch": 1,
           "dtype": "float32", "device": "cpu", "status": "ok", "unit": ""}
    write(tmp_path / "a", [dict(row, metric="gmacs", value=1.0), dict(row, metric="latency_rel", value=5.0)])
    write(tmp_path / "b", [dict(row, metric="gmacs", value=1.0)])  # a counting run at the same point
    first, _ = build_baseline(tmp_path / "a")
    updated, warnings = build_baseline(tmp_path / "b", first)
    assert {k[1] for k in updated.entries} == {"gmacs", "latency_rel"}  # the timing entry is not lost
    assert any("latency_rel" in w and "--replace" in w for w in warnings)
    assert updated.source["earlier"][0]["results"] == first.source["results"]


# ------------------------------------------------------------------------------ timing rows: significance
def _timed(value: float, samples: list[float] | None, **kwargs) -> Entry:
    return dataclasses.replace(_entry(metric="latency_rel", value=value, unit="x ref", **kwargs),
                               samples=tuple(samples) if samples is not None else None)


def _one(result):
    (v,) = result.verdicts
    return v.verdict, v.note


BASE = [1.00, 1.02, 0.98, 1.01, 0.99, 1.03, 0.97]  # median 1.00


def test_a_timing_change_beyond_tolerance_regresses_only_when_significant():
    slower = [x * 1.5 for x in BASE]  # +50 %, every sample above every baselined one
    verdict, note = _one(_gate([_timed(1.0, BASE)], [_timed(1.5, slower)]))
    assert verdict == "regressed" and note == "significant: Mann-Whitney U p=0.00058, 7 vs 7 samples"
    # +50 % at the median, but the run's samples spread over the baseline's: noise, not a regression.
    noisy = [0.9, 1.0, 1.2, 1.5, 1.6, 0.95, 2.0]
    result = _gate([_timed(1.0, BASE)], [_timed(1.5, noisy)])
    verdict, note = _one(result)
    assert verdict == "not significant" and result.passed
    assert note.startswith("beyond tolerance but not significant (Mann-Whitney U p=0.") and "alpha 0.05" in note
    assert any("two-sided Mann-Whitney U test on the raw samples" in n for n in result.notes)
    # Faster beyond the tolerance is tested the same way: an improvement must be significant too.
    assert _one(_gate([_timed(1.0, BASE)], [_timed(0.5, [x / 2 for x in BASE])]))[0] == "improved"
    assert _one(_gate([_timed(1.0, BASE)], [_timed(0.5, [0.4, 0.5, 0.45, 1.1, 0.98, 1.05, 0.5])]))[0] == \
        "not significant"
    # Within the tolerance nothing is tested: ok, whatever the samples.
    assert _one(_gate([_timed(1.0, BASE)], [_timed(1.2, [x * 1.2 for x in BASE])])) == ("ok", "")


def test_the_significance_level_is_a_setting():
    slower = [1.00, 1.5, 1.45, 1.55, 0.99, 1.6, 1.48]  # two samples among the baseline's: p = 0.04
    p_text = _one(_gate([_timed(1.0, BASE)], [_timed(1.48, slower)]))[1]
    assert "p=0.04," in p_text
    assert _one(_gate([_timed(1.0, BASE)], [_timed(1.48, slower)], alpha=0.05))[0] == "regressed"
    assert _one(_gate([_timed(1.0, BASE)], [_timed(1.48, slower)], alpha=0.01))[0] == "not significant"
    with pytest.raises(UserError, match="--alpha 1.5: expected a significance level between 0 and 1"):
        _gate([_timed(1.0, BASE)], [_timed(1.48, slower)], alpha=1.5)


def test_without_samples_or_with_too_few_the_tolerance_decides_alone_and_says_so():
    old_file = _gate([_timed(1.0, None)], [_timed(1.5, [x * 1.5 for x in BASE])])
    assert _one(old_file) == ("regressed", "tolerance only: the baseline keeps no samples to test")
    assert any("decided by the tolerance alone: the baseline keeps no samples to test (a baseline written by "
               "this dimbench keeps the samples)" in n for n in old_file.notes)
    assert _one(_gate([_timed(1.0, BASE)], [_timed(1.5, None)])) == (
        "regressed", "tolerance only: the run's row keeps no samples to test")
    three = _gate([_timed(1.0, BASE[:3])], [_timed(1.5, [1.5, 1.6, 1.4])])  # 2 / C(6, 3) = 0.1: never < 0.05
    assert _one(three) == ("regressed", "tolerance only: 3 vs 3 samples cannot reach p < 0.05")


def test_timing_samples_go_from_the_rows_through_the_baseline_file_and_back(tmp_path):
    """A version-2 file keeps each timing entry's samples (the per-round ratios, rounded to 6 digits); a
    version-1 file (before samples) still loads; samples that are not numbers name the file and key."""
    row = {"suite": "s", "point_key": "m|r16|b1|float32|cpu", "model": "m", "resolution": 16, "batch": 1,
           "dtype": "float32", "device": "cpu", "status": "ok", "metric": "latency_rel", "unit": "x ref",
           "value": 0.5, "extra": {"samples_ms": [2.0, 3.0, 4.000001], "reference_samples_ms": [4.0, 6.0, 8.0]}}
    (tmp_path / "results.jsonl").write_text(json.dumps(row) + "\n")
    baseline, _ = build_baseline(tmp_path)
    (entry,) = baseline.entries.values()
    assert entry.samples == pytest.approx((0.5, 0.5, 0.500000125))
    path = write_baseline(baseline, tmp_path / "b.json")
    assert load_baseline(path).entries[entry.identity].samples == (0.5, 0.5, 0.5)  # 6 significant digits
    data = json.loads(path.read_text())
    assert data["version"] == 2 and '"samples": [0.5, 0.5, 0.5]' in path.read_text()
    data["version"] = 1
    for e in data["entries"]:
        del e["samples"]
    path.write_text(json.dumps(data))
    assert load_baseline(path).entries[entry.identity].samples is None
    data["entries"][0]["samples"] = [1.0, "2"]
    path.write_text(json.dumps(data))
    with pytest.raises(BaselineError, match=r"b.json: key 'entries\[0\].samples': expected a non-empty list"):
        load_baseline(path)
    data["version"] = 3
    path.write_text(json.dumps(data))
    with pytest.raises(BaselineError, match="key 'version': expected 1 or 2"):
        load_baseline(path)
