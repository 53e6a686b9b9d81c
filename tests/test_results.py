"""The results store: durable appends, a torn last line tolerated and repaired, resume bookkeeping, load()."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from dimbench import results


def row(key: str, metric: str, status: str = "ok", value: float | None = 1.0, **kw) -> dict:
    base = {c: None for c in results.COLUMNS}
    base.update(point_key=key, metric=metric, status=status, value=value if status == "ok" else None, extra={},
                model=key.split("|")[0], batch=1)
    base.update(kw)
    return base


def test_append_and_read_roundtrip(tmp_path):
    path = tmp_path / "results.jsonl"
    assert results.append_rows(path, [row("a|r32", "gmacs", value=2.5), row("a|r32", "params")]) == 2
    assert results.append_rows(path, []) == 0
    assert results.append_rows(tmp_path, [row("b|r32", "gmacs", status="oom", error="OutOfMemoryError: x")]) == 1
    rows = results.read_rows(tmp_path)  # folder or file, same thing
    assert [(r["point_key"], r["metric"], r["status"]) for r in rows] == [
        ("a|r32", "gmacs", "ok"), ("a|r32", "params", "ok"), ("b|r32", "gmacs", "oom")]
    assert rows[0]["value"] == 2.5
    assert path.read_text().endswith("\n")


def test_torn_last_line_is_ignored_then_repaired(tmp_path):
    path = tmp_path / "results.jsonl"
    results.append_rows(path, [row("a", "gmacs")])
    good_size = path.stat().st_size
    with open(path, "a") as f:
        f.write('{"point_key": "b", "met')  # a writer killed mid-line
    with pytest.warns(UserWarning, match=r"results.jsonl:2: ignoring a half-written last line"):
        rows = results.read_rows(path)
    assert [r["point_key"] for r in rows] == ["a"]
    message = results.repair_torn_tail(path)
    assert message and "half-written" in message
    assert path.stat().st_size == good_size
    assert results.repair_torn_tail(path) is None  # nothing left to repair
    results.append_rows(path, [row("c", "gmacs")])
    assert [r["point_key"] for r in results.read_rows(path)] == ["a", "c"]


def test_complete_object_without_newline_counts_as_torn(tmp_path):
    path = tmp_path / "results.jsonl"
    results.append_rows(path, [row("a", "gmacs")])
    with open(path, "a") as f:
        f.write(json.dumps(row("b", "gmacs")))  # killed between the object and its newline
    results.repair_torn_tail(path)
    results.append_rows(path, [row("c", "gmacs")])
    assert [r["point_key"] for r in results.read_rows(path)] == ["a", "c"]


def test_damaged_middle_line_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(row("a", "gmacs")) + "\nnot json\n" + json.dumps(row("b", "gmacs")) + "\n")
    with pytest.raises(results.ResultsError, match=r"results.jsonl:2: not a result row"):
        results.read_rows(path)


def test_completed_keys_for_resume():
    rows = [row("a", "gmacs"), row("a", "latency_ms", status="error", error="boom"),
            row("b", "gmacs", status="oom", error="x"), row("b", "mfu", status="skipped", error="CUDA only")]
    assert results.completed(rows) == {("a", "gmacs", None), ("a", "latency_ms", None), ("b", "gmacs", None),
                                       ("b", "mfu", None)}
    assert results.completed(rows, retry_errors=True) == {("a", "gmacs", None), ("b", "gmacs", None),
                                                          ("b", "mfu", None)}


def test_load_returns_contract_columns_and_latest_rows(tmp_path):
    results.append_rows(tmp_path, [
        row("a", "gmacs", value=1.0),
        row("a", "latency_ms", status="error", error="boom"),
        row("b", "gmacs", value=3.0),
        row("a", "latency_ms", value=7.0),  # the retry of the error above
    ])
    df = results.load(tmp_path)
    assert isinstance(df, pd.DataFrame)
    assert tuple(df.columns[: len(results.COLUMNS)]) == results.COLUMNS
    assert len(df) == 3
    lat = df[(df.point_key == "a") & (df.metric == "latency_ms")]
    assert lat.status.tolist() == ["ok"] and lat.value.tolist() == [7.0]
    history = results.load(tmp_path / "results.jsonl", all_rows=True)
    assert len(history) == 4


def test_load_empty_and_missing(tmp_path):
    (tmp_path / "results.jsonl").write_text("")
    df = results.load(tmp_path)
    assert df.empty and tuple(df.columns) == results.COLUMNS
    with pytest.raises(FileNotFoundError, match="no results file"):
        results.load(tmp_path / "nowhere")


def test_environment_json_is_written_atomically(tmp_path):
    results.write_json_atomic(tmp_path / "environment.json", {"a": 1})
    assert results.read_environment(tmp_path) == {"a": 1}
    assert not list(tmp_path.glob("*.tmp"))
    assert results.read_environment(tmp_path / "other") is None


def test_git_commit_can_be_declared_outside_a_checkout(tmp_path, monkeypatch):
    """A tree copied without .git (a lent GPU machine) records the commit it was told, saying so."""
    from dimbench.environment import git_commit

    monkeypatch.delenv("DIMBENCH_GIT_COMMIT", raising=False)
    assert git_commit(tmp_path)["commit"] is None
    monkeypatch.setenv("DIMBENCH_GIT_COMMIT", "abc123")
    record = git_commit(tmp_path)
    assert record["commit"] == "abc123" and "DIMBENCH_GIT_COMMIT" in record["source"]
