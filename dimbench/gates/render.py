"""How a gate's result is shown: a rich table on the console, Markdown for a CI comment, JSON for tools.

All three list what moved (every verdict but ``ok``; ``show_all`` adds those) with baseline, now, change,
tolerance and verdict, then the counts and the notes (device class, suite). Strings from the files compared are
user data: the console prints them without markup, the Markdown escapes its table syntax.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from rich.table import Table
from rich.text import Text

from .compare import GateResult, Verdict

STYLE = {"regressed": "bold red", "changed": "bold red", "removed": "yellow", "new": "cyan",
         "not significant": "yellow", "improved": "green", "not compared": "dim", "ok": ""}


def _value(value: float | None, status: str | None, unit: str) -> str:
    if status is None:
        return "—"
    if status != "ok" or value is None:
        return status
    text = f"{value:,.0f}" if unit == "count" or (abs(value) >= 1e4 and float(value).is_integer()) else f"{value:.4g}"
    return f"{text} {unit}".strip()


def _change(v: Verdict) -> str:
    if v.change is None:
        return "—"
    if math.isinf(v.change):
        return "from 0"
    relative = f"{v.change * 100:+.3g} %"
    if v.unit == "count" and v.baseline is not None and v.now is not None:
        return f"{v.now - v.baseline:+,.0f} ({relative})"  # a count that moves by a few is still a change
    return relative


def _tolerance(v: Verdict) -> str:
    return "—" if v.tolerance is None else ("exact" if v.tolerance == 0 else f"±{v.tolerance * 100:g} %")


def _columns(v: Verdict) -> list[str]:
    return [v.point, v.metric, _value(v.baseline, v.baseline_status, v.unit), _value(v.now, v.now_status, v.unit),
            _change(v), _tolerance(v), v.verdict + (f" ({v.note})" if v.note else "")]


HEADERS = ["point", "metric", "baseline", "now", "change", "tolerance", "verdict"]


def headline(result: GateResult) -> str:
    counts = result.counts()
    compared = sum(counts.values())
    word = "PASS" if result.passed else "FAIL"
    parts = [f"{n} {name}" for name, n in counts.items() if n]
    return (f"dimbench gate: {word} — {compared} row(s) of {result.results_dir} against "
            f"{result.baseline.path or 'the baseline'}: " + ", ".join(parts))


def _shown(result: GateResult, show_all: bool) -> list[Verdict]:
    return [v for v in result.verdicts if show_all or v.verdict != "ok"]


def console_table(result: GateResult, show_all: bool = False) -> Table | None:
    rows = _shown(result, show_all)
    if not rows:
        return None
    table = Table(title="What moved" if not show_all else "Every gated row", title_justify="left")
    for header in HEADERS:
        table.add_column(header, justify="right" if header in ("baseline", "now", "change", "tolerance") else "left")
    for v in rows:
        cells = [Text(c) for c in _columns(v)]
        cells[-1].stylize(STYLE.get(v.verdict, ""))
        table.add_row(*cells)
    return table


def print_result(out, result: GateResult, show_all: bool = False) -> None:
    table = console_table(result, show_all)
    if table is not None:
        out.print(table)
    for note in result.notes:
        out.print(Text(f"note: {note}"))
    failing = ", ".join(result.failing)
    out.print(Text(headline(result) + f"  (failing verdicts: {failing})",
                   style="bold green" if result.passed else "bold red"))


_MD_SPECIAL = "\\`*_[]|"


def _md(cell: str) -> str:
    """A table cell as literal text: Markdown's inline syntax and the table's pipes escaped, HTML neutralised."""
    out = "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in cell)
    return out.replace("<", "&lt;").replace("\n", " ")


def markdown(result: GateResult, show_all: bool = False) -> str:
    lines = [f"**{_md(headline(result))}**", ""]
    rows = _shown(result, show_all)
    if rows:
        lines += ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
        lines += ["| " + " | ".join(_md(c) for c in _columns(v)) + " |" for v in rows]
        lines.append("")
    lines += [f"- {_md(note)}" for note in result.notes]
    lines.append(f"- failing verdicts: {', '.join(result.failing)}")
    return "\n".join(lines) + "\n"


def as_json(result: GateResult) -> dict[str, Any]:
    def clean(x: Any) -> Any:
        return None if isinstance(x, float) and not math.isfinite(x) else x

    return {
        "passed": result.passed,
        "headline": headline(result),
        "counts": result.counts(),
        "failing_verdicts": list(result.failing),
        "alpha": result.alpha,
        "notes": result.notes,
        "baseline": {"path": str(result.baseline.path), "suite": result.baseline.suite,
                     "created_at": result.baseline.created_at, "source": result.baseline.source},
        "results_dir": result.results_dir,
        "rows": [{k: clean(x) for k, x in dataclasses.asdict(v).items()} for v in result.verdicts],
    }


def dumps(result: GateResult) -> str:
    return json.dumps(as_json(result), indent=1) + "\n"
