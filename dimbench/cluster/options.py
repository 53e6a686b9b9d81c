"""What a cluster run asks the scheduler for: a suite's ``slurm:`` section, declared like every other suite key
(type, default, meaning; FILE:LINE errors), and the ``dimbench run`` options that override it.

    slurm:
      partition: gpu
      account: my_lab
      time: "02:00:00"            # per task: minutes, or [D-]HH:MM:SS
      gpus_per_task: 1
      cpus_per_task: 8
      array_parallelism: 16       # tasks running at once
      points_per_task: 1          # cheap points may share a task
      sbatch: {constraint: h100, exclusive: true}
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from dimbench.errors import UserError
from dimbench.schema import INVALID, Integer, ListOf, Number, Problems, Record, Text, Type, key

LAUNCHERS = ("local", "submitit-local", "slurm")
_TIME_RE = re.compile(r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$|^\d+$")
_OPTION_RE = re.compile(r"^[a-z][a-z0-9-]*$")


class TimeLimit(Type):
    """A task's wall-time limit: minutes (an integer), or SLURM's [D-]HH:MM:SS / MM:SS / MM as a string."""

    expected = "minutes (an integer >= 1) or a SLURM time ([D-]HH:MM:SS)"

    def check(self, value, path, problems):
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        if isinstance(value, str) and _TIME_RE.match(value.strip()):
            return value.strip()
        return problems.expected(path, self.expected, value)


def minutes(limit: int | str) -> int:
    """A TimeLimit in whole minutes (rounded up; the local executor takes minutes only)."""
    if isinstance(limit, int):
        return limit
    days, _, clock = limit.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if len(parts) == 1:
        seconds = parts[0] * 60  # SLURM: a lone number is minutes
    elif len(parts) == 2 and not days:
        seconds = parts[0] * 60 + parts[1]  # MM:SS
    else:
        parts = ([0] * (3 - len(parts))) + parts
        seconds = parts[0] * 3600 + parts[1] * 60 + parts[2]
    seconds += int(days or 0) * 86400
    return max(1, -(-seconds // 60))


class SbatchOptions(Type):
    """Other sbatch options: {name: value} (``--name=value``; ``true`` is a bare flag ``--name``)."""

    expected = "a mapping {sbatch option (lower case, without --): a string, a number or true}"

    def check(self, value, path, problems):
        if not isinstance(value, dict):
            return problems.expected(path, self.expected, value)
        out = {}
        for name, v in value.items():
            if not isinstance(name, str) or not _OPTION_RE.match(name):
                problems.expected(path + (name,), "an sbatch option name as the key (lower case, without --, e.g. "
                                  "constraint)", name)
                out[name] = INVALID
            elif v is True or (isinstance(v, (str, int, float)) and not isinstance(v, bool) and str(v)):
                out[name] = v
            else:
                out[name] = problems.expected(path + (name,), "a string, a number or true", v)
        return INVALID if INVALID in out.values() else out


@dataclasses.dataclass(frozen=True)
class SlurmSettings:
    """A suite's ``slurm:`` section (every key optional); ``dimbench run --launcher slurm`` options override it."""

    partition: str | None = key(Text("a partition name"), None, "the partition (default: the cluster's default)")
    account: str | None = key(Text("an account name"), None, "the account to charge")
    qos: str | None = key(Text("a QOS name"), None, "the quality of service")
    time: int | str = key(TimeLimit(), 60, "each task's wall-time limit: minutes, or `[D-]HH:MM:SS`")
    cpus_per_task: int | None = key(Integer(1), None, "CPUs per task (default: the cluster's)")
    gpus_per_task: int | None = key(Integer(0), None, "GPUs per task (a point on `cuda` needs at least 1)")
    mem_gb: float | None = key(Number(0, "GiB"), None, "memory per task (default: the cluster's)")
    array_parallelism: int | None = key(Integer(1), None, "tasks of the array running at once (default: all; "
                                        "submitit-local: the machine's CPU count)")
    points_per_task: int = key(Integer(1), 1, "sweep points one task measures, one after the other (cheap points "
                               "may share a task: each task pays a Python and torch start)")
    nodes: int = key(Integer(1), 1, "nodes per task (more than 1 needs `gpus_per_node`)")
    gpus_per_node: int | None = key(Integer(1), None, "GPUs per node, one process (rank) each: every point of the "
                                    "task runs on all `nodes` x `gpus_per_node` ranks in one torch.distributed group "
                                    "(a long task, fid or train, shards its work by rank), rows from rank 0")
    setup: tuple[str, ...] | None = key(ListOf(Text("a shell line")), None,
                                        "shell lines run before each task (`module load ...`, activating a venv)")
    sbatch: dict = key(SbatchOptions(), {}, "other sbatch options, `{name: value}` (`--name=value`; `true`: a flag)")


SLURM_SECTION = Record(SlurmSettings, "slurm keys")

#: ``dimbench run`` options that override the suite's slurm section: (option, key).
OVERRIDES = (("--partition", "partition"), ("--account", "account"), ("--qos", "qos"), ("--time", "time"),
             ("--cpus-per-task", "cpus_per_task"), ("--gpus-per-task", "gpus_per_task"), ("--mem-gb", "mem_gb"),
             ("--array-parallelism", "array_parallelism"), ("--points-per-task", "points_per_task"),
             ("--nodes", "nodes"), ("--gpus-per-node", "gpus_per_node"))


def add_launch_options(p) -> None:
    """The cluster options of ``dimbench run``."""
    g = p.add_argument_group("cluster (dimbench.cluster; README 'On a cluster')")
    g.add_argument("--launcher", choices=LAUNCHERS, default="local",
                   help="local: worker processes on this machine (default); slurm: one SLURM array job, a task per "
                   "point (submitit); submitit-local: the same path through submitit's local executor")
    for option, name in OVERRIDES:
        field = SLURM_SECTION.fields[[f.name for f in SLURM_SECTION.fields].index(name)]
        kind = int if isinstance(field.type, Integer) else float if isinstance(field.type, Number) else str
        g.add_argument(option, type=kind, default=None, metavar=option.lstrip("-").split("-")[0].upper(),
                       help=f"{field.doc} (overrides the suite's slurm.{name})")
    g.add_argument("--sbatch", action="append", default=[], metavar="NAME=VALUE",
                   help="another sbatch option (repeatable; NAME alone: a flag), over the suite's slurm.sbatch")
    g.add_argument("--no-wait", action="store_true",
                   help="submit and return: `dimbench status OUT` shows the points, `dimbench collect OUT` merges "
                   "their rows (running the same command again does both, and resubmits what is missing)")


def launch_settings(base: SlurmSettings, args) -> SlurmSettings:
    """The suite's section with the command line's values over it; a bad value is a UserError naming the option."""
    given: dict[str, Any] = {}
    for _option, name in OVERRIDES:
        value = getattr(args, name, None)
        if value is not None:
            given[name] = int(value) if name == "time" and str(value).isdigit() else value
    extra = {}
    for item in getattr(args, "sbatch", None) or []:
        name, sep, value = item.partition("=")
        extra[name.strip().lstrip("-")] = value if sep else True
    problems = Problems()
    checked = Record(SlurmSettings, "options", partial=True).check(
        {**given, **({"sbatch": extra} if extra else {})}, (), problems)
    if problems:
        names = dict((n, o) for o, n in OVERRIDES)
        lines = []
        for path, message in problems:
            option = names.get(path[0], "--sbatch") if path else "--sbatch"
            lines.append(f"{option}: {message.split(': ', 1)[-1]}")
        raise UserError("\n".join(lines))
    if "sbatch" in checked:
        checked["sbatch"] = {**base.sbatch, **checked["sbatch"]}
    settings = dataclasses.replace(base, **checked)
    if settings.nodes > 1 and not settings.gpus_per_node:
        raise UserError(f"--nodes {settings.nodes}: a task across nodes needs --gpus-per-node (the ranks per node)")
    return settings


__all__ = ["LAUNCHERS", "SLURM_SECTION", "SlurmSettings", "add_launch_options", "launch_settings", "minutes"]


def remote_device(requested: str, settings) -> str:
    """The device of the points on the nodes: as asked, and ``auto`` = cuda when the tasks ask for GPUs (this
    machine, a login node, may have none)."""
    if requested != "auto":
        return requested
    return "cuda" if (settings.gpus_per_task or settings.gpus_per_node) else "cpu"
