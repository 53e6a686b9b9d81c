"""The results store: an append-only ``results.jsonl`` (one row per point and metric) and ``environment.json``.

The runner is the only writer. Every append is flushed and fsync'ed, so a run killed at any moment leaves at
most one half-written last line; :func:`read_rows` ignores such a line (with a warning) and
:func:`repair_torn_tail` cuts it away before a resumed run appends after it. A damaged line anywhere else is
not guessed around: it is an error that names the file and line.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dimbench.errors import ResultsError, ResultsWriteError, WriteError
from dimbench.files import atomic_write, loads

RESULTS_FILE = "results.jsonl"
ENVIRONMENT_FILE = "environment.json"

#: The row columns of docs/contracts.md, in order.
COLUMNS = (
    "suite",
    "point_key",
    "model",
    "resolution",
    "input_size",
    "batch",
    "dtype",
    "device",
    "task",
    "metric",
    "value",
    "unit",
    "status",
    "method",
    "started_at",
    "duration_s",
    "error",
    "extra",
)
STATUSES = ("ok", "oom", "error", "skipped")


def results_path(path: str | os.PathLike) -> Path:
    """``path`` itself when it is a file, else ``path/results.jsonl``."""
    p = Path(path)
    return p / RESULTS_FILE if p.is_dir() or p.suffix != ".jsonl" else p


def _parse_lines(path: Path) -> tuple[list[dict[str, Any]], int, str | None]:
    """Rows, the byte length of the good prefix, and a description of a torn last line (or None)."""
    data = path.read_bytes()
    rows: list[dict[str, Any]] = []
    good = 0
    lines = data.split(b"\n")
    # split() leaves one trailing element: b"" when the file ends with a newline, else the unterminated tail.
    for lineno, raw in enumerate(lines, start=1):
        is_last = lineno == len(lines)
        if is_last and raw == b"":
            break
        try:
            row = loads(raw)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            if is_last:  # unterminated: the writer was killed mid-line
                return rows, good, f"{path}:{lineno}: ignoring a half-written last line ({exc})"
            raise ResultsError(
                f"{path}:{lineno}: not a result row ({exc}); fix the line or start over with --fresh"
            ) from None
        if is_last:
            # A complete JSON object without its newline: the writer died between the object and the newline.
            return rows, good, f"{path}:{lineno}: ignoring a last line without its newline"
        rows.append(row)
        good += len(raw) + 1
    return rows, good, None


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All rows of a results file (or folder); a torn last line is skipped with a warning; no file: []."""
    p = results_path(path)
    if not p.exists():
        return []
    rows, _, torn = _parse_lines(p)
    if torn:
        warnings.warn(torn, stacklevel=2)
    return rows


def repair_torn_tail(path: str | os.PathLike) -> str | None:
    """Truncate a half-written last line away (before appending); returns the warning text, or None."""
    p = results_path(path)
    if not p.exists():
        return None
    _, good, torn = _parse_lines(p)
    if torn:
        with open(p, "r+b") as f:
            f.truncate(good)
            f.flush()
            os.fsync(f.fileno())
    return torn


def append_rows(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> int:
    """Append rows (one JSON object per line), fsync'ed; returns how many were written.

    All or nothing: when the write fails (a full disk, a file-size limit) the file is cut back to where it was,
    so it never ends in a torn line, and :class:`ResultsWriteError` names the file and the cause.
    """
    p = results_path(path)
    data = "".join(json.dumps(row, sort_keys=False, default=str) + "\n" for row in rows).encode()
    if not data:
        return 0
    fd = None
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, start)  # frees space, needs none
            raise
    except OSError as exc:
        raise ResultsWriteError(f"{p}: cannot append result rows ({exc.strerror or exc}); every complete row "
                                "written before is kept") from None
    finally:
        if fd is not None:
            os.close(fd)
    return data.count(b"\n")


def row_identity(row: dict[str, Any]) -> tuple[Any, Any, Any]:
    """What makes a row unique in a run folder: (point_key, metric, step); step is None but for series rows."""
    extra = row.get("extra")
    step = extra.get("step") if isinstance(extra, dict) else None
    if isinstance(step, (list, dict)):  # a hand-edited file: still an identity, never a crash
        step = json.dumps(step, sort_keys=True)
    return row.get("point_key"), row.get("metric"), step


FINAL_STATUSES = ("ok", "skipped", "oom", "error")


def final_statuses(rows: Iterable[dict[str, Any]], *, retry_errors: bool = False) -> dict[tuple, str]:
    """Identity (:func:`row_identity`) -> status of the rows a resumed run must not write again (the latest row of
    each identity): ok, skipped and oom rows are final; error rows too unless ``retry_errors``."""
    final = {"ok", "skipped", "oom"} if retry_errors else set(FINAL_STATUSES)
    out: dict[tuple, str] = {}
    for r in rows:
        key = row_identity(r)
        if r.get("status") in final:
            out[key] = r["status"]
        else:
            out.pop(key, None)
    return out


def rows_to_write(rows: Iterable[dict[str, Any]], final: dict[tuple, str]) -> list[dict[str, Any]]:
    """The rows that may be appended to a folder whose final rows are ``final`` (:func:`final_statuses`): those
    whose identity is not final there, or is a skip that a measurement now supersedes; of two copies of one
    identity among ``rows``, the first."""
    new: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        on_disk = final.get(row_identity(row))
        if on_disk is None or (on_disk == "skipped" and row.get("status") != "skipped"):
            new.setdefault(row_identity(row), row)
    return list(new.values())


def read_complete_rows(path: str | os.PathLike) -> tuple[list[dict[str, Any]], str | None]:
    """The complete rows of a file another process may be appending to, and the description of its unfinished
    last line (or None); the file is not changed. No file: ([], None)."""
    p = results_path(path)
    if not p.exists():
        return [], None
    rows, _, torn = _parse_lines(p)
    return rows, torn


def completed(rows: Iterable[dict[str, Any]], *, retry_errors: bool = False) -> set[tuple[Any, Any, Any]]:
    """The identities of rows a resumed run must not write again (see :func:`final_statuses`)."""
    return set(final_statuses(rows, retry_errors=retry_errors))


def latest(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per identity (point, metric, step): the last one written (a retried error is superseded by its
    retry; series rows, one per step, all stay)."""
    last: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        key = row_identity(row)
        last.pop(key, None)  # re-insert so the order is that of the surviving rows
        last[key] = row
    return list(last.values())


def load(path: str | os.PathLike, *, all_rows: bool = False):
    """Results as a pandas DataFrame (one row per point and metric, the contract's columns first).

    ``path`` is a run folder or a ``results.jsonl`` file. The file is append-only, so a retried point
    (``--retry-errors``) leaves its old error row behind: by default only the latest row per (point_key,
    metric, step) is kept; ``all_rows=True`` returns the whole history. A missing file is FileNotFoundError.
    """
    import pandas as pd  # a second to import; the store itself is read with json, only this view needs it

    p = results_path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no results file (expected a run folder or a results.jsonl)")
    rows = read_rows(p)
    if not all_rows:
        rows = latest(rows)
    df = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = pd.Series(dtype="object")
    rest = [c for c in df.columns if c not in COLUMNS]
    return df[list(COLUMNS) + rest]


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (:func:`dimbench.files.atomic_write`): a reader never sees half a file; on failure
    the old file is left as it was and ResultsWriteError names the path."""
    text = json.dumps(obj, indent=2, default=str) + "\n"
    try:
        atomic_write(path, text)
    except WriteError as exc:
        raise ResultsWriteError(str(exc)) from None


def read_environment(path: str | os.PathLike) -> dict[str, Any] | None:
    """The run folder's environment.json, or None when there is none; ResultsError when it is not a JSON object."""
    p = Path(path)
    p = p / ENVIRONMENT_FILE if p.is_dir() or p.suffix != ".json" else p
    if not p.exists():
        return None
    try:
        record = loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ResultsError(f"{p}: not readable as JSON ({exc})") from None
    if not isinstance(record, dict):
        raise ResultsError(f"{p}: expected a JSON object (the run's environment record), got a "
                           f"{type(record).__name__}")
    return record
