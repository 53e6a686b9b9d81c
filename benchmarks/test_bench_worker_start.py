"""How long a worker process takes to start (pytest-benchmark; not part of CI).

    pytest benchmarks/test_bench_worker_start.py --benchmark-only

Measured: from asking dimbench.processes for a worker to the worker's first event (its first metric starting),
for each start method. The fork server's one-time start (its imports of torch, the models and the metrics) is
paid before the timed rounds and reported apart, as ``first_worker_s`` in ``extra_info``: in a run it overlaps the
runner's own set-up. CPU wall clock on the machine at hand; never asserted.
"""

from __future__ import annotations

import time

import pytest
from nothing_metric import NOTHING, POINT

from dimbench import processes
from dimbench.worker import Job

ROUNDS = 8


def _start_and_wait(ctx, log) -> None:
    worker = processes.Worker(ctx, Job(POINT, [NOTHING], {"nothing": {}}), log, {})
    while not any(e.get("event") == "start" for e in worker.events(0.001)):
        assert not worker.ended, log.read_text()
    worker.kill()


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_worker_start(benchmark, method, tmp_path):
    t0 = time.perf_counter()
    ctx = processes.context(method)
    _start_and_wait(ctx, tmp_path / "w.log")  # the fork server's imports happen here, once
    first = time.perf_counter() - t0
    benchmark.pedantic(_start_and_wait, args=(ctx, tmp_path / "w.log"), rounds=ROUNDS, iterations=1)
    benchmark.extra_info.update(method=method, first_worker_s=first,
                                measured="processes.Worker(...) until the worker's first 'start' event")
