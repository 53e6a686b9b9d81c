"""Suite schema: validation messages (FILE:LINE, key, expected, got), defaults, device sections, expansion."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import clean_failure, run_cli
from dimbench.errors import UserError
from dimbench.schema import Record
from dimbench.suite import SuiteError, SuiteFile, expand, load_suite, parse_suite

ROOT = Path(__file__).resolve().parent.parent


def errors_of(text: str, path: Path) -> list[str]:
    path.write_text(text)
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    return info.value.errors


# (suite text, expected line, regex the message must match)
BAD = {
    "unknown key": ("models: [dit_s_2]\nresolutions: [32]\ncolour: blue\n", 3,
                    r"key 'colour': expected one of the suite keys \(name, .*\), got unknown key 'colour'"),
    "wrong type": ("models: [dit_s_2]\nresolutions: [32]\nrepeats: many\n", 3,
                   r"key 'repeats': expected an integer >= 1, got 'many'"),
    "wrong list item": ("models: [dit_s_2]\nresolutions: [32, 64.5]\n", 2,
                        r"key 'resolutions\[1\]': expected an integer >= 1, got 64.5"),
    "unknown model": ("models:\n  - dit_s_2\n  - dit_xxl\nresolutions: [32]\n", 3,
                      r"key 'models\[1\]': expected a registered model \(.*dim_h_2.*dit_xl_2.*\), got 'dit_xxl'"),
    "unknown metric": ("models: [dit_s_2]\nresolutions: [32]\nmetrics: [params, flopz]\n", 3,
                       r"key 'metrics\[1\]': expected a registered metric \(params, flops.*\), got 'flopz'"),
    "latent geometry": ("models: [dit_xl_2]\nresolutions: [256, 260]\n", 2,
                        r"key 'resolutions\[1\]': expected a resolution divisible by 16 for dit_xl_2 \(a latent "
                        r"model: resolution/8 must be divisible by its patch 2\), got 260"),
    "pixel geometry": ("models: [uvit_s_2]\nresolutions: [33]\n", 2,
                       r"expected a resolution divisible by 2 for uvit_s_2 \(a pixel model.*\), got 33"),
    "missing file": ("models:\n  - {name: dim_s_2, checkpoint: weights/none.pt}\nresolutions: [32]\n", 2,
                     r"key 'models\[0\]\.checkpoint': expected an existing weights file .*got 'weights/none.pt'"),
    "invalid yaml": ("models: [dit_s_2\nresolutions: [32]\n", 2, r"invalid YAML: expected ',' or ']'"),
    "duplicate key": ("models: [dit_s_2]\nresolutions: [32]\nmodels: [dim_s_2]\n", 3,
                      r"key 'models': expected each key once, got it again \(first on line 1\)"),
    "missing key": ("models: [dit_s_2]\n", 1, r"key 'resolutions': expected a non-empty list .*, got nothing"),
    "not a mapping": ("- dit_s_2\n", 1, r"expected a mapping of suite keys .*, got a list"),
    "bad device": ("models: [dit_s_2]\nresolutions: [32]\ndevice: tpu\n", 3,
                   r"key 'device': expected auto, cpu, cuda or cuda:N, got 'tpu'"),
    "section key": ("models: [dit_s_2]\nresolutions: [32]\ncpu:\n  models: [dim_s_2]\n", 4,
                    r"key 'cpu.models': expected one of the keys a device section may override"),
    "limit rule": ("models: [dit_s_2]\nresolutions: [32]\nlimits:\n  latency: {max_gmacs_x_batch: -1}\n", 4,
                   r"key 'limits.latency.max_gmacs_x_batch': expected a number > 0 .*, got -1"),
    "pad layout": ("models:\n  - {name: dit_s_2, pad_layout: cyclic}\nresolutions: [32]\n", 2,
                   r"key 'models\[0\]\.pad_layout': expected no pad_layout \(a DiM option"),
    "model twice": ("models:\n  - dit_s_2\n  - dim_s_2\n  - dit_s_2\nresolutions: [32]\n", 4,
                    r"key 'models\[2\]': expected each model once \(models\[0\] is the same model .*\), got "
                    r"'dit_s_2' again"),
    "no models": ("models: []\nresolutions: [32]\n", 1,
                  r"key 'models': expected a non-empty list .*, got an empty list"),
    "checkpoint folder": ("models:\n  - {name: dim_s_2, checkpoint: .}\nresolutions: [32]\n", 2,
                          r"key 'models\[0\]\.checkpoint': expected a weights file .*, got '\.', and .* is a folder"),
    "alias": ("models: &m [dit_s_2]\nresolutions: [32]\n", 1,
              r"YAML anchors and aliases \(&name, \*name\) are not accepted in suite files"),
    "metric option": ("models: [dit_s_2]\nresolutions: [32]\noptions:\n  fvcore: {max_gmac: 3}\n", 4,
                      r"key 'options.fvcore.max_gmac': expected one of the options of metric 'fvcore' \(max_gmacs, "
                      r"timeout\), got unknown key 'max_gmac'"),
    "option of an unmeasured metric": ("models: [dit_s_2]\nresolutions: [32]\noptions:\n  fvcore: {max_gmacs: 3}\n",
                                       4, r"key 'options.fvcore': expected a metric the suite measures \(params, "
                                       r"flops\), got 'fvcore'"),
    "per-resolution table": ("models: [dit_s_2]\nresolutions: [32, 64]\nbatch_sizes: {32: [4]}\n", 3,
                             r"key 'batch_sizes': expected an entry for every resolution \(32, 64\), got none "
                             r"for 64"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_each_bad_suite_gets_file_line_and_expected_form(kind, tmp_path):
    text, line, pattern = BAD[kind]
    path = tmp_path / "bad.yaml"
    errors = errors_of(text, path)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{path}:{line}: "), errors[0]
    assert re.search(pattern, errors[0]), errors[0]


def test_all_problems_of_a_file_are_reported_at_once(tmp_path):
    text = "models: [dit_s_2, nope]\nresolutions: [32, 0]\nwarmup: -1\ncolour: x\nmetrics: [flopz]\n"
    errors = errors_of(text, tmp_path / "many.yaml")
    lines = [int(e.split(":")[1]) for e in errors]
    assert lines == sorted(lines) and set(lines) == {1, 2, 3, 4, 5}, errors


def test_missing_suite_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="nothere.yaml: no such suite file"):
        load_suite(tmp_path / "nothere.yaml")


def test_defaults_come_from_the_schema(tmp_path):
    suite = parse_suite("models: [dit_s_2]\nresolutions: [32]\n", tmp_path / "minimal.yaml")
    schema = {f.name: f.default for f in Record(SuiteFile).fields}
    assert suite.name == "minimal"
    assert suite.out == "results/minimal"
    assert suite.device == schema["device"]
    s = suite.base
    assert s.metrics == tuple(schema["metrics"])
    assert (s.warmup, s.repeats, s.timeout) == (schema["warmup"], schema["repeats"], schema["timeout"])
    assert s.at(s.batch_sizes, 32) == tuple(schema["batch_sizes"])
    assert s.options == {"params": {"timeout": None}, "flops": {"timeout": None}}
    # each metric's options at their declared defaults; warmup/repeats from the suite's top-level keys
    opts = parse_suite("models: [dit_s_2]\nresolutions: [32]\nmetrics: [fvcore, latency]\nrepeats: 9\n"
                       "options:\n  latency: {warmup: 4}\n", tmp_path / "opts.yaml").base
    assert opts.options == {"fvcore": {"max_gmacs": 250, "timeout": None},
                         "latency": {"warmup": 4, "repeats": 9, "timeout": None}}
    assert suite.sections["cpu"] == suite.sections["cuda"] == s  # no sections: the same settings everywhere


SECTIONED = """\
name: sectioned
models: [dit_s_2, uvit_s_2, {name: dim_s_2, pad_layout: cyclic}]
resolutions: [32, 64]
batch_sizes: [1]
metrics: [params, flops, latency, train_step]
limits:
  flops: {resolutions: [32]}
cpu:
  metrics: [params, flops, latency]
  limits:
    latency: {max_gmacs_x_batch: 1}
cuda:
  batch_sizes: {32: [8, 16], 64: [4]}
  dtypes: [bfloat16]
"""


def test_expansion_on_cpu_sections_limits_and_budgets(tmp_path):
    suite = parse_suite(SECTIONED, tmp_path / "s.yaml")
    plan = expand(suite, device="cpu", out=tmp_path / "out")
    assert plan.device == "cpu" and plan.out == tmp_path / "out"
    keys = [pp.point.key for pp in plan.points]
    assert keys == ["dit_s_2|r32|b1|float32|cpu", "uvit_s_2|r32|b1|float32|cpu",
                    "dim_s_2|r32|b1|float32|cpu|pad=cyclic", "dit_s_2|r64|b1|float32|cpu",
                    "uvit_s_2|r64|b1|float32|cpu", "dim_s_2|r64|b1|float32|cpu|pad=cyclic"]
    by_key = {pp.point.key: pp for pp in plan.points}
    dit64 = by_key["dit_s_2|r64|b1|float32|cpu"]
    assert dit64.point.input_size == 8  # latent model: 64 px / 8
    assert by_key["uvit_s_2|r64|b1|float32|cpu"].point.input_size == 64  # pixel model
    assert dit64.run == ("params", "latency")
    assert dit64.budget == {"latency": 1.0}
    assert re.match(r"suite limit \(.*s.yaml:7\): resolutions 32 px only, this point has 64 px", dit64.skipped["flops"])
    assert re.match(r"not measured on cpu: the suite's cpu section \(.*s.yaml:9\) leaves it out",
                    dit64.skipped["train_step"])
    assert by_key["dit_s_2|r32|b1|float32|cpu"].run == ("params", "flops", "latency")


def test_cuda_section_per_resolution_batches(tmp_path):
    suite = parse_suite(SECTIONED, tmp_path / "s.yaml")
    cuda = suite.sections["cuda"]
    assert cuda.at(cuda.batch_sizes, 32) == (8, 16) and cuda.at(cuda.batch_sizes, 64) == (4,)
    assert cuda.metrics == suite.base.metrics and cuda.dtypes == {None: ("bfloat16",)}
    assert "latency" not in cuda.limits  # the CPU budget stays on the CPU


def test_cuda_without_gpu_is_a_user_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    suite = parse_suite(SECTIONED, tmp_path / "s.yaml")
    with pytest.raises(UserError, match="torch sees no CUDA GPU"):
        expand(suite, device="cuda")
    assert expand(suite, device="auto").device == "cpu"


def test_shipped_suites_are_valid_and_plan_as_documented():
    scaling = load_suite(ROOT / "suites" / "resolution_scaling.yaml")
    plan = expand(scaling, device="cpu", out="unused")
    assert len(plan.points) == 12
    assert {pp.point.model for pp in plan.points} == {"dim_h_2", "dit_xl_2", "uvit_h_2"}
    assert [pp.point.input_size for pp in plan.points[::3]] == [32, 64, 128, 192]
    fvcore_at = {pp.point.resolution for pp in plan.points if "fvcore" in pp.run}
    assert fvcore_at == {256}
    assert all("train_step" in pp.skipped for pp in plan.points)  # CPU: no training step, said per point
    assert all(pp.budget.get("latency") for pp in plan.points if "latency" in pp.run)
    cuda = scaling.sections["cuda"]
    points = sum(len(cuda.at(cuda.batch_sizes, r)) * len(cuda.at(cuda.dtypes, r)) for r in cuda.resolutions)
    assert points * len(scaling.models) == 12
    assert "train_step" in cuda.metrics and "latency" not in cuda.limits

    smoke = load_suite(ROOT / "suites" / "smoke.yaml")
    assert len(expand(smoke, device="cpu", out="unused").points) == 6


def test_device_sections_merge_options_key_by_key(tmp_path):
    """Each option, lowest first: the metric's default, the top-level key, the top level's options, the section's
    key, the section's options."""
    text = ("models: [dit_s_2]\nresolutions: [32]\nmetrics: [latency]\nrepeats: 7\n"
            "options:\n  latency: {warmup: 4, timeout: 30}\n"
            "cpu:\n  options:\n    latency: {repeats: 3}\n"
            "cuda:\n  warmup: 9\n")
    suite = parse_suite(text, tmp_path / "merge.yaml")
    assert suite.sections["cpu"].options["latency"] == {"warmup": 4, "repeats": 3, "timeout": 30.0}
    assert suite.sections["cuda"].options["latency"] == {"warmup": 9, "repeats": 7, "timeout": 30.0}
    assert suite.sections["cpu"].timeout_of("latency") == 30.0 and suite.sections["cuda"].timeout_of("latency") == 30
    assert suite.base.timeout_of("latency") == 30.0
    assert parse_suite("models: [dit_s_2]\nresolutions: [32]\n", tmp_path / "d.yaml").base.timeout_of("params") == 600


# ------------------------------------------------------------------------------ through the command line


@pytest.mark.slow
def test_an_alias_bomb_is_refused_at_once(tmp_path):
    bomb = ["models: [dit_s_2]", "resolutions: [32]", 'l0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    bomb += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]  # 9**10 nodes expanded
    suite = tmp_path / "bomb.yaml"
    suite.write_text("\n".join(bomb) + "\n")
    proc = run_cli("validate", str(suite), timeout=120)
    clean_failure(proc, f"{suite}:3: YAML anchors and aliases (&name, *name) are not accepted")


@pytest.mark.slow
def test_a_large_sweep_and_a_huge_resolution_are_announced(tmp_path):
    suite = tmp_path / "huge.yaml"
    suite.write_text("models: [dit_s_2, dit_s_8]\nresolutions: [" + ", ".join(str(64 * i) for i in range(1, 121))
                     + ", 1000000]\n")
    proc = run_cli("validate", str(suite))
    assert proc.returncode == 0, proc.stderr
    assert f"dimbench: {suite}:2: warning: on cpu this suite has 242 points" in proc.stderr
    assert "1000000 px gives dit_s_2 a 62500x62500 token grid (3,906,250,000 tokens per image)" in proc.stderr
