"""The proof that families, their options and metrics with plotted rows are declared once: a toy family with an
option of its own (tests/plugins/toy_family.py) and a toy metric with a plotted row (tests/plugins/toy_metric.py),
each in one file and loaded as plugins (one by DIMBENCH_PLUGINS, one by --plugin), are validated (a bad value is
refused at its FILE:LINE), measured, resumed (a second run measures nothing) and plotted (the report has the toy
row's section), through the real CLI."""

from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path

import pytest

import models
from conftest import ROOT, cli_env, read_jsonl, run_cli
from dimbench.metrics import unregister_metric
from dimbench.report import content, data

PLUGINS = Path(__file__).resolve().parent / "plugins"


def _cli(*args: str, timeout: float = 300):
    env = cli_env(PYTHONPATH=os.pathsep.join([str(PLUGINS), str(ROOT)]), DIMBENCH_PLUGINS="toy_family")
    return run_cli("--plugin", "toy_metric", *args, env=env, timeout=timeout)


BAD = """\
name: toy
models:
  - toymix_s_4
  - {name: toymix_s_4, mixer: attention}
  - {name: dit_s_2, mixer: conv}
resolutions: [32, 36]
metrics: [toy_weights]
device: cpu
"""

BAD_OPTION = """\
name: toy
models: [toymix_s_4]
resolutions: [32]
metrics: [toy_weights]
options:
  toy_weights: {per: 7}
"""


def _errors(done) -> list[str]:
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    return sorted(line.removeprefix("dimbench: error: ") for line in done.stderr.splitlines())


def test_a_plugin_family_option_and_metric_option_are_checked_at_their_file_and_line(tmp_path):
    suite = tmp_path / "toy.yaml"
    suite.write_text(BAD)
    assert _errors(_cli("validate", str(suite))) == sorted([
        f"{suite}:4: key 'models[1].mixer': expected mlp or conv (mlp, conv), got 'attention'",
        f"{suite}:5: key 'models[2].mixer': expected no mixer (a ToyMix option; dit_s_2 is a DiT model), got 'conv'",
        # each model's resolution rule comes from its declared latent factor: 2 for the toy, 8 for DiT
        f"{suite}:6: key 'resolutions[1]': expected a resolution divisible by 8 for toymix_s_4 (a latent model: "
        "resolution/2 must be divisible by its patch 4), got 36",
        f"{suite}:6: key 'resolutions[1]': expected a resolution divisible by 16 for dit_s_2 (a latent model: "
        "resolution/8 must be divisible by its patch 2), got 36",
    ])
    suite.write_text(BAD_OPTION)  # the toy metric's rule on its options as a whole (Metric.check_options)
    assert _errors(_cli("validate", str(suite))) == [
        f"{suite}:6: key 'options.toy_weights.per': expected a divisor of 1000, got 7"]


GOOD = """\
name: toy
models: [toymix_s_4, {name: toymix_s_4, mixer: conv}]
resolutions: [32, 64]
metrics: [toy_weights]
device: cpu
"""


@pytest.mark.slow  # two runs of four points in their own workers, and a report
def test_a_plugin_family_and_metric_are_measured_resumed_and_plotted(tmp_path):
    suite, out = tmp_path / "toy.yaml", tmp_path / "out"
    suite.write_text(GOOD)
    first = _cli("run", str(suite), "--out", str(out))
    assert first.returncode == 0, first.stdout + first.stderr
    rows = read_jsonl(out / "results.jsonl")
    by_key = {r["point_key"]: r for r in rows}
    assert set(by_key) == {"toymix_s_4|r32|b1|float32|cpu", "toymix_s_4|r32|b1|float32|cpu|mix=conv",
                           "toymix_s_4|r64|b1|float32|cpu", "toymix_s_4|r64|b1|float32|cpu|mix=conv"}
    assert all(r["metric"] == "toy_kweights" and r["status"] == "ok" and r["task"] == "count" for r in rows)
    # The declared latent factor (2 pixels per input cell) sets the input; the option reaches the model built.
    assert {r["resolution"]: r["input_size"] for r in rows} == {32: 16, 64: 32}
    mlp, conv = by_key["toymix_s_4|r32|b1|float32|cpu"], by_key["toymix_s_4|r32|b1|float32|cpu|mix=conv"]
    assert mlp["value"] != conv["value"]
    assert by_key["toymix_s_4|r64|b1|float32|cpu"]["value"] - mlp["value"] == pytest.approx((32**2 - 16**2) / 1000)

    lines = (out / "results.jsonl").read_bytes()
    again = _cli("run", str(suite), "--out", str(out), "--no-report")
    assert again.returncode == 0, again.stdout + again.stderr
    assert re.search(r"4 points, 0 to measure\b.*4 already complete \(resumed\)", again.stdout, re.S), again.stdout
    assert (out / "results.jsonl").read_bytes() == lines  # nothing measured, nothing written

    html = (out / "report.html").read_text(encoding="utf-8")
    section = re.search(r'<section id="toy-weights"><h2>Toy: weights per model</h2>(.*?)</section>', html, re.S)
    assert section, "the report has no section for the toy metric's plotted row"
    assert "Drawn from the toy metric&#x27;s own declaration." in section.group(1)
    assert section.group(1).count("data:image/png;base64,") == 1  # one facet
    assert "Thousands of weights each model is built with vs resolution, batch 1" in section.group(1)
    # Both variants of the model are drawn, each named by its option (this process loads the plugins to look).
    sys.path.insert(0, str(PLUGINS))
    try:
        toy_family, toy_metric = importlib.import_module("toy_family"), importlib.import_module("toy_metric")
        toy_family.register()
        toy_metric.register()
        built = content.build(data.load(out))
    finally:
        sys.path.remove(str(PLUGINS))
        unregister_metric("toy_weights")
        models.registry.unregister_family("toymix")
    (toy,) = [s for s in built.sections if s.anchor == "toy-weights"]
    (panel,) = toy.figures[0].panels
    assert {s.label: s.y for s in panel.series} == {
        "toymix_s_4": [by_key[f"toymix_s_4|r{r}|b1|float32|cpu"]["value"] for r in (32, 64)],
        "toymix_s_4 [mix=conv]": [by_key[f"toymix_s_4|r{r}|b1|float32|cpu|mix=conv"]["value"] for r in (32, 64)]}
