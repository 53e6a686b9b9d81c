"""Shared helpers for the suite, runner and CLI tests: run the real CLI in a subprocess, write small suites."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

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
