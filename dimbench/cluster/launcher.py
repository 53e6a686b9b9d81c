"""``dimbench run SUITE --launcher slurm|submitit-local``: the suite's incomplete points as one array job (submitit),
followed until its tasks end, their shards merged into results.jsonl as rows arrive.

The submitting runner is a :class:`~dimbench.runner.Runner` whose workers are array tasks: it plans against what
is on disk exactly as a local run (so a rerun of the same command after a cancelled, pre-empted or timed-out
array resubmits only the points whose rows are not all there), holds the folder (flock) while it follows the
array, and is results.jsonl's only writer. Each task runs :class:`dimbench.cluster.task.PointTask` on its points.

Ctrl-C stops following, not the array: a SLURM array runs on (``dimbench status OUT`` shows it, ``dimbench
collect OUT`` merges what it wrote, ``scancel JOB`` stops it); a submitit-local array shares the terminal's
Ctrl-C and stops with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import sys
import time
from typing import Any

from dimbench.cluster.collect import failed_task_rows, task_states
from dimbench.cluster.merge import ShardReader, merge, repair_ended
from dimbench.cluster.options import SlurmSettings, minutes
from dimbench.cluster.records import ClusterFolder, Submission, task_ended
from dimbench.cluster.scheduler import missing_slurm_commands, scheduler_for
from dimbench.cluster.task import PointTask, TaskSpec
from dimbench.environment import now_iso
from dimbench.errors import UserError
from dimbench.plugins import loaded_plugins
from dimbench.progress import progress_bar
from dimbench.runner import Runner

MERGE_EVERY_S = 0.5  # shards are read this often (cheap: new bytes only)
ASK_EVERY_S = 2.0  # the scheduler is asked this often about tasks that have not recorded their end


def check_launcher(launcher: str) -> None:
    """One clear line when the launcher cannot be used on this machine (exit 2), before anything is written."""
    try:  # a dependency, but an environment without it should get one line, not a traceback
        import submitit  # noqa: F401
    except ImportError:
        raise UserError(f"--launcher {launcher}: submitit is not installed (pip install submitit)") from None
    if launcher == "slurm":
        missing = missing_slurm_commands()
        if missing:
            raise UserError(f"--launcher slurm: {', '.join(missing)} not found on PATH: SLURM's commands are needed on "
                            "the submitting machine (a login node); without SLURM use --launcher submitit-local")


def task_groups(jobs: list, launcher: str, settings: SlurmSettings) -> list[list]:
    """Consecutive points in plan order, ``points_per_task`` to a task. submitit's local executor starts every task
    at once, so there the tasks are also capped at ``array_parallelism`` (default: the CPU count)."""
    per_task = settings.points_per_task
    if launcher == "submitit-local":
        parallel = settings.array_parallelism or os.cpu_count() or 1
        per_task = max(per_task, -(-len(jobs) // parallel))
    return [jobs[i:i + per_task] for i in range(0, len(jobs), per_task)]


def make_executor(launcher: str, folder, settings: SlurmSettings, name: str):
    import submitit  # checked by check_launcher (one line when missing), so imported where it is used

    ranks_per_node = settings.gpus_per_node  # one process per GPU, each a rank of the task's process group
    if launcher == "slurm":
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        params: dict[str, Any] = {
            "name": name, "slurm_time": settings.time, "slurm_partition": settings.partition,
            "slurm_account": settings.account, "slurm_qos": settings.qos, "cpus_per_task": settings.cpus_per_task,
            "slurm_gpus_per_task": settings.gpus_per_task if not ranks_per_node else None, "mem_gb": settings.mem_gb,
            "slurm_array_parallelism": settings.array_parallelism, "slurm_setup": list(settings.setup or []) or None,
            "slurm_additional_parameters": dict(settings.sbatch) or None,
        }
        if ranks_per_node:
            params.update(nodes=settings.nodes, tasks_per_node=ranks_per_node, gpus_per_node=ranks_per_node)
    else:
        executor = submitit.AutoExecutor(folder=folder, cluster="local")
        params = {"name": name, "timeout_min": minutes(settings.time),
                  "local_setup": list(settings.setup or []) or None}
        if ranks_per_node:
            params.update(tasks_per_node=ranks_per_node, gpus_per_node=ranks_per_node)
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor


@contextlib.contextmanager
def _own_stdio(launcher: str, log):
    """submitit's local executor starts each task's controller with this process's stdin, stdout and stderr: a
    controller outliving this command (--no-wait) would hold the caller's pipes open (a `| tee`, a test's capture
    would wait for the tasks). They get a log file and /dev/null instead, for the moment of the submission."""
    if launcher != "submitit-local":
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(fd) for fd in (0, 1, 2)]
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        yield
    finally:
        for fd, copy in zip((0, 1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(null)
        os.close(out)


class ClusterRunner(Runner):
    """A Runner whose points run as the tasks of one array job (see the module docstring)."""

    def __init__(self, plan, *, launcher: str, settings: SlurmSettings, wait: bool = True, **kwargs):
        super().__init__(plan, **kwargs)
        self.launcher = launcher
        self.settings = settings
        self.wait = wait
        self.submission: Submission | None = None
        self.incomplete: dict[str, str] = {}  # point key -> why it was not measured (this run)
        self.submitted_jobs: list = []

    # --- no local workers
    def _workers(self, jobs):
        return self.launcher, None, []

    def _announce(self, jobs, complete: int, nslots: int, method: str) -> None:
        total = len(self.plan.points)
        line = (f"Suite [bold]{self.plan.suite.name}[/] on {self.plan.device} through {self.launcher}: {total} points, "
                f"{len(jobs)} to measure, results -> {self.folder.results}")
        if complete:
            line += f"; {complete} already complete (resumed)"
        self.console.print(line)

    # --- submit and follow
    def _execute(self, jobs, slots, ctx) -> None:
        records = ClusterFolder(self.out)
        groups = task_groups(jobs, self.launcher, self.settings)
        submission = records.new_submission(self.launcher, self.retry_errors, " ".join(self.argv), now_iso())
        ranks = self.settings.nodes * (self.settings.gpus_per_node or 1)
        specs = [TaskSpec(out=str(self.out.resolve()), submission=submission.name, index=i, token=submission.token,
                          plan=dataclasses.replace(self.plan, points=tuple(j.plan for j in group)),
                          retry_errors=self.retry_errors, plugins=loaded_plugins(), argv=self.argv, ranks=ranks)
                     for i, group in enumerate(groups)]
        submission.tasks = [{"index": i, "job_id": None, "points": [self._point_entry(j) for j in group]}
                            for i, group in enumerate(groups)]
        records.save(submission)  # before submitting: each task checks its token against this file
        executor = make_executor(self.launcher, records.submitit_dir, self.settings,
                                 f"dimbench-{self.plan.suite.name}")
        try:
            with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()), \
                    _own_stdio(self.launcher, records.submitit_dir / "controllers.log"):
                submitted = executor.map_array(PointTask(), specs)  # (submitit prints sbatch's refusal itself)
        except Exception as exc:  # noqa: BLE001 - sbatch's refusal (a partition that does not exist, ...)
            (records.submissions_dir / f"{submission.name}.json").unlink(missing_ok=True)
            message = str(exc).strip() or type(exc).__name__
            raise UserError(f"{self.launcher} refused the array of {len(specs)} tasks:\n{message}") from None
        self.submitted_jobs = submitted
        for task, job in zip(submission.tasks, submitted, strict=True):
            task["job_id"] = str(job.job_id)
        submission.job_ids = sorted({str(j.job_id).split("_")[0] for j in submitted})
        records.save(submission)
        self.submission = submission
        self.console.print(f"Submitted {'array job' if self.launcher == 'slurm' else 'local jobs'} "
                           f"{', '.join(submission.job_ids)}: {len(specs)} task(s) of up to "
                           f"{max(len(g) for g in groups)} point(s) (submission {submission.name}; logs: "
                           f"{records.submitit_dir})")
        if not self.wait:
            for job in jobs:
                self.incomplete[job.plan.point.key] = "submitted; not followed (--no-wait)"
            return
        self._follow_array(records, submission, jobs)

    def _point_entry(self, job) -> dict[str, Any]:
        point = job.plan.point
        return {"key": point.key, "point": point.to_dict(),
                "metrics": {m: list(self.metrics[m].final_rows) for m in job.metrics}}

    def _follow_array(self, records: ClusterFolder, submission: Submission, jobs) -> None:
        reader = ShardReader([r for rows in self.disk.values() for r in rows])
        nodes = self._record.setdefault("nodes", {})
        todo = {j.plan.point.key: j for j in jobs}
        t0 = time.monotonic()
        asked, states = 0.0, {}
        with progress_bar(self.console, total=len(self.plan.points),
                          completed=len(self.plan.points) - len(jobs)) as progress:

            def merged() -> None:
                touched = merge(records, [submission], reader, self._merge_rows, nodes)
                if touched:
                    self.folder.write_environment(self._record)
                for key in touched:
                    job = todo.get(key)
                    if job is not None and self._complete(job):
                        del todo[key]
                        rows = [r for r in self.written if r["point_key"] == key]
                        progress.finished(job.plan.point, rows, time.monotonic() - t0)

            while not self.stop.is_set():
                merged()
                self._reap()
                if time.monotonic() - asked >= ASK_EVERY_S:
                    states, asked = task_states(records, submission), time.monotonic()
                    if all(task_ended(records.task_record(submission.task_name(t["index"])))
                           or (name in states and not states[name].live)
                           for t in submission.tasks for name in [submission.task_name(t["index"])]):
                        break
                self.stop.wait(MERGE_EVERY_S)
            if self.stop.is_set():
                return
            ended = {submission.task_name(t["index"]) for t in submission.tasks}
            for warning in repair_ended(records, submission, ended):
                self.console.print(f"[yellow]warning:[/] {warning}")
            merged()
            self._merge_rows(failed_task_rows(records, submission, states, self.final))
            merged()
        for key, job in todo.items():
            if not self._complete(job):
                self.incomplete[key] = self._why(records, submission, states, key)

    def _merge_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        before = len(self.written)
        if not self._append(rows):
            return None
        return self.written[before:]

    def _complete(self, job) -> bool:
        return all(None not in self._on_disk(job.plan.point.key, m) for m in job.metrics)

    def _reap(self) -> None:
        """submitit-local's tasks are this process's children: collect the exit of those that ended."""
        if self.launcher == "submitit-local":
            for job in self.submitted_jobs:
                job.done()

    @staticmethod
    def _why(records: ClusterFolder, submission: Submission, states: dict, key: str) -> str:
        for task in submission.tasks:
            if any(p["key"] == key for p in task["points"]):
                name = submission.task_name(task["index"])
                record = records.task_record(name) or {}
                if record.get("state"):
                    return f"task {name} (job {task['job_id']}) {record['state']}: {record.get('reason') or 'ended'}"
                state = states.get(name)
                return (f"task {name} (job {task['job_id']}) ended {state.state if state else 'without a record'}"
                        f"{' (' + state.reason + ')' if state and state.reason else ''} before measuring it")
        return "not submitted"

    def _resume_hint(self) -> str:
        if self.submission is None:
            return super()._resume_hint()
        jobs = [t["job_id"] for t in self.submission.tasks]
        if self.launcher == "slurm":
            return (f"stopped following array job {', '.join(self.submission.job_ids)} ({self.signal_name}); it runs "
                    f"on: `dimbench status {self.out}` shows its points, `dimbench collect {self.out}` merges their "
                    f"rows, `{scheduler_for('slurm').cancel_command(jobs)}` stops it; once it has ended, the same "
                    "command resubmits what is missing")
        return (f"interrupted ({self.signal_name}): the local tasks stop with it; {len(self.written)} rows written "
                f"this time are kept in {self.folder.results}; resume with the same command")
