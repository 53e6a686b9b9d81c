"""The files dimbench writes and the JSON it is handed: one way to replace a file, one way to keep a second writer
out of a file's folder, one way to parse JSON a user may have made.

- :func:`atomic_write` replaces a file so that a reader sees the old file or the new one, never half of one, and
  a crash (kill -9, a full disk, a power cut) leaves no temporary file posing as a result: the content goes to a
  temporary file with a unique name in the same folder (two writers never share one), is fsync'ed, renamed over
  the target, and the folder is fsync'ed so that the rename itself survives a power cut. On failure the
  temporary file is removed and :class:`WriteError` names the file and the cause (``No space left on device``,
  ``Permission denied``), whatever library was writing (torch reports a full disk as ``unexpected pos``). A
  temporary file of the same target left by a writer that was killed (its process is gone) is removed by the
  next write.
- :func:`folder_lock` holds an exclusive lock on a file's folder while a command reads, merges and replaces a
  file there (a baseline update), so that a second writer waits instead of losing the first one's entries.
- :func:`loads` parses JSON and refuses, as a ``ValueError`` the callers already turn into a message naming the
  file, what is nested deeper than any dimbench file is (``[[[[...]]]]`` would otherwise be a RecursionError
  here or in whatever walks the object later).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from dimbench.errors import WriteError

#: Deeper than any file dimbench writes (a result row is 3 levels deep, environment.json 4), and shallow enough
#: that every recursive walk of the object (clipping strings, json.dumps) stays far from Python's recursion limit.
MAX_JSON_DEPTH = 64


def atomic_write(path: str | os.PathLike, content: bytes | str | Callable[[BinaryIO], Any]) -> Path:
    """Replace ``path`` with ``content`` (bytes, text as UTF-8, or a function that writes into the open binary
    file: ``lambda f: torch.save(obj, f)``), atomically and durably; returns the path. WriteError on failure."""
    p = Path(path)
    _remove_stale(p)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")  # unique: two writers never meet
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
        _fsync_folder(p.parent)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        cause = _os_error(exc)
        if cause is None:
            raise
        raise WriteError(f"{p}: cannot write ({cause.strerror or cause})") from None
    return p


def _remove_stale(p: Path) -> None:
    """Remove the temporary files of ``p`` left by writers that were killed (kill -9, SIGTERM): their process is
    gone. A live writer's file (another process writing ``p`` now) is left alone."""
    for stale in p.parent.glob(f".{glob.escape(p.name)}.*.tmp"):
        pid = stale.name[len(p.name) + 2:].split(".")[0]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                stale.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # (PermissionError: alive, another user's)
        return True
    return True


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind an exception: itself, or what a library (torch's zip writer) wrapped."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable; a file system that cannot fsync a folder is left to its own rules."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def folder_lock(path: str | os.PathLike, *, what: str = "") -> Iterator[None]:
    """Hold an exclusive lock on the folder of ``path`` (created if missing) for a read-merge-replace of it;
    a second holder waits (it is told so on stderr). The kernel releases the lock when the process dies.

    The folder, not the file, is locked: the file is replaced by a rename, and a lock on the old file would not
    keep out a writer that opened the new one."""
    p = Path(path)
    folder = p.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY)
    except OSError as exc:
        raise WriteError(f"{p}: cannot write into {folder} ({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"dimbench: waiting for another command writing {what or 'a file'} in {folder}", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def loads(data: str | bytes) -> Any:
    """``json.loads``, refusing nesting deeper than :data:`MAX_JSON_DEPTH` with a ValueError."""
    try:
        obj = json.loads(data)
    except RecursionError:
        raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep") from None
    opening = data.count(b"[") + data.count(b"{") if isinstance(data, bytes) else data.count("[") + data.count("{")
    if opening > MAX_JSON_DEPTH and _depth(obj) > MAX_JSON_DEPTH:  # (the count bounds the depth: rarely walked)
        raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep")
    return obj


def _depth(obj: Any) -> int:
    """How deep lists and objects nest in ``obj`` (iteratively: no recursion limit to meet)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, level)
            if deepest > MAX_JSON_DEPTH:
                return deepest
            stack.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest
