"""``dimbench run`` and ``dimbench validate``: a suite measured (here, or on a cluster), or only checked.

    dimbench run SUITE [--out DIR] [--device D] [--fresh] [--retry-errors] [--allow-mixed] [--no-report]
                 [--launcher local|slurm|submitit-local] [--partition P] [--time T] [--gpus-per-task G] ...
    dimbench validate SUITE [SUITE ...]

SUITE is a path, or the name of a suite in the project's suites/. Ctrl-C stops a run cleanly (status 130): what
was measured stays in the results file and the message says how to resume. After a run: the summary table, the
run's wall time and rows, and the report (unless --no-report).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dimbench import processes, results
from dimbench.cluster.options import add_launch_options
from dimbench.console import console, summary_table
from dimbench.errors import EXIT_INCOMPLETE, EXIT_INTERRUPTED, UserError


def add_commands(sub) -> None:
    p = sub.add_parser(
        "run", help="run a suite (resumes an interrupted run of the same command)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Each point runs in its own worker process; results are appended to OUT/results.jsonl as they come\n"
        "and a re-run of the same command resumes. Environment variables: DIMBENCH_WORKER_START=spawn|forkserver\n"
        "(how workers start; default forkserver on the CPU, spawn on CUDA); testing aid only:\n"
        "DIMBENCH_INJECT_FAULT='SUBSTRING=error|oom|crash|hang[;...]' makes the metrics whose\n"
        "'<point key>#<metric>' contains SUBSTRING fail that way (see dimbench/worker.py).",
    )
    p.add_argument("suite", metavar="SUITE", help="suite file, or the name of one in suites/")
    p.add_argument("--out", metavar="DIR", help="output folder (default: the suite's 'out', results/<name>)")
    p.add_argument("--device", metavar="D", help="auto, cpu, cuda or cuda:N (default: the suite's 'device')")
    p.add_argument("--fresh", action="store_true", help="start over (old results are kept as results.jsonl.bak)")
    p.add_argument("--retry-errors", action="store_true", help="measure again the metrics recorded as errors")
    p.add_argument("--allow-mixed", action="store_true",
                   help="add to a folder that holds another suite's results, or results measured with other "
                   "settings (refused otherwise)")
    p.add_argument("--no-report", action="store_true", help="do not build the HTML/PDF report after the run")
    add_launch_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check suite files (every problem as FILE:LINE) without running them")
    p.add_argument("suites", metavar="SUITE", nargs="+")
    p.set_defaults(func=cmd_validate)


def cmd_validate(args: argparse.Namespace) -> int:
    # heavy (torch, the models): imported when the command runs
    from dimbench.suite import SuiteError, load_suite, resolve_suite

    errors: list[str] = []
    out = console()
    for arg in args.suites:
        try:
            suite = load_suite(resolve_suite(arg))
        except SuiteError as exc:
            errors.extend(exc.errors)
            continue
        points = {dev: suite.point_count(dev) for dev in ("cpu", "cuda")}
        out.print(f"{suite.path}: ok — suite '{suite.name}', {len(suite.models)} models, "
                  f"{points['cpu']} points on cpu, {points['cuda']} on cuda")
        _print_warnings(suite)
    if errors:
        raise UserError("\n".join(errors))
    return 0


def _print_warnings(suite) -> None:
    for line in suite.warnings:
        print(f"dimbench: {line}", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    if args.launcher != "local":
        return _run_on_cluster(args)
    # The fork server's imports (torch, the models) overlap this process's own, which come next.
    processes.start_early(args.device)

    # heavy (torch, the models): imported when the command runs
    from dimbench.runner import Runner
    from dimbench.suite import expand

    suite = load_run_suite(args)
    plan = expand(suite, device=args.device, out=args.out)
    out = console()
    runner = Runner(plan, fresh=args.fresh, retry_errors=args.retry_errors, allow_mixed=args.allow_mixed,
                    argv=["dimbench", *args.argv], console=out)
    summary = run_or_say_how_to_resume(runner)
    if summary is None:
        return EXIT_INTERRUPTED
    report_run(args, suite, plan, summary, out)
    return 0


def _run_on_cluster(args: argparse.Namespace) -> int:
    """``dimbench run --launcher slurm|submitit-local``: one array job through submitit (dimbench.cluster)."""
    # heavy (torch, the models, submitit): imported when the command runs
    from dimbench.cluster.launcher import ClusterRunner, check_launcher
    from dimbench.cluster.options import launch_settings, remote_device
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


def load_run_suite(args: argparse.Namespace):
    """The suite `dimbench run` was given, validated (its warnings printed), after checking --device."""
    # heavy (torch, the models): imported when the command runs
    from dimbench.suite import check_device, load_suite, resolve_suite

    if args.device is not None and not check_device(args.device):
        raise UserError(f"device {args.device!r}: expected auto, cpu, cuda or cuda:N")
    suite = load_suite(resolve_suite(args.suite))
    _print_warnings(suite)
    return suite


def run_or_say_how_to_resume(runner):
    """``runner.run()``; None after Ctrl-C / SIGTERM, once the message saying how to resume is printed."""
    # heavy (torch, the models): imported when the command runs
    from dimbench.runner import Interrupted

    try:
        return runner.run()
    except Interrupted as exc:
        console(stderr=True).print(f"[yellow]{exc}[/]")
        return None


def report_run(args: argparse.Namespace, suite, plan, summary, out) -> None:
    """After a run: the summary table of the plan's points, the run's wall time and rows, the report."""
    keys = {pp.point.key for pp in plan.points}
    rows = [r for r in results.latest(results.read_rows(summary.results)) if r.get("point_key") in keys]
    print_summary(out, rows, f"{suite.name} on {plan.device} ({len(keys)} points)")
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary.counts.items())) or "none"
    out.print(f"Wall time of this run: {summary.wall_s:.1f} s (time.monotonic, runner start to end); "
              f"{summary.measured_points} points measured, rows written: {counts}")
    out.print(f"Results: {summary.results}  (environment: {summary.out / results.ENVIRONMENT_FILE})")
    if not args.no_report:
        report_after_run(summary.out, out)


def report_after_run(folder: Path, out) -> bool:
    """Build the run's report; a failure is said, never fatal (the results are safe; the report can be rebuilt)."""
    try:
        # heavy (torch, the models): imported when the command runs
        from dimbench.report import build_report

        html, pdf = build_report(folder)
    except Exception as exc:  # noqa: BLE001
        out.print(f"report not built: {type(exc).__name__}: {exc} (the results are complete; build it again with: "
                  f"dimbench report {folder})", markup=False, style="yellow")
        return False
    out.print(f"Report: {html}  {pdf}")
    return True


def print_summary(out, rows: list[dict], title: str) -> None:
    # heavy (torch, the models): imported when the command runs
    from dimbench.metrics import declared_rows

    if not rows:
        out.print("No results to summarise.")
        return
    columns = [r for r in declared_rows() if r.summary is not None]  # registration order
    table, notes, problems, skips = summary_table(rows, columns, title)
    out.print(table)
    if notes:
        out.print("How each column was obtained:")
        for note in notes:
            out.print(f"  {note}", markup=False)
    if problems:
        out.print(f"[red]Errors and out-of-memory points ({len(problems)}):[/]")
        for line in problems:
            out.print(f"  {line}", markup=False)
    if skips:
        out.print(f"Skipped cells, by reason ({len(skips)}):")
        for line in skips[:12]:
            out.print(f"  {line}", markup=False)
        if len(skips) > 12:
            out.print(f"  ... and {len(skips) - 12} more reasons (status 'skipped' rows of results.jsonl)")
