"""``dimbench``: the command line. A thin front: it parses arguments and calls the rooms that do the work.

    dimbench [--plugin MODULE ...] COMMAND
    dimbench run SUITE [--out DIR] [--device D] [--fresh] [--retry-errors] [--allow-mixed] [--no-report]
                 [--launcher local|slurm|submitit-local] [--partition P] [--time T] [--gpus-per-task G] ...
    dimbench status OUT | dimbench collect OUT      (a cluster run's points; its shards merged)
    dimbench validate SUITE [SUITE ...]
    dimbench list
    dimbench schema [--markdown]
    dimbench env [--json]
    dimbench report RESULTS_DIR [-o OUT]
    dimbench train MODEL --out DIR [--data digits|PATH] [--steps N] [--batch B] ... (also under torchrun)
    dimbench profile MODEL --resolution PX [--device D] [--dtype bf16] [--batch B] [--out DIR]
    dimbench checkpoint ...
    dimbench fid-stats IMAGE_FOLDER -o FILE.npz --inception-weights PATH [--resolution PX]
    dimbench gate RESULTS_DIR --baseline FILE [--tolerance METRIC=REL] [--markdown F] [--json F]  (exit 1: regression)
    dimbench baseline RESULTS_DIR -o FILE [--replace]

A user's mistake (bad suite, missing file, bad argument) is one clear line per problem on stderr and exit
status 2, never a traceback. Ctrl-C stops a run cleanly (status 130): what was measured stays in the results
file and the message says how to resume. SUITE is a path, or the name of a suite in the project's suites/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from dimbench import processes, results
from dimbench.checkpoint_cli import add_checkpoint_commands
from dimbench.cluster.cli import add_cluster_commands
from dimbench.cluster.options import add_launch_options
from dimbench.console import console, summary_table
from dimbench.errors import EXIT_INCOMPLETE, EXIT_INTERRUPTED, EXIT_USAGE, UserError
from dimbench.fid_cli import add_fid_commands
from dimbench.gates.cli import add_gate_commands
from dimbench.plugins import PLUGIN_GROUP, PLUGINS_ENV, load_plugins
from dimbench.profile_cli import add_profile_command
from dimbench.training.cli import add_train_command

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def suite_dirs() -> list[Path]:
    """Where `dimbench list` and bare suite names look: ./suites, then the project's suites/."""
    dirs = []
    for d in (Path.cwd() / "suites", PROJECT_ROOT / "suites"):
        if d.is_dir() and d.resolve() not in [x.resolve() for x in dirs]:
            dirs.append(d)
    return dirs


def resolve_suite(arg: str) -> Path:
    """A suite path as given, or a bare name ("smoke") found as suites/<name>.yaml."""
    p = Path(arg)
    if p.exists() or p.suffix or "/" in arg:
        return p
    for d in suite_dirs():
        candidate = d / f"{arg}.yaml"
        if candidate.exists():
            return candidate
    return p


# -------------------------------------------------------------------------------------------------- commands
# Each command imports its implementation when it runs: building the parser (`dimbench --help`, a usage error)
# should not cost the seconds of importing torch and the models. (Today the gate and train front ends still
# import their heavy packages with the parser; they are to move beside the other front ends.)
def cmd_validate(args: argparse.Namespace) -> int:
    # heavy (torch, the models): imported when the command runs
    from dimbench.suite import SuiteError, load_suite

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
    from dimbench.suite import check_device, load_suite

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


def cmd_list(args: argparse.Namespace) -> int:
    # heavy (torch, the models): imported when the command runs
    import models
    from dimbench.metrics import METRICS

    # heavy (torch, the models): imported when the command runs
    from dimbench.suite import SuiteError, load_suite

    out = console()
    t = Table(title="Model families", title_justify="left")
    for col in ("family", "name", "role", "timestep t", "model options (point key)", "description"):
        t.add_column(col)
    for fam in models.list_families():
        options = ", ".join(f"{k}: {' | '.join(o.values)} ({o.key}=)" for k, o in fam.options.items()) or "—"
        role = f"{fam.role}, ADAPTATION" if fam.adaptation else fam.role  # not an official configuration
        t.add_row(fam.display, fam.name, role, fam.timestep.meaning, options, fam.description)
    out.print(t)

    t = Table(title="Models (models registry)", title_justify="left")
    for col in ("name", "family", "official config", "patch", "input", "description"):
        t.add_column(col)
    for name in models.list_models():
        info = models.model_info(name)
        d = info.defaults
        kind = f"{d['in_channels']}x{d['input_size']}x{d['input_size']} " + ("latents" if info.latent else "pixels")
        t.add_row(name, info.family_info.display, info.official, str(info.patch_size), kind, info.description)
    out.print(t)

    t = Table(title="Metrics (suite-level names; rows they write: unit, task)", title_justify="left")
    for col in ("metric", "rows", "options", "description"):
        t.add_column(col)
    for name, m in METRICS.items():
        rows = ", ".join(f"{r.name} ({r.unit}, {r.task}" + (", deterministic" if r.deterministic else "")
                         + (", per step" if r.series else "") + ")" for r in m.rows)
        options = ", ".join(f.name for f in m.option_record().fields)
        t.add_row(name, rows, options, m.description)
    out.print(t)

    t = Table(title="Suites", title_justify="left")
    for col in ("file", "name", "description"):
        t.add_column(col)
    for d in suite_dirs():
        for path in sorted(d.glob("*.yaml")):
            try:
                suite = load_suite(path)
                t.add_row(str(path), suite.name, suite.description)
            except SuiteError as exc:
                t.add_row(str(path), "[red]invalid[/]", f"{len(exc.errors)} problem(s): dimbench validate {path}")
    out.print(t)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    # heavy (torch, the models): imported when the command runs
    from dimbench.suite import schema_markdown

    text = schema_markdown()
    if args.markdown:
        sys.stdout.write(text)
    else:
        console().print(text, markup=False)
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    # heavy (torch, the models): imported when the command runs
    from dimbench.environment import collect

    record = collect(["dimbench", *args.argv])
    out = console()
    if args.json:
        print(json.dumps(record, indent=2, default=str))
        return 0
    t = Table(title="dimbench environment", title_justify="left", show_header=False)
    t.add_column("what")
    t.add_column("value")
    for k, v in record["versions"].items():
        t.add_row(f"version: {k}", str(v) if v else "[dim]not installed[/]")
    t.add_row("devices", ", ".join(["cpu"] + [f"cuda:{d['index']} {d['name']} ({d['memory_total_gib']} GiB, "
                                              f"sm {d['capability']})" for d in record["cuda_devices"]]))
    t.add_row("NVIDIA driver", str(record["driver"]))
    t.add_row("CPU", f"{record['cpu']['processor']}, {record['cpu']['cores']} cores, torch uses "
                     f"{record['cpu']['torch_threads']} threads")
    for dev, backends in record["scan_backends"].items():
        t.add_row(f"scan backends on {dev}", str(backends))
    t.add_row("scan backend override", str(record["scan_backend_override"] or "none (DIMBENCH_SCAN_BACKEND unset)"))
    for dev, choice in record["scan_choice"].items():
        t.add_row(f"scan backend a model gets on {dev}", choice)
    t.add_row("SDPA backends enabled", ", ".join(k for k, v in record["attention_backends_enabled"].items() if v))
    t.add_row("TF32", ", ".join(f"{k}={v}" for k, v in record["tf32"].items()))
    git = record["git"]
    t.add_row("git commit", f"{git['commit']}{' (uncommitted changes)' if git['dirty'] else ''}")
    out.print(t)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    path = Path(args.results_dir)
    if not path.is_dir() or not (path / results.RESULTS_FILE).exists():
        raise UserError(f"{path}: expected a run folder holding {results.RESULTS_FILE} (the --out of `dimbench run`)")
    try:
        # heavy (torch, the models): imported when the command runs
        from dimbench.report import build_report
    except ImportError as exc:
        raise UserError(f"the report is not available in this installation: {exc}") from None

    t0 = time.monotonic()
    # A large folder takes a while: a status line on a terminal says which step the report is at (nothing is
    # printed where stderr is not a terminal: logs keep only the result or the error).
    status = console(stderr=True).status("report: starting")
    try:
        with status:
            html, pdf = build_report(path, args.output, progress=lambda text: status.update(
                f"report [{time.monotonic() - t0:.0f} s]: {escape(text)}"))
    except UserError:  # a WriteError names the file itself
        raise
    except OSError as exc:  # -o naming a file, a read-only folder
        raise UserError(f"{exc.filename or args.output or path}: cannot write the report ({exc.strerror or exc})") \
            from None
    console().print(f"Report: {html}  {pdf}")
    return 0


# ---------------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dimbench",
        description="Benchmark diffusion backbones (DiM, DiT, U-ViT) across resolutions; every number says what "
        "it is and how it was obtained.",
    )
    parser.add_argument("--plugin", metavar="MODULE", action="append", default=[],
                        help="import MODULE and call its register() (metrics, model families); repeatable. Also "
                        f"from {PLUGINS_ENV} (comma-separated) and the '{PLUGIN_GROUP}' entry points")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

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

    p = sub.add_parser("list", help="registered models, metrics and the suites in suites/")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("schema", help="every key of a suite file: type, default, meaning (and each metric's options)")
    p.add_argument("--markdown", action="store_true", help="print docs/suite.md as Markdown")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("env", help="devices, versions, scan and attention backends")
    p.add_argument("--json", action="store_true", help="print the environment record as JSON")
    p.set_defaults(func=cmd_env)

    p = sub.add_parser("report", help="build the HTML and PDF report of a run folder")
    p.add_argument("results_dir", metavar="RESULTS_DIR")
    p.add_argument("-o", "--output", metavar="OUT", default=None, help="report folder (default: RESULTS_DIR)")
    p.set_defaults(func=cmd_report)

    add_train_command(sub)
    add_profile_command(sub)
    add_gate_commands(sub)
    add_fid_commands(sub)
    add_cluster_commands(sub)
    add_checkpoint_commands(sub)
    return parser


def _error(message: str) -> None:
    # Plain print: one line per problem, never folded, whatever the terminal width.
    for line in message.splitlines() or [""]:
        print(f"dimbench: error: {line}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)  # usage mistakes: argparse prints usage + one error line, exit 2
    args.argv = argv
    try:
        load_plugins(args.plugin)
        result = args.func(args)
    except UserError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        console(stderr=True).print("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `dimbench list | head`: the reader left; nothing to report
        return 0
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
