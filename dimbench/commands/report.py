"""``dimbench report RESULTS_DIR [-o OUT]``: the HTML and PDF report of a run folder (dimbench.report builds it)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.markup import escape

from dimbench import results
from dimbench.console import console
from dimbench.errors import UserError


def add_commands(sub) -> None:
    p = sub.add_parser("report", help="build the HTML and PDF report of a run folder")
    p.add_argument("results_dir", metavar="RESULTS_DIR")
    p.add_argument("-o", "--output", metavar="OUT", default=None, help="report folder (default: RESULTS_DIR)")
    p.set_defaults(func=cmd_report)


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
