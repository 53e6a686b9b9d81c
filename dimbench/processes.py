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
child would otherwise see the server's), and exits by itself when the runner goes away: it watches a life line
that closes when the runner dies, however it dies. Its events (see :mod:`dimbench.worker`) arrive on a pipe;
each batch of rows waits for the runner's word that it is on disk.

This module does not import torch, the models or the metrics when it loads: ``dimbench run`` imports it to start
the fork server before anything imports torch, so that the server's imports overlap the runner's own. The few
functions that need torch import it themselves.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import pickle
import select
import signal
import sys
import threading
import types
from multiprocessing import forkserver
from pathlib import Path
from typing import Any

from dimbench.errors import UserError
from dimbench.plugins import load_plugins

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
        ctx.set_forkserver_preload(PRELOAD)
        forkserver.ensure_running()
    return ctx


def start_early(device: str | None) -> None:
    """Start the fork server now when the run will likely use it: its imports then overlap the caller's own (suite
    validation imports torch and the models too) instead of delaying the first worker. Not for a CUDA run, nor
    when the device is left to the suite or "auto" on a machine with an NVIDIA device (a guess, before torch is
    imported: a wrong one costs a second of CPU, or a delayed first worker)."""
    requested = device or "auto"
    if requested.startswith("cuda") or os.environ.get(START_ENV, "forkserver") != "forkserver":
        return
    if requested == "auto" and os.path.exists("/dev/nvidiactl"):
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
        import torch  # not when this module loads (see the module docstring)

        count = torch.cuda.device_count()
        if count > 1:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            ids = [v.strip() for v in visible.split(",")] if visible else [str(i) for i in range(count)]
            return [Slot(f"cuda{i}", {"CUDA_VISIBLE_DEVICES": gpu}) for i, gpu in enumerate(ids)]
    return [Slot(device, {})]


_STARTING = threading.Lock()


@contextlib.contextmanager
def _starting(env: dict[str, str]):
    """Start a worker without the caller's ``__main__`` and with ``env`` in force.

    multiprocessing would run the caller's script again in every worker (a script without a ``__main__`` guard
    would start a run of its own there; code read from stdin cannot be run at all); a worker needs only dimbench
    and the modules its job's declarations come from. A spawned interpreter inherits the environment at its start,
    so the slot's variables (CUDA_VISIBLE_DEVICES) are in force before it imports anything.
    """
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
    with _STARTING:
        before = {k: os.environ.get(k) for k in env}
        try:
            os.environ.update(env)
            if main is not None:
                main.__dict__.pop("__file__", None)
                main.__spec__ = None
            yield
        finally:
            if main is not None:
                main.__dict__.pop("__spec__", None)
                main.__dict__.update(saved)
            for k, v in before.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


class _MainPickler(pickle.Pickler):
    """Pickles a job, refusing functions and classes of ``__main__``: a worker cannot import them."""

    def reducer_override(self, obj):
        if isinstance(obj, (type, types.FunctionType)) and getattr(obj, "__module__", None) == "__main__":
            raise UserError(f"{obj.__qualname__} is defined in the script being run (__main__), which worker "
                            "processes do not import: define metrics and models in an importable module")
        return NotImplemented


def pack(job: Any) -> bytes:
    """The job as bytes; it is unpickled in the worker after its output goes to the point's log, so that a
    failure to import what the job refers to is in the log, not on the user's terminal."""
    buffer = io.BytesIO()
    _MainPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(job)
    return buffer.getvalue()


class Worker:
    """One worker process measuring one job (:class:`dimbench.worker.Job`).

    Two pipes join it to the runner: ``events`` (the worker's events up; an acknowledgement down for each batch of
    rows once they are on disk) and a life line the runner never writes to, whose end tells the worker that the
    runner is gone.
    """

    def __init__(self, ctx, job: Any, log: Path, env: dict[str, str]):
        data = pack(job)
        ours, theirs = ctx.Pipe(duplex=True)
        life_r, life_w = ctx.Pipe(duplex=False)
        self.process = ctx.Process(target=_worker_main, args=(data, theirs, life_r, str(log), env),
                                   name="dimbench-worker")
        with _starting(env):
            self.process.start()
        theirs.close()  # only the worker holds its ends now: its death is our end-of-file
        life_r.close()
        self._conn, self._life = ours, life_w
        self.ended = False  # the events pipe reached its end: the worker exited, or is about to

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

    def acknowledge(self, written: bool) -> None:
        """Tell the worker its last rows are on disk (or could not be written); it waits for this."""
        try:
            self._conn.send({"event": "ack", "written": written})
        except OSError:  # the worker is gone; what it sent was read
            pass

    def exitcode(self, wait: float = 0) -> int | None:
        """The exit status (negative: killed by that signal), or None while it runs."""
        self.process.join(wait)
        return self.process.exitcode

    def kill(self) -> list[dict[str, Any]]:
        """SIGKILL the worker and its process group, reap it, and return the events it had sent but were not read
        yet (rows among them are still to be written)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except OSError:  # not (yet) a group leader, or gone
            try:
                os.kill(self.process.pid, signal.SIGKILL)
            except OSError:
                pass
        self.process.join(30)
        late = []
        while not self.ended:
            late += self.events(0)
        self.close()
        return late

    def close(self) -> None:
        self.ended = True
        self._conn.close()
        self._life.close()


# --------------------------------------------------------------------------------------- in the worker process
def _worker_main(data: bytes, conn, life, log: str, env: dict[str, str]) -> None:
    os.setsid()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    _watch_runner(life)
    job = pickle.loads(data)
    os.environ.clear()
    os.environ.update(job.env)
    os.environ.update(env)
    _match_threads()
    _join_process_group(job)
    if job.plugins:
        load_plugins(job.plugins)
    if job.model is not None:  # the worker's own imports, after its environment is in place
        import models.registry

        models.registry.adopt(*job.model)
    from dimbench.worker import run_job  # not when this module loads (see the module docstring)

    run_job(job, _Channel(conn))
    conn.close()


class _Channel:
    """The worker's side of the events pipe: ``send(event)``; a batch of rows waits until the runner says it is
    on disk, so a long task never checkpoints past rows that a killed runner did not write."""

    def __init__(self, conn):
        self._conn = conn

    def __call__(self, event: dict[str, Any]) -> None:
        self._conn.send(event)
        if event.get("event") == "rows":
            reply = self._conn.recv()
            if not reply.get("written"):
                raise RowsNotWritten("the runner could not write these rows (see its message); stopping")


class RowsNotWritten(RuntimeError):
    """The runner could not write a batch of rows (a full disk): the task must not go on as if it had."""


def _watch_runner(life) -> None:
    """Exit when the life line ends: the runner never writes to it, so readability means the runner is gone."""

    def watch() -> None:
        select.select([life.fileno()], [], [])
        os._exit(ORPHAN_EXIT)

    threading.Thread(target=watch, daemon=True, name="dimbench-runner-watch").start()


def _join_process_group(job) -> None:
    """A cluster task across nodes (dimbench.cluster.task) runs each point on every rank: the worker joins the
    task's torch.distributed group, so that a long task (fid, train) shards its work by rank as under torchrun."""
    if os.environ.get("DIMBENCH_DISTRIBUTED") == "1":
        # processes.py stays free of torch at import (the runner starts workers before torch loads)
        from dimbench.training.distributed import init_from_env

        init_from_env("cuda" if str(job.point.device).startswith("cuda") else "cpu")
        # see above: only a worker that joins a process group pays for torch.distributed
        import torch.distributed as dist

        print(f"joined the task's process group: rank {dist.get_rank()} of {dist.get_world_size()} "
              f"({dist.get_backend()}, {os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')})", flush=True)


def _match_threads() -> None:
    """A fork server's torch chose its thread count from the server's environment: follow the runner's."""
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        import torch  # not when this module loads (see the module docstring)

        torch.set_num_threads(int(threads))
