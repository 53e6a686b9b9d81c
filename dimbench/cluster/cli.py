"""The cluster's commands: ``dimbench run --launcher slurm|submitit-local`` (:func:`cmd_run_cluster`),
``dimbench status OUT`` and ``dimbench collect OUT``."""

from __future__ import annotations

import argparse

EXIT_INCOMPLETE = 1  # the array ended with points not measured (resubmit: the same command)


def add_cluster_commands(sub) -> None:
    from dimbench.cluster.collect import cmd_collect
    from dimbench.cluster.status import cmd_status

    p = sub.add_parser("status", help="where each point of a cluster run stands: pending, running (job), done, "
                       "failed (reason), not running")
    p.add_argument("out", metavar="OUT", help="the run's output folder")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("collect", help="merge a cluster run's shards into OUT/results.jsonl (each row once)")
    p.add_argument("out", metavar="OUT", help="the run's output folder")
    p.set_defaults(func=cmd_collect)


def remote_device(requested: str, settings) -> str:
    """The device of the points on the nodes: as asked, and ``auto`` = cuda when the tasks ask for GPUs (this
    machine, a login node, may have none)."""
    if requested != "auto":
        return requested
    return "cuda" if (settings.gpus_per_task or settings.gpus_per_node) else "cpu"


def cmd_run_cluster(args: argparse.Namespace) -> int:
    from dimbench.cli import load_run_suite, report_run, run_or_say_how_to_resume
    from dimbench.cluster.launcher import ClusterRunner, check_launcher
    from dimbench.cluster.options import launch_settings
    from dimbench.console import console
    from dimbench.errors import EXIT_INTERRUPTED
    from dimbench.suite import expand

    check_launcher(args.launcher)
    suite = load_run_suite(args)
    settings = launch_settings(suite.slurm, args)
    device = remote_device(args.device or suite.device, settings)
    plan = expand(suite, device=device, out=args.out, here=False)
    out = console()
    runner = ClusterRunner(plan, launcher=args.launcher, settings=settings, wait=not args.no_wait, fresh=args.fresh,
                           retry_errors=args.retry_errors, allow_mixed=args.allow_mixed,
                           argv=["dimbench", *args.argv], console=out)
    summary = run_or_say_how_to_resume(runner)
    if summary is None:
        return EXIT_INTERRUPTED
    if args.no_wait and runner.submission is not None:
        out.print(f"Not following it (--no-wait): `dimbench status {plan.out}` shows its points, "
                  f"`dimbench collect {plan.out}` merges their rows")
        return 0
    report_run(args, suite, plan, summary, out)
    if runner.incomplete:
        err = console(stderr=True)
        err.print(f"[yellow]{len(runner.incomplete)} point(s) not measured:[/]")
        for key, why in runner.incomplete.items():
            err.print(f"  {key}: {why}", markup=False)
        err.print("Run the same command again to resubmit them.", markup=False)
        return EXIT_INCOMPLETE
    return 0
