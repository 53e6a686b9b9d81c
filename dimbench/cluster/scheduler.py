"""Asking the scheduler about a submission's tasks: queued, running, or ended (and how).

SLURM: ``squeue --states=all`` knows a job while slurmctld keeps it (MinJobAge after it ends, 300 s by default),
``sacct`` after that where accounting is set up; a task neither knows has ended. submitit-local: a task is its
controller process on the submitting host (its pid is the job id).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess

from dimbench.errors import UserError

#: SLURM job states of a task that is not over yet.
LIVE_STATES = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
               "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT")
#: States in which the task itself failed (rather than being stopped from outside): its points get error rows.
FAILED_STATES = ("FAILED", "OUT_OF_MEMORY", "BOOT_FAIL")
SLURM_COMMANDS = ("sbatch", "srun", "squeue", "scancel")


@dataclasses.dataclass(frozen=True)
class TaskState:
    state: str  # the scheduler's word: PENDING, RUNNING, COMPLETED, CANCELLED, TIMEOUT, FAILED, ...; GONE: unknown
    live: bool
    node: str = ""
    reason: str = ""


def missing_slurm_commands() -> list[str]:
    return [c for c in SLURM_COMMANDS if shutil.which(c) is None]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        return subprocess.CompletedProcess(cmd, 127, "", f"{cmd[0]}: {exc}")


class SlurmScheduler:
    name = "slurm"

    def states(self, job_ids: list[str], submission=None) -> dict[str, TaskState]:
        arrays = sorted({j.split("_")[0] for j in job_ids})
        if not arrays:
            return {}
        proc = _run(["squeue", "--states=all", "-h", "-r", "-j", ",".join(arrays), "-o", "%i|%T|%N|%r"])
        if proc.returncode != 0 and "Invalid job id" not in proc.stderr:
            said = (proc.stderr.strip() or proc.stdout.strip() or "squeue failed").splitlines()[-1]
            where = f" (submitted from {submission.host})" if submission is not None else ""
            raise UserError(f"cannot ask SLURM whether job {', '.join(arrays)}{where} still runs: {said}; run this "
                            "where SLURM's commands reach that cluster")
        known: dict[str, TaskState] = {}
        for line in proc.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 4:
                job, state, node, reason = parts
                state = state.split()[0] if state else "UNKNOWN"
                known[job] = TaskState(state, state in LIVE_STATES, node, "" if reason == "None" else reason)
        missing = [j for j in job_ids if j not in known]
        if missing:
            known.update(self._accounting(missing))
        return {j: known.get(j, TaskState("GONE", False, reason="no longer known to SLURM (squeue, sacct)"))
                for j in job_ids}

    @staticmethod
    def _accounting(job_ids: list[str]) -> dict[str, TaskState]:
        if shutil.which("sacct") is None:
            return {}
        proc = _run(["sacct", "-n", "-P", "-X", "-j", ",".join(job_ids), "-o", "JobID,State,NodeList"])
        out = {}
        if proc.returncode == 0:
            for line in proc.stdout.splitlines():
                parts = line.split("|")
                if len(parts) == 3:
                    state = parts[1].split()[0] if parts[1] else "UNKNOWN"
                    out[parts[0]] = TaskState(state, state in LIVE_STATES, parts[2])
        return out

    @staticmethod
    def cancel_command(job_ids: list[str]) -> str:
        return "scancel " + " ".join(sorted({j.split("_")[0] for j in job_ids}))


class LocalScheduler:
    """submitit's local executor: each task is a controller process on the submitting host."""

    name = "submitit-local"

    def states(self, job_ids: list[str], submission=None) -> dict[str, TaskState]:
        here = submission is None or submission.host == socket.gethostname()
        out = {}
        for job in job_ids:
            if not here:  # another machine's processes cannot be seen from here
                out[job] = TaskState("UNKNOWN", True, submission.host, "submitted on another host")
            elif job.isdigit() and pid_alive(int(job), "submitit"):
                out[job] = TaskState("RUNNING", True, socket.gethostname())
            else:
                out[job] = TaskState("ENDED", False, reason="its process has exited")
        return out

    @staticmethod
    def cancel_command(job_ids: list[str]) -> str:
        return "kill " + " ".join(job_ids)


def scheduler_for(launcher: str):
    return SlurmScheduler() if launcher == "slurm" else LocalScheduler()

def pid_alive(pid: int, needle: str | None = None) -> bool:
    """Whether a process on this host is alive (not a zombie) and, with ``needle``, its command line holds it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b") ", 1)[-1][:1] == b"Z":
                return False
        if needle is not None:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return needle.encode() in f.read()
        return True
    except OSError:
        try:
            os.kill(pid, 0)  # no /proc (not Linux): existence only
        except (OSError, ValueError):
            return False
        return needle is None
