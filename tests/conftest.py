"""Shared helpers for the suite, runner and CLI tests: run the real CLI in a subprocess, write small suites."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dimbench import results

ROOT = Path(__file__).resolve().parent.parent


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for a CLI subprocess.

    One OpenMP thread: these tests check behaviour, not speed, and on a busy 2-core machine two spinning OpenMP
    threads per process slow small models down tenfold. Any fault injection from the caller's shell is dropped.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("DIMBENCH_INJECT_FAULT", "DIMBENCH_WORKER_START")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", COLUMNS="200")
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 180, cwd: Path | None = None):
    """``python -m dimbench.cli ARGS`` -> CompletedProcess (text, stdout and stderr captured)."""
    return subprocess.run(
        [sys.executable, "-m", "dimbench.cli", *args], capture_output=True, text=True, timeout=timeout,
        env=env or cli_env(), cwd=cwd or ROOT,
    )


def marked_processes(mark: str) -> list[int]:
    """Pids of live processes whose environment holds ``mark`` (a runner's workers inherit it): Linux /proc."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if mark.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def unique_rows(out: Path) -> list[dict]:
    """The rows of a run folder, checked to hold no identity (point, metric, step) twice."""
    from dimbench.results import row_identity

    rows = read_jsonl(out / "results.jsonl")
    identities = [row_identity(r) for r in rows]
    assert len(identities) == len(set(identities)), "a row was written twice"
    return rows


#: Three small models at one size, two cheap metrics (meta-device counts): a worker's whole job takes about
#: a second, so runner behaviour (faults, timeouts, resume) can be tested end to end quickly.
TINY_SUITE = """\
name: tiny
models: [dit_s_2, uvit_s_2, dim_s_2]
resolutions: [32]
metrics: [params, flops]
device: cpu
timeout: {timeout}
"""


#: The tiny suite with two models, and the keys of its two points.
TWO_MODELS = TINY_SUITE.replace("[dit_s_2, uvit_s_2, dim_s_2]", "[dit_s_2, uvit_s_2]")
DIT = "dit_s_2|r32|b1|float32|cpu"
UVIT = "uvit_s_2|r32|b1|float32|cpu"


def clean_failure(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The one-line message of a refused command (exit 2, no traceback), checked to contain ``needles``."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("dimbench: error: "), err
    for needle in needles:
        assert needle in err, err
    return err


def start_cli(args: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dimbench.cli", *args], env=cli_env(**env), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

def wait_for_rows(out: Path, proc: subprocess.Popen, key: str, metrics: set[str]) -> None:
    """Wait for the event (these rows on disk), with a generous safety net, never a bet on a duration."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        rows = results.read_rows(out) if (out / "results.jsonl").exists() else []
        if {r["metric"] for r in rows if r["point_key"] == key} >= metrics:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    pytest.fail(f"the rows {metrics} of {key} never appeared")


@pytest.fixture
def write_suite(tmp_path: Path):
    """write_suite(text, name="suite.yaml") -> path of a suite file in the test's tmp folder."""

    def write(text: str, name: str = "suite.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture
def one_thread():
    """One intra-op thread for the test, restored after it.

    The models in these tests are tiny: one OpenMP thread is as fast on an idle machine, and on a busy 2-core
    one the barriers of two spinning threads make small ops take milliseconds each. No result depends on it.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
