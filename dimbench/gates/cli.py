"""``dimbench gate`` and ``dimbench baseline``: the regression gate's two commands.

    dimbench baseline RESULTS_DIR -o FILE [--replace]
    dimbench gate RESULTS_DIR --baseline FILE [--tolerance METRIC=REL ...] [--alpha P] [--fail-on-new]
                  [--fail-on-removed] [--markdown FILE] [--json FILE] [--all]

Exit status of ``gate``: 0 pass, 1 regression, 2 bad input (unreadable, malformed or mismatched baseline or
results, named in one line).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.text import Text

from dimbench.console import console
from dimbench.errors import EXIT_OK, EXIT_REGRESSION
from dimbench.files import atomic_write, folder_lock


def cmd_baseline(args: argparse.Namespace) -> int:
    # heavy (torch, the models): imported when the command runs
    from .baseline import build_baseline, load_baseline, write_baseline

    out = console()
    target = Path(args.output)
    previous = None
    # Read, merge and replace under one lock: a second `dimbench baseline -o` of the same file waits, then merges
    # into what the first wrote (without it, the later rename would drop the first one's entries).
    with folder_lock(target, what=str(target)):
        if target.exists() and not args.replace:
            previous = load_baseline(target)
        baseline, warnings = build_baseline(args.results_dir, previous)
        for line in warnings:
            out.print(Text(f"warning: {line}", style="yellow"))
        write_baseline(baseline, target)
    measured = baseline.source
    how = (f"updated ({len(previous.entries)} entries before; this run's {measured['entries']} entries at "
           f"{measured['points']} point(s) replaced or added)" if previous else "written")
    classes = "; ".join(measured["device_classes"].values())
    out.print(Text(f"Baseline {target} {how}: {len(baseline.entries)} entries, "
                   f"{len({e.point_key for e in baseline.entries.values()})} points, device class(es) {classes}"))
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    # heavy (torch, the models): imported when the command runs
    from .baseline import load_baseline, run_entries
    from .compare import compare, parse_tolerances
    from .render import dumps, markdown, print_result

    overrides = parse_tolerances(args.tolerance)
    baseline = load_baseline(args.baseline)
    run = run_entries(args.results_dir)
    result = compare(baseline, run, str(args.results_dir), overrides, fail_on_new=args.fail_on_new,
                     fail_on_removed=args.fail_on_removed, alpha=args.alpha)
    for path, text in ((args.markdown, markdown(result, args.all)), (args.json, dumps(result))):
        if path:
            atomic_write(path, text)  # WriteError (a UserError) names the file
    print_result(console(), result, args.all)
    return EXIT_OK if result.passed else EXIT_REGRESSION


def add_gate_commands(sub) -> None:
    # heavy (torch): imported when the parser is built, not when this module loads
    from .compare import ALPHA

    p = sub.add_parser("gate", help="compare a run with a committed baseline: exit 1 on a regression",
                       description="Compare the gated rows of a run (counts, predicted and measured memory, timings "
                       "relative to a reference matmul) with a baseline. Exit 0 pass, 1 regression, 2 bad input.")
    p.add_argument("results_dir", metavar="RESULTS_DIR")
    p.add_argument("--baseline", required=True, metavar="FILE", help="a file written by `dimbench baseline`")
    p.add_argument("--tolerance", action="append", metavar="METRIC=REL",
                   help="override a metric's tolerance (relative change; latency_rel=0.5 is 50 %%); repeatable")
    p.add_argument("--alpha", type=float, default=ALPHA, metavar="P",
                   help=f"significance level of the Mann-Whitney U test that a timing change beyond its tolerance "
                   f"must pass to be a regression (default {ALPHA:g})")
    p.add_argument("--fail-on-new", action="store_true", help="fail when the run has points or metrics the "
                   "baseline lacks")
    p.add_argument("--fail-on-removed", action="store_true", help="fail when baselined points or metrics are "
                   "missing from the run")
    p.add_argument("--markdown", metavar="FILE", help="also write the result as Markdown (a CI comment)")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    p.add_argument("--all", action="store_true", help="list every gated row, not only those that moved")
    p.set_defaults(func=cmd_gate)

    p = sub.add_parser("baseline", help="write or update a regression baseline from a run",
                       description="Write the gated rows of a run to a baseline file, with the environment they "
                       "came from. An existing file is updated: this run's points replace theirs, others are kept.")
    p.add_argument("results_dir", metavar="RESULTS_DIR")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the baseline file")
    p.add_argument("--replace", action="store_true", help="start the file afresh instead of updating it")
    p.set_defaults(func=cmd_baseline)
