"""``dimbench list``, ``dimbench schema`` and ``dimbench env``: what this installation knows and runs on.

    dimbench list                  registered model families, models, metrics, and the suites in suites/
    dimbench schema [--markdown]   every key of a suite file (docs/suite.md is its Markdown)
    dimbench env [--json]          devices, versions, scan and attention backends
"""

from __future__ import annotations

import argparse
import json
import sys

from rich.table import Table

from dimbench.console import console


def add_commands(sub) -> None:
    p = sub.add_parser("list", help="registered models, metrics and the suites in suites/")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("schema", help="every key of a suite file: type, default, meaning (and each metric's options)")
    p.add_argument("--markdown", action="store_true", help="print docs/suite.md as Markdown")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("env", help="devices, versions, scan and attention backends")
    p.add_argument("--json", action="store_true", help="print the environment record as JSON")
    p.set_defaults(func=cmd_env)


def cmd_list(args: argparse.Namespace) -> int:
    # heavy (torch, the models): imported when the command runs
    import models
    from dimbench.metrics import METRICS
    from dimbench.suite import SuiteError, load_suite, suite_dirs

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
