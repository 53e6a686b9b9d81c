"""``dimbench``: the command line. A thin front: it builds the parser from the command modules, loads the plugins
and turns errors into exit statuses; each command is in dimbench/commands/<group>.py (the rule:
:mod:`dimbench.commands`).

    dimbench [--plugin MODULE ...] COMMAND
    dimbench run SUITE [--out DIR] [--device D] [--fresh] [--retry-errors] [--allow-mixed] [--no-report]
                 [--launcher local|slurm|submitit-local] [--partition P] [--time T] [--gpus-per-task G] ...
    dimbench validate SUITE [SUITE ...]
    dimbench list
    dimbench schema [--markdown]
    dimbench env [--json]
    dimbench report RESULTS_DIR [-o OUT]
    dimbench train MODEL --out DIR [--data digits|PATH] [--steps N] [--batch B] ... (also under torchrun)
    dimbench profile MODEL --resolution PX [--device D] [--dtype bf16] [--batch B] [--out DIR]
    dimbench gate RESULTS_DIR --baseline FILE [--tolerance METRIC=REL] [--markdown F] [--json F]  (exit 1: regression)
    dimbench baseline RESULTS_DIR -o FILE [--replace]
    dimbench fid-stats IMAGE_FOLDER -o FILE.npz --inception-weights PATH [--resolution PX]
    dimbench fid MODEL --resolution PX --out DIR [--checkpoint PATH] ...   (also under torchrun)
    dimbench status OUT | dimbench collect OUT      (a cluster run's points; its shards merged)
    dimbench checkpoint convert|inspect ...

A user's mistake (bad suite, missing file, bad argument) is one clear line per problem on stderr and exit
status 2, never a traceback. Ctrl-C stops a run cleanly (status 130): what was measured stays in the results
file and the message says how to resume. SUITE is a path, or the name of a suite in the project's suites/.
"""

from __future__ import annotations

import argparse
import sys

from dimbench.commands import checkpoint, cluster, fid, gate, info, profile, report, run, train
from dimbench.console import console
from dimbench.errors import EXIT_INTERRUPTED, EXIT_USAGE, UserError
from dimbench.plugins import PLUGIN_GROUP, PLUGINS_ENV, load_plugins

#: The command modules, each adding its commands with add_commands(subparsers), in the order of `dimbench --help`.
COMMANDS = (run, info, report, train, profile, gate, fid, cluster, checkpoint)


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

    for commands in COMMANDS:
        commands.add_commands(sub)
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
