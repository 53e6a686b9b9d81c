"""The command line: validate, list, env, report, argument mistakes (one line, exit 2, no traceback)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli_env
from dimbench import cli
from dimbench.console import console

BAD_MODEL = "models: [dit_s_2, dit_xxl]\nresolutions: [32]\n"
BAD_RES = "models: [dit_xl_2]\nresolutions: [256, 260]\nwarmup: -1\n"


def test_validate_reports_every_file_and_problem(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text(BAD_MODEL)
    (tmp_path / "b.yaml").write_text(BAD_RES)
    code = cli.main(["validate", str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"), "smoke"])
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert lines == [
        f"dimbench: error: {tmp_path / 'a.yaml'}:1: key 'models[1]': expected a registered model "
        f"({lines[0].split('(', 1)[1].split(')')[0]}), got 'dit_xxl'",
        f"dimbench: error: {tmp_path / 'b.yaml'}:2: key 'resolutions[1]': expected a resolution divisible by 16 "
        "for dit_xl_2 (a latent model: resolution/8 must be divisible by its patch 2), got 260",
        f"dimbench: error: {tmp_path / 'b.yaml'}:3: key 'warmup': expected an integer >= 0, got -1",
    ]
    assert "dim_h_2" in lines[0]  # the known models are listed
    assert "smoke.yaml: ok" in out and "6 points on cpu" in out


@pytest.mark.slow
def test_user_mistakes_through_the_real_cli_exit_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_MODEL)
    script = shutil.which("dimbench", path=str(Path(sys.executable).parent))
    assert script, "the dimbench console script is not installed (pip install -e .)"
    proc = subprocess.run([script, "validate", str(bad)], capture_output=True, text=True, env=cli_env(), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"dimbench: error: {bad}:1: key 'models[1]': expected a registered model")
    assert "Traceback" not in proc.stderr + proc.stdout


def test_python_dash_m_dimbench_is_the_same_cli(tmp_path, monkeypatch, capsys):
    import runpy

    monkeypatch.setattr(sys, "argv", ["dimbench", "run", str(tmp_path / "nope.yaml")])
    with pytest.raises(SystemExit) as info:
        runpy.run_module("dimbench", run_name="__main__")
    assert info.value.code == 2
    assert capsys.readouterr().err == f"dimbench: error: {tmp_path / 'nope.yaml'}: no such suite file\n"


def test_bad_device_is_one_line(capsys):
    assert cli.main(["run", "smoke", "--device", "tpu"]) == 2
    assert capsys.readouterr().err == "dimbench: error: device 'tpu': expected auto, cpu, cuda or cuda:N\n"


def test_argument_mistakes_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["run"])
    assert info.value.code == 2
    assert "the following arguments are required: SUITE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["frobnicate"])


def test_list_shows_models_metrics_and_suites(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for text in ("dim_h_2", "imagenet256_H_DiM", "dit_xl_2", "uvit_h_2", "latents", "pixels",  # models
                 "train_step", "latency_ms (ms, forward)", "meta device",  # metrics
                 "max_gmacs, timeout",  # a metric's options
                 "Diffusion Mamba", "DDPM step index in 0 ... 999", "pad_layout: lateral | cyclic",  # families
                 "resolution_scaling", "smoke"):  # suites
        assert text in out, text


def test_schema_documents_every_key_from_the_declaration(capsys):
    """docs/suite.md is generated from the declaration; a key added without regenerating it fails here."""
    from dimbench.suite import schema_markdown

    assert cli.main(["schema", "--markdown"]) == 0
    text = capsys.readouterr().out
    assert text == schema_markdown()
    assert (Path(__file__).resolve().parents[1] / "docs" / "suite.md").read_text() == text, (
        "docs/suite.md is stale: regenerate it with `dimbench schema --markdown > docs/suite.md`")
    for needle in ("| `timeout` | a number of seconds > 0 (.inf: no limit) | `600` |", "### `fvcore`",
                   "| `max_gmacs` |", "`max_gmacs_x_batch`"):
        assert needle in text, needle


def test_env_shows_versions_devices_and_backends(capsys):
    assert cli.main(["env"]) == 0
    out = capsys.readouterr().out
    for text in ("version: torch", "version: timm", "devices", "cpu", "scan backends on cpu", "SDPA backends",
                 "TF32", "git commit"):
        assert text in out, text
    assert cli.main(["env", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["versions"]["python"] and record["versions"]["torch"]
    assert set(record["attention_backends_enabled"]) >= {"flash", "math"}
    assert "cpu" in record["scan_backends"]


@pytest.mark.slow
def test_report_command_and_report_failures(tmp_path, capsys, monkeypatch):
    assert cli.main(["report", str(tmp_path / "nowhere")]) == 2
    assert "expected a run folder holding results.jsonl" in capsys.readouterr().err

    calls = []

    def fake_build(results_dir, out_dir=None, progress=None):
        calls.append((Path(results_dir), out_dir))
        return Path(out_dir or results_dir) / "report.html", Path(out_dir or results_dir) / "report.pdf"

    import dimbench.report

    monkeypatch.setattr(dimbench.report, "build_report", fake_build)
    (tmp_path / "results.jsonl").write_text("")
    assert cli.main(["report", str(tmp_path), "-o", str(tmp_path / "rep")]) == 0
    assert calls == [(tmp_path, str(tmp_path / "rep"))]
    assert "report.html" in capsys.readouterr().out

    # after a run: a failing report is reported, never fatal
    def broken(results_dir, out_dir=None, progress=None):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(dimbench.report, "build_report", broken)
    assert cli.report_after_run(tmp_path, console()) is False
    assert "report not built: RuntimeError: no fonts" in capsys.readouterr().out

    # -o naming a file: one line, exit 2, no temporary file left behind
    monkeypatch.undo()
    (tmp_path / "taken").write_text("a file")
    monkeypatch.setattr(dimbench.report, "build_report",
                        lambda d, o=None, **k: (Path(o) / "report.html").write_text(""))
    assert cli.main(["report", str(tmp_path), "-o", str(tmp_path / "taken")]) == 2
    assert capsys.readouterr().err.startswith(f"dimbench: error: {tmp_path / 'taken'}")

    # a report error meant for the user (an empty results file) is one line and exit 2, no traceback
    monkeypatch.undo()
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dimbench: error: ") and "no result rows" in err and "Traceback" not in err


def test_checkpoint_command_is_registered():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"run", "validate", "list", "schema", "env", "report", "checkpoint"} <= set(sub.choices)
