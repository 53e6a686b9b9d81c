"""The run folder, through the real command line: one folder holds one suite's run at a time (a busy folder,
another suite or other settings are refused unless asked), and what goes wrong with its files (a file in its
place, read-only, a full disk, a damaged record) gets one clear message naming the file, a non-zero exit, no
traceback, and no lost or duplicated row."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import (
    DIT,
    ROOT,
    TWO_MODELS,
    UVIT,
    clean_failure,
    cli_env,
    read_jsonl,
    run_cli,
    start_cli,
    unique_rows,
    wait_for_rows,
)
from dimbench import results

# --------------------------------------------------------------------------------------- one folder, one run


@pytest.mark.slow
def test_a_second_run_into_a_busy_folder_is_refused(tmp_path, write_suite):
    suite = write_suite(TWO_MODELS.format(timeout=600))
    out = tmp_path / "out"
    first = start_cli(["run", str(suite), "--out", str(out), "--no-report"], DIMBENCH_INJECT_FAULT="uvit_s_2=hang")
    try:
        wait_for_rows(out, first, DIT, {"params", "gmacs"})
        second = run_cli("run", str(suite), "--out", str(out), "--no-report")
        clean_failure(second, f"{out}: another run is writing into this folder (pid {first.pid} on ",
                      "`dimbench run ", "give this run another --out")
    finally:
        first.kill()
        first.wait()
    unique_rows(out)


TIMED = TWO_MODELS.format(timeout=600).replace("metrics: [params, flops]", "metrics: [params, latency]") + \
    "warmup: 0\nrepeats: 1\n"


@pytest.mark.slow
def test_another_suite_or_other_settings_are_refused_unless_asked(tmp_path, write_suite):
    out = tmp_path / "out"
    assert run_cli("run", str(write_suite(TIMED)), "--out", str(out), "--no-report").returncode == 0
    before = unique_rows(out)

    other = write_suite(TIMED.replace("name: tiny", "name: other"), "other.yaml")
    clean_failure(run_cli("run", str(other), "--out", str(out), "--no-report"),
                  "it holds results of suite 'tiny'", "this run is suite 'other'", "--fresh", "--allow-mixed")

    slower = write_suite(TIMED.replace("repeats: 1", "repeats: 3"), "slower.yaml")
    clean_failure(run_cli("run", str(slower), "--out", str(out), "--no-report"),
                  "its cpu rows were measured with other settings: latency.repeats: 1 there, 3 now")
    assert read_jsonl(out / "results.jsonl") == before  # nothing written by the refused runs

    mixed = run_cli("run", str(slower), "--out", str(out), "--no-report", "--allow-mixed")
    assert mixed.returncode == 0, mixed.stderr
    assert unique_rows(out) == before  # every point was complete: nothing measured again
    env = json.loads((out / "environment.json").read_text())
    assert env["runs"][-1]["settings"]["latency"] == {"warmup": 0, "repeats": 3}

    # a metric added to the suite is no conflict: it is measured, the rest is kept
    more = write_suite(TIMED.replace("[params, latency]", "[params, latency, flops]"), "more.yaml")
    assert run_cli("run", str(more), "--out", str(out), "--no-report").returncode == 0
    rows = unique_rows(out)
    assert rows[: len(before)] == before and {r["metric"] for r in rows[len(before):]} == {"gmacs", "gflops"}


@pytest.mark.slow
def test_a_metric_skipped_by_the_suite_is_measured_once_the_suite_asks_for_it(tmp_path, write_suite):
    out = tmp_path / "out"
    text = TWO_MODELS.format(timeout=600) + "cpu:\n  metrics: [params]\n"
    assert run_cli("run", str(write_suite(text)), "--out", str(out), "--no-report").returncode == 0
    latest = {(r["point_key"], r["metric"]): r for r in results.latest(results.read_rows(out))}
    assert latest[(DIT, "gmacs")]["status"] == "skipped"

    proc = run_cli("run", str(write_suite(text.replace("[params]", "[params, flops]"))), "--out", str(out),
                   "--no-report")
    assert proc.returncode == 0, proc.stderr
    latest = {(r["point_key"], r["metric"]): r for r in results.latest(results.read_rows(out))}
    assert latest[(DIT, "gmacs")]["status"] == latest[(UVIT, "gflops")]["status"] == "ok"
    params = [r for r in read_jsonl(out / "results.jsonl") if r["metric"] == "params"]
    assert len(params) == 2  # one per point: what was measured is not measured again


@pytest.mark.slow
def test_a_folder_whose_first_run_wrote_nothing_takes_the_next_suite(tmp_path, write_suite):
    out = tmp_path / "out"
    first = start_cli(["run", str(write_suite(TWO_MODELS.format(timeout=600))), "--out", str(out), "--no-report"],
                   DIMBENCH_INJECT_FAULT="#params=hang")
    assert first.stdout.readline().startswith("Suite tiny")  # the run began (its record is written), no row yet
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=120)
    assert not (out / "results.jsonl").exists() or not read_jsonl(out / "results.jsonl")

    other = write_suite(TWO_MODELS.format(timeout=600).replace("name: tiny", "name: other"), "other.yaml")
    for _ in range(2):  # the run, then its resume
        proc = run_cli("run", str(other), "--out", str(out), "--no-report")
        assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "environment.json").read_text())["suite"] == "other"
    assert len(unique_rows(out)) == 8


# --------------------------------------------------------------------------------------------- files and disks


@pytest.mark.slow
def test_out_naming_a_file_is_refused(tmp_path, write_suite):
    target = tmp_path / "taken"
    target.write_text("not a folder")
    clean_failure(run_cli("run", str(write_suite(TWO_MODELS.format(timeout=60))), "--out", str(target)),
                  f"{target}: exists and is not a folder")


def _read_only(path: Path) -> None:
    """Make a folder read-only even for root (who ignores permission bits): the immutable attribute."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode != 0:
        pytest.skip("running as root without a working chattr: cannot make a read-only folder")


def _writable(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], check=False)
    path.chmod(0o755)


@pytest.mark.slow
def test_a_read_only_output_folder_is_refused(tmp_path, write_suite):
    out = tmp_path / "ro"
    out.mkdir()
    _read_only(out)
    try:
        proc = run_cli("run", str(write_suite(TWO_MODELS.format(timeout=60))), "--out", str(out), "--no-report")
    finally:
        _writable(out)
    clean_failure(proc, str(out), "cannot use as the run's output folder")
    assert list(out.iterdir()) == []


def _file_size_limit(limit: int):
    """Make writes past ``limit`` bytes per file fail (EFBIG), as a full disk makes them fail (ENOSPC)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.slow
def test_a_full_disk_loses_no_complete_row_and_the_next_run_completes_the_rest(tmp_path, write_suite):
    suite = write_suite(TWO_MODELS.format(timeout=600))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "dimbench.cli", "run", str(suite), "--out", str(out), "--no-report"]
    # 3.5 kB a file: environment.json (2.5 kB) fits, the results file (8 rows of ~0.75 kB) fills up on the way
    full = subprocess.run(args, env=cli_env(), cwd=ROOT, capture_output=True, text=True, timeout=300,
                          preexec_fn=_file_size_limit(3500))
    clean_failure(full, f"{out / 'results.jsonl'}: cannot append result rows (File too large)",
                  "every complete row written before is kept", "run the same command again")
    data = (out / "results.jsonl").read_bytes()
    assert data.endswith(b"\n") and 0 < len(read_jsonl(out / "results.jsonl")) < 8  # only complete rows
    assert not list(out.glob("*.tmp"))
    env = json.loads((out / "environment.json").read_text())
    assert env["runs"][0]["rows_written"] == len(read_jsonl(out / "results.jsonl"))

    resumed = run_cli("run", str(suite), "--out", str(out), "--no-report")
    assert resumed.returncode == 0, resumed.stderr
    rows = unique_rows(out)
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows)


@pytest.mark.slow
def test_a_disk_full_before_the_environment_record_leaves_no_temporary_file(tmp_path, write_suite):
    suite = write_suite(TWO_MODELS.format(timeout=600))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "dimbench.cli", "run", str(suite), "--out", str(out)],
                          env=cli_env(), cwd=ROOT, capture_output=True, text=True, timeout=300,
                          preexec_fn=_file_size_limit(500))
    clean_failure(proc, f"{out / 'environment.json'}: cannot write (File too large)")
    assert not (out / "environment.json").exists() and not (out / "environment.json.tmp").exists()


@pytest.mark.slow
@pytest.mark.parametrize("content, expected", [("{not json", "not readable as JSON"),
                                               ("[1, 2]", "expected a JSON object")])
def test_a_damaged_environment_record_is_named(tmp_path, write_suite, content, expected):
    out = tmp_path / "out"
    out.mkdir()
    (out / "environment.json").write_text(content)
    (out / "results.jsonl").write_text("")
    proc = run_cli("run", str(write_suite(TWO_MODELS.format(timeout=60))), "--out", str(out), "--no-report")
    clean_failure(proc, f"{out / 'environment.json'}: {expected}")


@pytest.mark.slow
def test_a_damaged_middle_line_is_a_message_not_a_traceback(tmp_path, write_suite):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl").write_text('{"point_key": "a", "metric": "params"}\n{oops\n{"point_key": "b"}\n')
    proc = run_cli("run", str(write_suite(TWO_MODELS.format(timeout=60))), "--out", str(out), "--no-report")
    clean_failure(proc, f"{out / 'results.jsonl'}:2: not a result row", "--fresh")
