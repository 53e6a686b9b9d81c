"""The GPU check (scripts/gpu_check.sh, issue 18) without a GPU: its dry run keeps the packaging contract (at most 7
plain files in OUT, nothing deeper, rest.tar.gz under 15 MiB without traces, summary.txt naming every phase and
printed last, no `pip install` into the caller's environment); a phase that raises or hangs past its cap keeps the
lines written before it; and the pieces it runs can fail when they should: the scan check fails a wrong or NaN
backend, the benchmark records a backend that raises and goes on, the DiM layout is the one DiM passes, the
compile check's launch integers are the backend's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_report  # noqa: E402
import scan_compile_check  # noqa: E402
import scan_cuda_check  # noqa: E402
import scan_gpu  # noqa: E402
from scan_inputs import dim_scan_inputs  # noqa: E402

from models.scan import chunked_scan, register_backend, unregister_backend  # noqa: E402

PHASES = ["0 setup", "1 environment", "1 compile check", "2 scan correctness", "3 scan speed", "4 eager models",
          "5 compiled pair", "6 CUDA tests", "6 profiles", "6 suite", "6 report"]
TINY_SUITE = """\
name: tiny
models: [dit_tiny_4]
resolutions: [16]
batch_sizes: [1]
dtypes: [float32]
metrics: [params, latency]
warmup: 0
repeats: 1
"""


def run_check(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """The script with DEVICE=cpu into tmp_path/out, through a python wrapper that logs every invocation."""
    out, calls = tmp_path / "out", tmp_path / "python_calls.log"
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY_SUITE)
    full = {k: v for k, v in os.environ.items() if k not in ("GPU_CHECK_FAULT", "DIMBENCH_SCAN_BACKEND")}
    full.update(DEVICE="cpu", PYTHON=str(wrapper), GPU_CHECK_WORK=str(tmp_path / "work"), SUITE=str(suite),
                OMP_NUM_THREADS="1", CAP_SCALE="20", **env)  # caps far above the work: the test waits for events
    run = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(out)], env=full, capture_output=True,
                         text=True, timeout=3600)
    return run, out, calls


def summary_of(out: Path) -> tuple[list[str], list[dict]]:
    text = (out / "summary.txt").read_text().splitlines()
    rows = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    return text, rows


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    return run_check(tmp_path_factory.mktemp("dry"))


@pytest.mark.slow
def test_dry_run_keeps_the_packaging_contract(dry_run):
    run, out, calls = dry_run
    assert run.returncode == 0, run.stderr[-3000:]
    entries = sorted(p.name for p in out.iterdir())
    assert len(entries) <= 7 and all((out / e).is_file() for e in entries), entries
    assert {"summary.txt", "summary.jsonl", "steps.txt", "scan_bench.json", "pytest_tail.log", "log.txt",
            "rest.tar.gz"} >= set(entries) >= {"summary.txt", "summary.jsonl", "steps.txt", "rest.tar.gz"}
    assert (out / "rest.tar.gz").stat().st_size < 15 << 20
    with tarfile.open(out / "rest.tar.gz") as tar:
        names = tar.getnames()
    assert "MANIFEST.txt" in names and "scan_correctness.json" in names and "suite/results.jsonl" in names
    assert not [n for n in names if "trace" in n or n.startswith("profile/profiles/")], names
    # the caller's environment is never touched: no pip at all in a dry run (issue 25)
    assert "-m pip" not in calls.read_text()
    # the output ends with summary.txt, whole
    text, rows = summary_of(out)
    assert run.stdout.rstrip("\n").splitlines()[-len(text):] == text
    assert [f"[{r['phase'].split()[0]}] {r['text']}" for r in rows if r.get("in_txt", True)] == text
    assert len(run.stdout[run.stdout.rindex("== summary.txt"):]) < 12_000 // 2  # the tail a device call returns


@pytest.mark.slow
def test_dry_run_runs_every_phase_the_cpu_can(dry_run):
    run, out, _ = dry_run
    text, rows = summary_of(out)
    ends = {}
    for r in rows:
        if r["text"].startswith(f"{r['phase']}: "):
            ends[r["phase"]] = r
    assert set(PHASES) - {"0 setup"} <= set(ends), sorted(ends)
    for phase in PHASES[1:]:
        assert "CUT SHORT" not in ends[phase]["text"] and "FAILED" not in ends[phase]["text"], ends[phase]
    assert ends["6 CUDA tests"]["status"] == "skipped"
    by_phase = {p: [r for r in rows if r["phase"] == p and r is not ends.get(p)] for p in PHASES}
    assert any("regs, spills 0/0 B" in r["text"] for r in by_phase["1 compile check"])
    correctness = [r for r in by_phase["2 scan correctness"] if r.get("backend") == "triton"]
    assert len(correctness) == 5 and all(r["passed"] and r["tiny"] for r in correctness)
    speed = [r for r in by_phase["3 scan speed"] if r.get("direction")]
    assert {r["backend"] for r in speed} >= {"triton", "chunked"} and all(r["in_txt"] is False for r in speed)
    assert {r["direction"] for r in speed} == {"forward", "backward", "both"} and not any(r["error"] for r in speed)
    groups = [r["text"] for r in by_phase["3 scan speed"] if r.get("group")]
    assert len(groups) == 3 and all(" TINY: fwd " in g and ", bwd " in g and ", f+b " in g for g in groups)
    eager = [r for r in by_phase["4 eager models"] if r.get("img_per_s")]
    assert {r["model"] for r in eager} == {"dim_tiny_4", "dit_tiny_4", "uvit_tiny_4"}
    assert any(r.get("scan_share") for r in by_phase["4 eager models"])
    compiled = [r for r in by_phase["5 compiled pair"] if r.get("img_per_s")]
    assert {r["model"] for r in compiled} == {"dim_tiny_4", "dit_tiny_4"}
    assert all(r["graph_breaks"] == 0 for r in compiled)
    assert any(r["text"].startswith("suite ") for r in by_phase["6 suite"])


@pytest.mark.slow
def test_a_phase_that_hangs_or_raises_keeps_what_it_wrote(tmp_path):
    """The compile check hangs as it starts (its 10 s cap kills it); the scan check raises after two lines. The
    lines written before each fault stay (the environment's, the scan check's first two), each faulty phase gets an
    end line saying how it ended, the next phase still runs, and the summary is still printed last."""
    run, out, _ = run_check(tmp_path, GPU_CHECK_PHASES="1 2", CAP_1c="10",
                            GPU_CHECK_FAULT="1 compile check:hang:0,2 scan correctness:raise:2")
    assert run.returncode == 0, run.stderr[-3000:]
    text, rows = summary_of(out)
    assert run.stdout.rstrip("\n").splitlines()[-len(text):] == text
    environment = [r["text"] for r in rows if r["phase"] == "1 environment"]
    assert environment[0].startswith("commit ") and environment[-1].startswith("1 environment: done")
    assert [r["text"].split(",")[0] for r in rows if r["phase"] == "1 compile check"] == [
        "1 compile check: CUT SHORT by its 10 s cap (the lines above are what it finished)"]
    scan_lines = [r["text"] for r in rows if r["phase"] == "2 scan correctness"]
    assert len(scan_lines) == 3 and "PASS" in scan_lines[1]
    assert scan_lines[2].startswith("2 scan correctness: FAILED, exit 1: RuntimeError: fault injected")
    for n, name in ((3, "scan speed"), (4, "eager models"), (5, "compiled pair"), (6, "rest")):
        assert f"[{n}] phase {n} {name}: not selected (GPU_CHECK_PHASES)" in text


def test_summary_lines_are_on_disk_before_a_fault(tmp_path, monkeypatch):
    monkeypatch.setenv(gpu_report.FAULT_ENV, "3:raise:2")
    s = gpu_report.Summary(tmp_path, "3 scan speed")
    s.record("first", x=1)
    with pytest.raises(RuntimeError, match="fault injected"):
        s.record("second", x=2)
    assert (tmp_path / "summary.txt").read_text().splitlines() == ["[3] first", "[3] second"]
    assert [json.loads(line)["x"] for line in (tmp_path / "summary.jsonl").read_text().splitlines()] == [1, 2]
    gpu_report.Summary(tmp_path, "2 scan correctness").record("other phases are not faulted")


def test_pack_leaves_out_traces_and_what_does_not_fit(tmp_path):
    work = tmp_path / "work"
    (work / "logs").mkdir(parents=True)
    (work / "profile" / "profiles" / "dim_h_2").mkdir(parents=True)
    (work / "profile" / "profiles" / "dim_h_2" / "trace.json").write_text("{}")
    (work / "profile" / "results.jsonl").write_text('{"metric": "profile"}\n')
    (work / "logs" / "2.log").write_text("phase 2\n" * 1000)
    (work / "big.pdf").write_bytes(os.urandom(3 << 20))
    left_out = gpu_report.pack(work, tmp_path / "rest.tar.gz", max_bytes=1 << 20)
    assert left_out == [f"big.pdf ({3 << 20} B)"]
    with tarfile.open(tmp_path / "rest.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["MANIFEST.txt", "logs/2.log", "profile/results.jsonl"]
        assert "big.pdf" in tar.extractfile("MANIFEST.txt").read().decode()
    assert (tmp_path / "rest.tar.gz").stat().st_size < 1 << 20 and sorted(os.listdir(tmp_path)) == ["rest.tar.gz",
                                                                                                       "work"]


def test_dim_layout_is_what_a_dim_block_passes(monkeypatch):
    """scan_inputs lays z, B, C out as MambaMixer does (strided views at batch > 1): checked against a real block."""
    import models.dim as dim

    seen = {}

    def capture(*args, **kwargs):
        seen.update(zip(("u", "delta", "A", "B", "C"), args, strict=False), **kwargs)
        return torch.zeros_like(args[0])

    monkeypatch.setattr(dim, "selective_scan", capture)
    for batch in (1, 3):
        mixer = dim.MambaMixer(d_model=64)  # d_inner 128, N 16, rank 4
        mixer(torch.randn(batch, 11, 64))
        ours, _ = dim_scan_inputs(batch, 11, torch.float32, "cpu", d_inner=128, N=16, rank=mixer.dt_rank)
        for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias"):
            assert (ours[k].shape, ours[k].stride(), ours[k].dtype) == (seen[k].shape, seen[k].stride(),
                                                                         seen[k].dtype), k
        assert (batch > 1) == (not ours["z"].is_contiguous()) == (not ours["B"].is_contiguous())


@pytest.fixture
def wrong_backends():
    def off_by_one_percent(*args):
        return chunked_scan(*args) * 1.01

    def nan_at_the_end(*args):
        out = chunked_scan(*args).clone()
        out[..., -1] = float("nan")
        return out

    def raises(*args):
        raise RuntimeError("kernel fault (test)")

    everywhere = lambda device: (True, "test backend")  # noqa: E731
    for name, fn in (("off", off_by_one_percent), ("nan", nan_at_the_end), ("raises", raises)):
        register_backend(name, fn, everywhere)
    yield
    for name in ("off", "nan", "raises"):
        unregister_backend(name)


def test_scan_check_fails_a_wrong_backend_and_passes_a_right_one(wrong_backends):
    shape = {"d_inner": 8, "N": 4, "rank": 2}
    dev = torch.device("cpu")
    ref = scan_cuda_check.reference(2, 7, torch.float32, dev, shape)
    right = scan_cuda_check.check_backend("chunked", 2, 7, torch.float32, dev, shape, ref)
    assert right["passed"] and right["rel_err"]["out"] < 1e-6 and not right["nonfinite"]
    off = scan_cuda_check.check_backend("off", 2, 7, torch.float32, dev, shape, ref)
    assert not off["passed"] and "out" in off["over_tolerance"]
    nan = scan_cuda_check.check_backend("nan", 2, 7, torch.float32, dev, shape, ref)
    assert not nan["passed"] and "out" in nan["nonfinite"]
    raised = scan_cuda_check.check_backend("raises", 2, 7, torch.float32, dev, shape, ref)
    assert not raised["passed"] and raised["error"].startswith("RuntimeError: kernel fault")


def test_scan_benchmark_records_a_failing_backend_and_goes_on(wrong_backends, tmp_path):
    out = tmp_path / "bench.json"
    assert scan_gpu.main(["--device", "cpu", "--out", str(out), "--backends", "raises,chunked", "--repeats", "1",
                          "--warmup", "0", "--summary", str(tmp_path)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["backend"], r["batch"], r["direction"], bool(r["error"])) for r in rows] == [
        ("raises", 1, "forward", True), ("raises", 1, "backward", True), ("raises", 1, "both", True),
        ("chunked", 1, "forward", False), ("chunked", 1, "backward", False), ("chunked", 1, "both", False),
        ("raises", 2, "forward", True), ("raises", 2, "backward", True), ("raises", 2, "both", True)]
    assert rows[0]["error"] == "RuntimeError: kernel fault (test)" and rows[3]["median_ms"] > 0
    lines = (tmp_path / "summary.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["[3] raises b1 L12 TINY", "[3] chunked b1 L12 TINY",
                                                      "[3] raises b2 L12 TINY"]
    assert lines[0].count("FAILED RuntimeError: kernel fault (test)") == 3 and "FAILED" not in lines[1]


def test_compile_check_launches_are_the_backends():
    from models.scan import triton_backend as tb

    for L in scan_compile_check.LENGTH.values():
        ints = scan_compile_check.launch_ints(L)
        T = tb.default_chunk_size(1, scan_compile_check.D_INNER, L)
        assert (ints["forward"]["T"], ints["forward"]["K"]) == (T, -(-L // T))
        assert (ints["backward"]["T"], ints["backward"]["n_dblocks"]) == (
            tb.BWD_CHUNK, scan_compile_check.D_INNER // tb.BLOCK_D)
    assert scan_compile_check.TILE["BD"] == tb.BLOCK_D
    kernels = tb._kernels()
    for name, _, constexprs in scan_compile_check.LAUNCHES:
        fn = getattr(kernels, name)
        wanted = {p.name for p in fn.params if p.is_constexpr}
        assert wanted == set(constexprs) | set(scan_compile_check.TILE), name
