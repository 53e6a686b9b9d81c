"""The GPU check (scripts/gpu_check.sh, issue 18) without a GPU: its dry run keeps the packaging contract (at most 7
plain files in OUT, nothing deeper, rest.tar.gz under 15 MiB without traces, summary.txt naming every phase and
printed last, no `pip install` into the caller's environment); a phase that raises or hangs past its cap keeps the
lines written before it; and the pieces it runs can fail when they should: the scan check fails a wrong or NaN
backend (and a wrong conv kernel, and gradients that vary between runs), the benchmark records a backend that
raises and goes on, the DiM layout is the one DiM passes, the static compile check's launches are the backends'
own."""

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
import scan_cuda_check  # noqa: E402
import scan_gpu  # noqa: E402
import scan_static  # noqa: E402
from scan_cases import compiled  # noqa: E402
from scan_inputs import dim_scan_inputs  # noqa: E402

from models.scan import auto_backend, chunked_scan, register_backend, unregister_backend  # noqa: E402

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
    # phase 1: both Triton backends and the conv compiled for sm_90 by scan_static.py, a line per backend and dtype
    kernels = [r for r in by_phase["1 compile check"] if r.get("kernel")]
    assert {(r["backend"], r["dtype"]) for r in kernels} == {(b, d) for b in ("triton", "conv", "triton_v1")
                                                              for d in ("bf16", "fp32")}
    assert all(r["error"] is None and r["registers"] > 0 and r["spill_instructions"] == 0 for r in kernels)
    groups = [r["text"] for r in by_phase["1 compile check"] if r.get("group")]
    assert len(groups) == 6 and all(" regs, 0 spill instructions, smem <= " in g for g in groups), groups
    assert by_phase["1 compile check"][-1]["text"].endswith("no spills): met")
    # phase 2: both Triton backends at the five cases, the conv at each, the deterministic backward at two
    checks = [r for r in by_phase["2 scan correctness"] if r.get("check")]
    assert all(r["passed"] and r["tiny"] for r in checks), [r["text"] for r in checks if not r["passed"]]
    count = {}
    for r in checks:
        key = (r["check"], r.get("backend"))
        count[key] = count.get(key, 0) + 1
    assert count == {("scan", "triton"): 5, ("scan", "triton_v1"): 5, ("conv", None): 5,
                     ("deterministic", "triton"): 2}, count
    speed = [r for r in by_phase["3 scan speed"] if r.get("direction")]
    assert {r["backend"] for r in speed} == {"triton", "triton_v1", "chunked"}
    assert all(r["in_txt"] is False for r in speed)
    assert {r["direction"] for r in speed} == {"forward", "backward", "both"} and not any(r["error"] for r in speed)
    groups = [r["text"] for r in by_phase["3 scan speed"] if r.get("group")]
    assert len(groups) == 5 and all(" TINY: fwd " in g and ", bwd " in g and ", f+b " in g for g in groups)
    eager = [r for r in by_phase["4 eager models"] if r.get("img_per_s")]
    assert {r["model"] for r in eager} == {"dim_tiny_4", "dit_tiny_4", "uvit_tiny_4"}
    share = next(r for r in by_phase["4 eager models"] if r.get("scan_share"))
    # "auto" on the CPU: the C kernel where a compiler built it, else chunked
    assert (share["scan_backend"], share["scan_backend_chosen_by"]) == (auto_backend("cpu")[0], "auto")
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
    with pytest.raises(TypeError, match="phase"):  # a row's own "phase" (a kernel's forward) may not hide the check's
        gpu_report.Summary(tmp_path, "1 compile check").record("kernel", phase="forward")


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


@compiled
def test_static_check_launches_are_the_backends():
    """benchmarks/scan_static.py compiles what the backends launch at DiM-H's shapes: every kernel's constexprs and
    arguments as its parameters say (a kernel that gains one fails here, not on a GPU machine), the triton backend's
    and the conv's launches built by their own code and constants, triton_v1's (built by hand there) with its
    chunk sizes, channel block, persistent programs and launch options."""
    from types import SimpleNamespace

    from models.dim import D_CONV
    from models.scan import conv
    from models.scan import triton_backend as v1
    from models.scan import triton_fused as tf

    d, L, N = (scan_static.SHAPE[k] for k in ("d_inner", "L", "N"))
    cases = {c.label: c for c in scan_static.fused_cases("bf16") + scan_static.conv_cases("bf16")
             + scan_static.v1_cases("bf16")}
    named = {}
    for label, case in cases.items():
        params = case.fn.params
        assert set(case.kwargs) - {"num_warps", "num_stages"} == {p.name for p in params if p.is_constexpr}, label
        named[label] = dict(zip([p.name for p in params if not p.is_constexpr], case.args, strict=True))
    # triton: static_launches, the backend's own launch code, with its CUDA tiles
    fwd, bwd = tf.static_launches(**scan_static.dim_inputs(torch.bfloat16), delta_softplus=True)
    assert cases["scan_fwd_kernel"].kwargs == fwd.kwargs and cases["scan_bwd_kernel"].kwargs == bwd.kwargs
    assert fwd.kwargs["num_warps"] == tf.CUDA_TILES.fwd.warps and fwd.kwargs["TE"] == tf.CUDA_TILES.fwd.te
    assert cases["scan_bwd_kernel[deterministic]"].kwargs["DETERMINISTIC"] is True
    # conv: the constants conv.launch uses
    k = cases["conv_silu_kernel"]
    assert (k.kwargs["KW"], k.kwargs["BC"], k.kwargs["BT"], k.kwargs["num_warps"]) == (
        D_CONV, conv.BLOCK_C, conv.BLOCK_T, conv.NUM_WARPS)
    # triton_v1: its chunking, channel block, programs and options
    T = v1.default_chunk_size(1, d, L)
    assert (named["forward_kernel"]["T"], named["forward_kernel"]["K"]) == (T, -(-L // T))
    assert named["chunk_summary_kernel"]["T"] == T
    back = named["backward_kernel"]
    assert (back["T"], back["K"], back["n_dblocks"]) == (v1.BWD_CHUNK, -(-L // v1.BWD_CHUNK), d // v1.BLOCK_D)
    assert back["scratch_ptr"].shape[0] == cases["backward_kernel"].programs == 132 * v1.BWD_PROGRAMS_PER_SM
    options = v1._Prepared.launch(SimpleNamespace(interpret=False))
    for label in ("chunk_summary_kernel", "carry_kernel", "forward_kernel", "chunk_summary_kernel[adjoint]",
                  "carry_kernel[adjoint]", "backward_kernel"):
        kw = cases[label].kwargs
        assert (kw["BD"], kw["BN"], kw["num_warps"]) == (v1.BLOCK_D, v1._block_n(N), options["num_warps"]), label


def test_conv_and_determinism_checks_fail_when_they_should(monkeypatch):
    """Phase 2's conv check fails a kernel 1 % off and passes torch's own values; its determinism check fails a
    "triton" whose gradients vary between two runs and passes one whose do not."""
    from models.scan import conv

    dev, shape = torch.device("cpu"), {"d_inner": 8, "N": 4, "rank": 2}
    monkeypatch.setattr(conv, "launch", lambda x, w, b: conv.causal_conv1d_silu_reference(x.float(), w, b) * 1.01)
    wrong = scan_cuda_check.check_conv(2, 9, torch.float32, dev, shape)
    assert not wrong["passed"] and wrong["rel_err"]["out"] > 5e-3 and wrong["error"] is None
    monkeypatch.setattr(conv, "launch", lambda x, w, b: conv.causal_conv1d_silu_reference(x.float(), w, b))
    assert scan_cuda_check.check_conv(2, 9, torch.float32, dev, shape)["passed"]

    calls = []

    def varying(*args):  # each call a little different, as atomics in another order would make it
        calls.append(1)
        return chunked_scan(*args) * (1 + 1e-5 * len(calls))

    everywhere = lambda device: (True, "test backend")  # noqa: E731
    try:
        register_backend("triton", varying, everywhere)
        res = scan_cuda_check.check_deterministic(1, 7, torch.float32, dev, shape)
        assert not res["passed"] and res["not_identical"] and res["error"] is None
        register_backend("triton", chunked_scan, everywhere, replace=True)
        res = scan_cuda_check.check_deterministic(1, 7, torch.float32, dev, shape)
        assert res["passed"] and not res["not_identical"], res
    finally:
        unregister_backend("triton")
