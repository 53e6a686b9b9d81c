"""Worker processes: start one per point, read its events, kill it. The plumbing under :mod:`dimbench.runner`.

Workers are started with the standard library's ``multiprocessing`` (``DIMBENCH_WORKER_START`` overrides):

- ``forkserver`` (the CPU's default): a server process imports torch, the models and the metrics once
  (``set_forkserver_preload``) and forks a child per worker. After the server's one-time start (about 2 s on a
  2-core machine, overlapping the runner's own set-up) a worker starts in milliseconds, which is what keeps a CPU
  sweep of a dozen points fast.
- ``spawn`` (always used for CUDA): a fresh interpreter per worker (2-7 s of imports), so that no CUDA state can
  leak from a parent into the measured process.

Every worker runs in its own session (a terminal's Ctrl-C reaches only the runner, which decides), writes its
stdout and stderr to the point's log, takes the runner's environment as it was when the job started (a forkserver
child would otherwise see the server's), and exits by itself when the runner goes away: it watches its pipe to
the runner, which closes when the runner dies, however it dies. Its events (see :mod:`dimbench.worker`) arrive on
that pipe.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import select
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from dimbench.console import UserError

START_ENV = "DIMBENCH_WORKER_START"
START_METHODS = ("forkserver", "spawn")
#: Imported once by the fork server, inherited by every worker it forks.
PRELOAD = ["torch", "models", "dimbench.metrics", "dimbench.worker", "dimbench.processes"]
ORPHAN_EXIT = 70  # a worker whose runner went away


def start_method(device: str) -> str:
    """How workers start for a device: forkserver on the CPU, spawn on CUDA, unless the environment says."""
    forced = os.environ.get(START_ENV)
    if forced:
        if forced not in START_METHODS:
            raise UserError(f"{START_ENV}={forced!r}: expected one of {', '.join(START_METHODS)}")
        return forced
    # CUDA must never be initialised in a parent that forks; the CPU gains a lot from preloaded imports.
    return "forkserver" if device == "cpu" and "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def context(method: str):
    """The multiprocessing context for a start method; the fork server is started early (its imports overlap the
    caller's own work) and kept for the life of this process."""
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        from multiprocessing import forkserver

        ctx.set_forkserver_preload(PRELOAD)
        forkserver.ensure_running()
    return ctx


def start_early(device: str | None) -> None:
    """Start the fork server now when the run may use it (not on a CUDA run): its imports then overlap the
    caller's own (suite validation imports torch and the models too) instead of delaying the first worker."""
    if (device or "auto").startswith("cuda") or os.environ.get(START_ENV, "forkserver") != "forkserver":
        return
    if "forkserver" in multiprocessing.get_all_start_methods():
        context("forkserver")


class Slot:
    """Where one worker at a time runs: the CPU, or one GPU (``env`` pins it with CUDA_VISIBLE_DEVICES)."""

    def __init__(self, name: str, env: dict[str, str]):
        self.name = name
        self.env = env


def slots(device: str) -> list[Slot]:
    """One slot, or with device ``cuda`` and several GPUs, one slot per GPU."""
    if device == "cuda":
        import torch

        count = torch.cuda.device_count()
        if count > 1:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            ids = [v.strip() for v in visible.split(",")] if visible else [str(i) for i in range(count)]
            return [Slot(f"cuda{i}", {"CUDA_VISIBLE_DEVICES": gpu}) for i, gpu in enumerate(ids)]
    return [Slot(device, {})]


_STARTING = threading.Lock()


@contextlib.contextmanager
def _without_main_module():
    """Start a worker without the caller's ``__main__``: multiprocessing would run the caller's script again in
    every worker (a script without a ``__main__`` guard would start a run of its own there; code read from stdin
    cannot be run at all). A worker needs only dimbench and the modules its job's declarations come from."""
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
    with _STARTING:
        try:
            if main is not None:
                main.__dict__.pop("__file__", None)
                main.__spec__ = None
            yield
        finally:
            if main is not None:
                main.__dict__.pop("__spec__", None)
                main.__dict__.update(saved)


class Worker:
    """One worker process measuring one job (:class:`dimbench.worker.Job`)."""

    def __init__(self, ctx, job: Any, log: Path, env: dict[str, str]):
        ours, theirs = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker_main, args=(job, theirs, str(log), env), name="dimbench-worker")
        with _without_main_module():
            self.process.start()
        theirs.close()  # only the worker holds its end now: its death is our end-of-file
        self._conn = ours
        self.ended = False  # the pipe reached its end: the worker exited, or is about to

    @property
    def pid(self) -> int:
        return self.process.pid

    def events(self, timeout: float) -> list[dict[str, Any]]:
        """The events that have arrived, waiting up to ``timeout`` seconds for the first."""
        out: list[dict[str, Any]] = []
        if self.ended:
            return out
        try:
            ready = self._conn.poll(timeout)
            while ready:
                out.append(self._conn.recv())
                ready = self._conn.poll(0)
        except (EOFError, OSError):
            self.ended = True  # everything sent before the end has been received
        except Exception:  # noqa: BLE001 - a message cut off by a kill: what came before it stands
            self.ended = True
        return out

    def exitcode(self, wait: float = 0) -> int | None:
        """The exit status (negative: killed by that signal), or None while it runs."""
        self.process.join(wait)
        return self.process.exitcode

    def kill(self) -> None:
        """SIGKILL the worker and its process group, and reap it."""
        if self.process.exitcode is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except OSError:  # not (yet) a group leader
                self.process.kill()
        self.process.join(30)
        self.ended = True
        self._conn.close()


# --------------------------------------------------------------------------------------- in the worker process
def _worker_main(job: Any, conn, log: str, env: dict[str, str]) -> None:
    os.setsid()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.clear()
    os.environ.update(job.env)
    os.environ.update(env)
    _watch_runner(conn)
    _match_threads()
    if job.model is not None:
        import models.registry

        models.registry.adopt(*job.model)
    from dimbench.worker import run_job

    status = run_job(job, conn.send)
    conn.close()
    if status:
        raise SystemExit(status)


def _watch_runner(conn) -> None:
    """Exit when the pipe to the runner becomes readable: the runner never writes, so that is its end."""

    def watch() -> None:
        select.select([conn.fileno()], [], [])
        os._exit(ORPHAN_EXIT)

    threading.Thread(target=watch, daemon=True, name="dimbench-runner-watch").start()


def _match_threads() -> None:
    """A fork server's torch chose its thread count from the server's environment: follow the runner's."""
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        import torch

        torch.set_num_threads(int(threads))
