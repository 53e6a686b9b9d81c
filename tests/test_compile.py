"""torch.compile as a suite setting: the `compile` key, compiled sweep points and their keys, compiled timed rows,
the report's facets, and DiM (scan custom op, named ranges) under torch.compile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dimbench.metrics import METRICS
from dimbench.points import SweepPoint
from dimbench.suite import SuiteError, expand, load_suite, parse_suite
from models.scan import resolve_backend

ROOT = Path(__file__).resolve().parent.parent

COMPILED = """\
name: c
models: [dit_s_2, dim_s_2]
resolutions: [32]
metrics: [params, flops, latency]
compile: [eager, default]
limits:
  latency: {compile: [default]}
"""


def errors_of(text: str, path: Path) -> list[str]:
    path.write_text(text)
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    return info.value.errors


@pytest.mark.parametrize("text, line, message", [
    ("models: [dit_s_2]\nresolutions: [32]\ncompile: [eager, fast]\n", 3,
     r"key 'compile\[1\]': expected eager or a torch.compile mode \(eager, default, reduce-overhead, max-autotune, "
     r"max-autotune-no-cudagraphs\), got 'fast'"),
    ("models: [dit_s_2]\nresolutions: [32]\ncompile: default\n", 3, r"key 'compile': expected a non-empty list"),
    ("models: [dit_s_2]\nresolutions: [32]\ncuda:\n  compile: [max_autotune]\n", 4,
     r"key 'cuda.compile\[0\]': expected eager or a torch.compile mode"),
    ("models: [dit_s_2]\nresolutions: [32]\ncompile: [default, eager, default]\n", 3,
     r"key 'compile': expected each compile setting once, got default twice"),
    ("models: [dit_s_2]\nresolutions: [32]\nmetrics: [latency]\nlimits:\n  latency: {compile: [jit]}\n", 5,
     r"key 'limits.latency.compile\[0\]': expected eager or a torch.compile mode"),
])
def test_compile_key_is_validated_with_file_and_line(text, line, message, tmp_path):
    errors = errors_of(text, tmp_path / "s.yaml")
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{tmp_path / 's.yaml'}:{line}: "), errors
    assert __import__("re").search(message, errors[0]), errors


def test_eager_keys_are_unchanged_and_compiled_points_have_their_own(tmp_path):
    assert SweepPoint("s", "dit_s_2", 32, 4, 1, "float32", "cpu", ("latency",)).key == "dit_s_2|r32|b1|float32|cpu"

    plan = expand(parse_suite(COMPILED, tmp_path / "s.yaml"), device="cpu", out=tmp_path / "out")
    keys = [pp.point.key for pp in plan.points]
    assert keys == ["dit_s_2|r32|b1|float32|cpu", "dim_s_2|r32|b1|float32|cpu",
                    "dit_s_2|r32|b1|float32|cpu|compile=default", "dim_s_2|r32|b1|float32|cpu|compile=default"]
    eager, compiled = plan.points[0], plan.points[2]
    assert eager.point.compile is None and compiled.point.compile == "default"
    assert eager.run == ("params", "flops") and "compile eager only" not in eager.skipped["latency"]
    assert eager.skipped["latency"].endswith("compile default only, this point has eager")
    assert compiled.run == ("latency",)
    assert set(compiled.skipped) == {"params", "flops"}
    assert all(r.startswith("not run compiled: ") for r in compiled.skipped.values())


def test_shipped_suite_compiles_on_cuda_only():
    scaling = load_suite(ROOT / "suites" / "resolution_scaling.yaml")
    assert scaling.sections["cpu"].compile == ("eager",) and scaling.point_count("cpu") == 12
    assert scaling.sections["cuda"].compile == ("eager", "default") and scaling.point_count("cuda") == 24
    assert all(pp.point.compile is None for pp in expand(scaling, device="cpu", out="unused").points)
    # Only a metric that times or measures a running model compiles it: a count or a prediction is the same
    # compiled or not, so a metric of counts and predictions alone never declares it.
    assert any(metric.compiles for metric in METRICS.values())
    for metric in METRICS.values():
        assert not metric.compiles or any(not (r.deterministic or r.predicted) for r in metric.rows), metric.name


@pytest.mark.slow
def test_dim_traces_whole_under_torch_compile_forward_and_backward():
    """The scan custom op (fake kernel, registered autograd) and the named ranges trace into one graph."""
    import models

    torch.manual_seed(0)
    model = models.create_model("dim_tiny_4", input_size=16).train()
    x, t, y = torch.randn(2, model.in_channels, 16, 16), torch.tensor([10.0, 500.0]), torch.tensor([1, 2])
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # fullgraph: a graph break raises
    ref = model(x, t, y)
    ref.square().mean().backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out = compiled(x, t, y)
    out.square().mean().backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip([p.grad for p in model.parameters()], ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)

    # A grid no eager forward has seen (its index maps built inside the graph), with the named ranges listening:
    # under torch.compile they stay out of the graph.
    from models.profiling import listening

    x12 = torch.randn(1, model.in_channels, 12, 12)
    small = models.create_model("dim_tiny_4", input_size=12).eval()
    with torch.no_grad(), listening():
        got = torch.compile(small, backend="aot_eager", fullgraph=True)(x12, t[:1], y[:1])
    with torch.no_grad():
        torch.testing.assert_close(got, small(x12, t[:1], y[:1]), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_compiled_latency_rows_say_so(monkeypatch):
    """aot_eager here (inductor compiles a tiny model in ~45 s on this 2-core CPU): the path is the same."""
    monkeypatch.setenv("DIMBENCH_COMPILE_BACKEND", "aot_eager")
    point = SweepPoint("t", "dim_tiny_4", 16, 16, 1, "float32", "cpu", ("latency",), compile="default")
    rows = {m.metric: m for m in METRICS["latency"].measure(point, warmup=1, repeats=2)}
    row = rows["latency_ms"]
    assert row.status == "ok" and row.value > 0
    assert "torch.compile(mode='default', whole model, backend='aot_eager'" in row.method
    assert "1 untimed first compiled call, which compiles" in row.method
    assert row.extra["compile"] == "default" and row.extra["compile_backend"] == "aot_eager"
    assert row.extra["compile_first_call_s"] > 0 and row.extra["scan_backend"] == resolve_backend(None, "cpu")
    eager = METRICS["latency"].measure(SweepPoint("t", "dim_tiny_4", 16, 16, 1, "float32", "cpu", ("latency",)),
                                       warmup=0, repeats=1)
    assert "eager (not compiled)" in eager[0].method and "compile" not in eager[0].extra


@pytest.mark.slow
def test_suite_run_with_compiled_points_and_report(tmp_path):
    """`dimbench run` end to end: compiled points beside eager ones, rows marked, separate report facets."""
    suite = tmp_path / "c.yaml"
    suite.write_text("name: c\nmodels: [dit_tiny_4, dim_tiny_4]\nresolutions: [16]\nmetrics: [params, latency, "
                     "train_step]\ncompile: [eager, default]\nwarmup: 1\nrepeats: 1\n")
    env = {**os.environ, "DIMBENCH_COMPILE_BACKEND": "aot_eager", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "dimbench.cli", "run", str(suite), "--device", "cpu", "--out",
                           str(out)], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "compile" in proc.stdout  # the summary table's compile column
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    compiled = [r for r in rows if r["point_key"].endswith("|compile=default")]
    assert {r["model"] for r in compiled} == {"dit_tiny_4", "dim_tiny_4"}
    assert all(r["extra"]["compile"] == "default" for r in compiled)
    ok = {(r["model"], r["metric"]) for r in compiled if r["status"] == "ok"}
    assert {("dim_tiny_4", "latency_ms"), ("dit_tiny_4", "train_step_ms")} <= ok
    assert all(r["status"] == "skipped" for r in compiled if r["metric"] == "params")
    assert not any("compile" in r["extra"] for r in rows if r not in compiled)

    from dimbench.report.data import load

    results = load(out)
    labels = [f.label() for f in results.facets(["latency_ms"])]
    assert labels == ["cpu, float32, eager, batch 1", "cpu, float32, torch.compile(mode=default), batch 1"]
    assert (out / "report.html").exists()


def _dim_block():
    from models.dim import DiMBlock

    torch.manual_seed(0)
    block = DiMBlock(32, consumes_skip=False)
    block.mixer.reset_parameters(depth=4)
    with torch.no_grad():
        block.mod_table.normal_()
    return block, torch.randn(2, 10, 32), torch.randn(2, 3, 32)


def test_scan_backend_resolution_never_breaks_the_graph_on_the_cuda_path(monkeypatch):
    """Issue 18: on CUDA "auto" tries mamba_ssm's import, then triton's; traced, that import broke the graph at every
    scan call, and the same decision made for the fused conv1d + SiLU (issue 19: the kernel runs only with the
    triton scan) broke it again. The CUDA path is forced here (no GPU): the real ``_auto`` for a CUDA device, its
    import caches cleared, then "chunked" so the CPU tensors still run; the conv's decision taken as for a CUDA
    tensor. Controls: with the scan's resolution traced, as before the fix, the block breaks; with the conv's
    decision traced, it breaks. Both resolved outside the graph, a DiM block traces as one graph, the CUDA path
    taken at trace time by both, and fullgraph holds."""
    from models.scan import conv, mamba_ssm_backend, registry, triton_runtime
    from models.scan import op as scan_op

    real_auto = registry._auto
    cuda_path_calls = []

    def cuda_path(device):
        cuda_path_calls.append(real_auto(torch.device("cuda")))
        return "chunked"

    def fresh():
        torch._dynamo.reset()
        mamba_ssm_backend._import_selective_scan_fn.cache_clear()
        triton_runtime.import_triton.cache_clear()
        cuda_path_calls.clear()

    monkeypatch.setattr(registry, "_auto", cuda_path)
    monkeypatch.setattr(conv, "fused_conv_available", lambda x: conv._fused_on(torch.device("cuda")))
    monkeypatch.delenv("DIMBENCH_SCAN_BACKEND", raising=False)
    block, x, c = _dim_block()

    fresh()
    with monkeypatch.context() as traced:  # the scan's resolution as it was before issue 18: inside the graph
        traced.setattr(scan_op, "_resolve_untraced", lambda backend, device: registry.resolve_backend(backend, device))
        control = torch._dynamo.explain(block)(x, c)
    assert control.graph_break_count >= 1, "the forced CUDA path no longer breaks when traced: the test proves nothing"
    assert any("Import" in str(r.reason) for r in control.break_reasons)

    fresh()
    with monkeypatch.context() as traced:  # the conv's decision traced
        traced.setattr(conv._fused_on, "_dynamo_marked_constant", False)
        control = torch._dynamo.explain(block)(x, c)
    assert control.graph_break_count >= 1, "the conv's decision no longer breaks when traced: the test proves nothing"

    fresh()
    explained = torch._dynamo.explain(block)(x, c)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
    assert len(cuda_path_calls) >= 2  # the scan's and the conv's CUDA resolution ran (outside the graph)

    torch._dynamo.reset()
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, c), block(x, c), rtol=1e-5, atol=1e-5)


def test_a_backend_that_cannot_run_still_raises_under_compile(monkeypatch):
    from models.scan import selective_scan

    monkeypatch.delenv("DIMBENCH_SCAN_BACKEND", raising=False)
    u, A, B = torch.randn(1, 4, 8), -torch.rand(4, 3), torch.randn(1, 3, 8)
    torch._dynamo.reset()
    with pytest.raises(RuntimeError, match="scan backend 'mamba_ssm' \\(requested\\) cannot run on cpu"):
        torch.compile(lambda u: selective_scan(u, u, A, B, B, backend="mamba_ssm"), backend="aot_eager")(u)
