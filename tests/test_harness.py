"""Extending the harness: a metric and a model family each declared in one place (here), and a long-running task
that streams rows, keeps a checkpoint, is killed with SIGKILL and resumes without losing or repeating a row.

The declarations are module-level (a worker process is handed them by reference). In-process runs register them
with the fixtures below; the CLI runs load this module as a plugin (``--plugin test_harness``, which calls
:func:`register`).
"""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from rich.console import Console

import models
from dimbench import results
from dimbench.metrics import Measurement, Metric, Row, Summary, register_metric, unregister_metric
from dimbench.runner import Runner
from dimbench.schema import Field, Integer
from dimbench.suite import expand, parse_suite

ROOT = Path(__file__).resolve().parent.parent  # (not from conftest: this module is also a plugin, imported alone)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------- a metric, in one place


def _toy_metric(point, ctx):
    return [Measurement("toy_ms", 1.5 * point.batch, None, "made up by the test: 1.5 ms per image")]


TOY_METRIC = Metric(
    name="toy",
    rows=(Row("toy_ms", "ms", "toy latency", task="sample", per_pass=True, per_image_label="toy time per image",
              summary=Summary("toy ms\n(made up)")),),
    fn=_toy_metric,
    description="a metric declared by a test, and nowhere else",
)


# ------------------------------------------------------------------------------- a model family, in one place


class ToyNet(nn.Module):
    """The toy family's denoiser: (N, C, S, S) -> (N, C, S, S) through a patch conv, a per-token MLP and an
    unpatchify; the time step and class are ignored (only the call convention matters here)."""

    def __init__(self, *, input_size: int = 16, in_channels: int = 3, num_classes: int = 0, patch_size: int = 4,
                 width: int = 32):
        super().__init__()
        self.input_size, self.in_channels, self.patch_size, self.num_classes = input_size, in_channels, patch_size, 0
        self.embed = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.out = nn.Linear(width, patch_size * patch_size * in_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        n, c, h, w = x.shape
        p = self.patch_size
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (N, h/p * w/p, width)
        tokens = self.out(tokens + self.mlp(tokens))  # (N, T, p*p*C)
        return tokens.view(n, h // p, w // p, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(n, c, h, w)


TOY_FAMILY = models.Family(
    name="toy", display="Toy", description="a model family declared by a test, and nowhere else",
    timestep=models.Timestep(0, 9, integer=True, meaning="step 0 ... 9"), role="other", order=50,
    module_types=(ToyNet,),
)


# --------------------------------------------------------------------------- a long task, in one place too


def _toy_train(point, ctx):
    """Counts steps with a made-up loss 1/step; a checkpoint every ``checkpoint_every`` steps in its state folder;
    holds at step ``hold_at`` until the file OUT/release exists (so a test can kill it there)."""
    steps, every, hold = ctx.options["steps"], ctx.options["checkpoint_every"], ctx.options["hold_at"]
    checkpoint = ctx.state_dir / "checkpoint.json"
    step = json.loads(checkpoint.read_text())["step"] if checkpoint.exists() else 0
    resumed_from = step
    release = Path(ctx.out_dir) / "release"
    while step < steps:
        step += 1
        ctx.emit(Measurement("toy_loss", 1.0 / step, None, "made up: 1/step", {"step": step}))
        ctx.progress(step, steps, loss=1.0 / step)
        if step % every == 0:
            tmp = checkpoint.with_suffix(".tmp")
            tmp.write_text(json.dumps({"step": step}))
            os.replace(tmp, checkpoint)
        while step == hold and not release.exists():
            time.sleep(0.05)
    return [Measurement("toy_steps", step, None, "steps run", {"resumed_from": resumed_from})]


TOY_TRAIN = Metric(
    name="toy_train",
    rows=(Row("toy_loss", "loss", "toy training loss", task="train", series=True),
          Row("toy_steps", "count", "toy training steps", task="train")),
    fn=_toy_train,
    description="a long task declared by a test: streams a loss per step, checkpoints, resumes",
    options=(Field("steps", Integer(1), 12, "steps to run"),
             Field("checkpoint_every", Integer(1), 2, "steps between checkpoints"),
             Field("hold_at", Integer(0), 0, "step at which to wait for OUT/release (0: never)")),
    timeout=math.inf,
)


def register() -> None:
    """The plugin entry point (``dimbench --plugin test_harness``)."""
    register_metric(TOY_METRIC)
    register_metric(TOY_TRAIN)
    models.register_family(TOY_FAMILY)
    models.register_model("toy_s_4", family="toy", official="dimbench", description="a toy model",
                          input_size=16, in_channels=3, num_classes=0, patch_size=4, width=32)(ToyNet)


@pytest.fixture
def toys():
    register()
    yield
    for name in ("toy", "toy_train"):
        unregister_metric(name)
    models.registry.unregister_family("toy")


def _run(suite_text: str, tmp_path: Path) -> tuple[Path, str]:
    """Run a suite in this process (forkserver workers, as on any CPU run); returns the folder and the console."""
    plan = expand(parse_suite(suite_text, tmp_path / "suite.yaml"), device="cpu", out=tmp_path / "out")
    text = io.StringIO()
    summary = Runner(plan, argv=["dimbench", "run"], console=Console(file=text, width=240)).run()
    assert summary.counts.get("error", 0) == 0, read_jsonl(plan.out / "results.jsonl")
    return plan.out, text.getvalue()


# ------------------------------------------------------------------------------------------------------ tests


@pytest.mark.slow
@pytest.mark.usefixtures("toys")
def test_a_metric_declared_in_one_place_reaches_results_summary_and_report(tmp_path):
    out, _ = _run("name: toy\nmodels: [dit_s_2]\nresolutions: [32]\nbatch_sizes: [2]\nmetrics: [params, toy]\n"
                  "device: cpu\n", tmp_path)
    rows = {r["metric"]: r for r in read_jsonl(out / "results.jsonl")}
    toy = rows["toy_ms"]
    assert (toy["status"], toy["value"], toy["unit"], toy["task"]) == ("ok", 3.0, "ms", "sample")

    from dimbench.cli import print_summary

    buffer = io.StringIO()
    print_summary(Console(file=buffer, width=240), list(rows.values()), "toy")  # the columns `dimbench run` shows
    assert "toy ms" in buffer.getvalue() and "(made up)" in buffer.getvalue()
    assert "  toy_ms: made up by the test" in buffer.getvalue()  # under "How each column was obtained"

    from dimbench.report import content, data

    report = content.build(data.load(out))
    captions = [t.caption for s in report.sections for t in s.tables]
    assert any(c.startswith("toy latency [ms]") for c in captions), captions
    methods = next(s for s in report.sections if s.anchor == "methods").tables[0]
    assert ["toy latency (toy_ms)", "ms", "sample"] in [[c.text for c in row[:3]] for row in methods.rows]


@pytest.mark.slow
@pytest.mark.usefixtures("toys")
def test_a_model_family_declared_in_one_place_is_counted_timed_and_predicted(tmp_path):
    out, _ = _run("name: toyfam\nmodels: [toy_s_4, dit_s_2]\nresolutions: [16, 32]\n"
                  "metrics: [params, flops, latency, memory]\nwarmup: 0\nrepeats: 1\ndevice: cpu\n", tmp_path)
    rows = {(r["point_key"], r["metric"]): r for r in read_jsonl(out / "results.jsonl")}
    net = ToyNet()
    for res in (16, 32):
        key = f"toy_s_4|r{res}|b1|float32|cpu"
        assert rows[(key, "params")]["value"] == sum(p.numel() for p in net.parameters())
        tokens = (res // 4) ** 2
        macs = tokens * (3 * 16 * 32 + 2 * 32 * 128 + 32 * 48)  # patch conv, MLP, output projection
        assert rows[(key, "gmacs")]["value"] == pytest.approx(macs / 1e9)
        assert rows[(key, "latency_ms")]["status"] == "ok" and rows[(key, "latency_ms")]["value"] > 0
        assert rows[(key, "mem_predicted_gib")]["status"] == "ok" and rows[(key, "mem_predicted_gib")]["value"] > 0


def _cli(*args: str, **env: str) -> list[str]:
    return [sys.executable, "-m", "dimbench.cli", "--plugin", "test_harness", *args]


def _plugin_env(**extra: str) -> dict[str, str]:
    from conftest import cli_env

    return cli_env(PYTHONPATH=str(ROOT / "tests"), **extra)


LONG_SUITE = """\
name: long
models: [dit_s_2]
resolutions: [32]
metrics: [toy_train, params]
options:
  toy_train: {steps: 12, checkpoint_every: 4, hold_at: 7}
device: cpu
"""


@pytest.mark.slow
def test_long_task_killed_with_sigkill_resumes_from_its_checkpoint(tmp_path):
    suite = tmp_path / "long.yaml"
    suite.write_text(LONG_SUITE)
    out = tmp_path / "out"
    args = _cli("run", str(suite), "--out", str(out), "--no-report")
    runner = subprocess.Popen(args, env=_plugin_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    key = "dit_s_2|r32|b1|float32|cpu"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # waits for the event (rows of steps 1..7 on disk), not a duration
            rows = results.read_rows(out) if (out / "results.jsonl").exists() else []
            if {r["extra"].get("step") for r in rows if r["metric"] == "toy_loss"} >= set(range(1, 8)):
                break
            assert runner.poll() is None, runner.communicate()[1]
            time.sleep(0.1)
        else:
            pytest.fail("the long task's rows never reached the results file while it ran")
        before_kill = read_jsonl(out / "results.jsonl")
    finally:
        runner.kill()  # SIGKILL: no chance to clean up
        runner.wait()
    assert not any(r["metric"] == "toy_steps" for r in before_kill)  # it was cut off mid-way
    (state,) = (out / "state").glob("dit_s_2_r32_b1_float32_cpu-*")  # the point key as a file name, and its hash
    assert json.loads((state / "toy_train" / "checkpoint.json").read_text()) == {"step": 4}

    (out / "release").touch()
    proc = subprocess.run(args, env=_plugin_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    after = read_jsonl(out / "results.jsonl")
    assert after[: len(before_kill)] == before_kill  # what was on disk before the kill is untouched
    identities = [results.row_identity(r) for r in after]
    assert len(identities) == len(set(identities))  # every row once
    losses = sorted(r["extra"]["step"] for r in after if r["metric"] == "toy_loss")
    assert losses == list(range(1, 13))
    (steps,) = [r for r in after if r["metric"] == "toy_steps"]
    assert steps["value"] == 12 and steps["extra"]["resumed_from"] == 4 and steps["task"] == "train"
    assert {r["metric"] for r in after if r["point_key"] == key} >= {"params", "params_trainable"}
    env = json.loads((out / "environment.json").read_text())
    assert env["runs"][0]["finished_at"] is None and env["runs"][1]["interrupted"] is False


def test_every_declaration_can_be_handed_to_a_worker():
    """Workers get the declarations of what they measure by pickle: no lambda or closure in any of them."""
    import pickle

    from dimbench.metrics import METRICS

    for name in models.list_models():
        info = models.model_info(name)
        assert pickle.loads(pickle.dumps((info, info.family_info)))[0].name == name
    for metric in METRICS.values():
        assert pickle.loads(pickle.dumps(metric)).rows == metric.rows


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the fork server through /proc")
def test_killing_the_fork_server_loses_nothing(tmp_path):
    """kill -9 of multiprocessing's fork server mid-run: the worker it forked goes on, the next worker gets a new
    server, and every row is written once."""
    suite = tmp_path / "long.yaml"
    suite.write_text(LONG_SUITE.replace("models: [dit_s_2]", "models: [dit_s_2, uvit_s_2]"))
    out = tmp_path / "out"
    runner = subprocess.Popen(_cli("run", str(suite), "--out", str(out), "--no-report"), env=_plugin_env(),
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # the first point's long task holds at step 7
            rows = results.read_rows(out) if (out / "results.jsonl").exists() else []
            if any(r["metric"] == "toy_loss" and r["extra"].get("step") == 7 for r in rows):
                break
            assert runner.poll() is None, runner.communicate()
            time.sleep(0.1)
        servers = [c for c in _children(runner.pid)
                   if "multiprocessing.forkserver" in Path(f"/proc/{c}/cmdline").read_bytes().decode(errors="replace")]
        assert len(servers) == 1, servers
        os.kill(servers[0], 9)
        (out / "release").touch()
        stdout, stderr = runner.communicate(timeout=300)
    finally:
        runner.kill()
    assert runner.returncode == 0, stdout + stderr
    rows = read_jsonl(out / "results.jsonl")
    identities = [results.row_identity(r) for r in rows]
    assert len(identities) == len(set(identities)) and all(r["status"] == "ok" for r in rows), rows
    for model in ("dit_s_2", "uvit_s_2"):
        key = f"{model}|r32|b1|float32|cpu"
        assert sorted(r["extra"]["step"] for r in rows if r["point_key"] == key and r["metric"] == "toy_loss") \
            == list(range(1, 13))
        assert {r["metric"] for r in rows if r["point_key"] == key} == {"toy_loss", "toy_steps", "params",
                                                                          "params_trainable"}


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the workers through /proc")
def test_a_long_task_never_checkpoints_past_rows_that_are_not_on_disk(tmp_path):
    """The runner is frozen (SIGSTOP: it reads nothing more) and then killed while a long task streams one row and
    one checkpoint per step: every step up to the last checkpoint must be on disk, since ``ctx.emit`` returns
    only once the runner has written the rows."""
    import uuid

    suite = tmp_path / "long.yaml"
    suite.write_text(LONG_SUITE.replace("{steps: 12, checkpoint_every: 4, hold_at: 7}",
                                        "{steps: 100000, checkpoint_every: 1, hold_at: 0}"))
    out = tmp_path / "out"
    mark = f"DIMBENCH_TEST_MARK_{uuid.uuid4().hex}"
    runner = subprocess.Popen(_cli("run", str(suite), "--out", str(out), "--no-report"),
                              env=_plugin_env(DIMBENCH_TEST_MARK=mark), cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # the task is streaming
            rows = results.read_rows(out) if (out / "results.jsonl").exists() else []
            if sum(r["metric"] == "toy_loss" for r in rows) >= 20:
                break
            assert runner.poll() is None, runner.communicate()[1]
            time.sleep(0.05)
        else:
            pytest.fail("the long task's rows never reached the results file")
        runner.send_signal(signal.SIGSTOP)
    finally:
        runner.kill()
        runner.wait()
    from conftest import marked_processes

    deadline = time.monotonic() + 60
    while marked_processes(mark) and time.monotonic() < deadline:  # the worker sees its runner gone, and exits
        time.sleep(0.1)
    assert marked_processes(mark) == []
    (state,) = (out / "state").glob("dit_s_2_r32_b1_float32_cpu-*")
    last = json.loads((state / "toy_train" / "checkpoint.json").read_text())["step"]
    on_disk = {r["extra"]["step"] for r in read_jsonl(out / "results.jsonl") if r["metric"] == "toy_loss"}
    assert set(range(1, last + 1)) <= on_disk, f"checkpoint at step {last}, rows missing: " \
        f"{sorted(set(range(1, last + 1)) - on_disk)[:10]}"


