"""How the GPU check's scripts hand in results: one JSON line and one human line per result, written the moment it
exists, so that whatever kills the process later (its phase's time cap, an exception, the call's own limit) cannot
take back what was already written.

    from gpu_report import Summary
    summary = Summary(out_dir, phase="2 scan correctness")      # out_dir None: print only
    summary.record("triton (1, 9806) bf16: out 3.1e-03 ...", backend="triton", rel_err={...})

``OUT/summary.jsonl`` gets ``{"phase": ..., "t": UTC time, "text": the human line, **fields}``; ``OUT/summary.txt``
gets ``[N] text`` (N the phase name's first word, its number: the text file is meant to fit in the 12,000
characters of a device call's output tail, so its lines are short; the JSON carries the detail); both are appended,
flushed and fsynced per line (a few lines per second at most, so the cost is nothing). Each line is also printed,
so a phase's log reads the same. Torch is not imported here (nor by ``dimbench.results``, whose atomic JSON
writer the scripts take from here): the Triton compile check runs in a virtual environment holding triton and rich.

Fault injection, for the test of the check itself (tests/test_gpu_check.py): ``GPU_CHECK_FAULT=PHASE:ACTION[:N]``
(several, comma-separated) makes the process of the phase whose name starts with PHASE (e.g. "2", or "1 compile")
raise (ACTION ``raise``) or hang (``hang``, until its time cap kills it) right after it has recorded N lines
(default 1; 0: as soon as it starts).

    python benchmarks/gpu_report.py note OUT PHASE TEXT [KEY=VALUE ...]   # one line, from a shell script
    python benchmarks/gpu_report.py pack WORK OUT/rest.tar.gz               # WORK's files, no traces, < 15 MiB
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dimbench.results import write_json_atomic  # noqa: E402,F401  (torch-free: the scripts here take it from here)

FAULT_ENV = "GPU_CHECK_FAULT"


def _append(path: Path, line: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


class Summary:
    """Appends one result at a time to OUT/summary.jsonl and OUT/summary.txt (see the module docstring)."""

    def __init__(self, out: str | os.PathLike | None, phase: str):
        self.out = None if out is None else Path(out)
        self.phase = phase
        self.count = 0
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
        self._maybe_fault()  # N = 0: the phase hangs or raises before its first line

    def record(self, text: str, in_txt: bool = True, **fields: Any) -> None:
        """One JSON line (``text`` and ``fields``) and, unless ``in_txt`` is False (detail that a later, shorter
        human line sums up; its JSON line then says ``"in_txt": false``), one human line."""
        clash = {"phase", "t", "text"} & set(fields)
        if clash:  # a field may not stand in for the line's own keys (a kernel's "phase" would hide the check's)
            raise TypeError(f"Summary.record: fields may not be named {', '.join(sorted(clash))}")
        line = {"phase": self.phase, "t": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "text": text, **({} if in_txt else {"in_txt": False}), **fields}
        human = f"[{self.phase.split()[0]}] {text}"
        print(human, flush=True)
        if self.out is not None:
            _append(self.out / "summary.jsonl", json.dumps(line, default=str))
            if in_txt:
                _append(self.out / "summary.txt", human)
        self.count += 1
        self._maybe_fault()

    def _maybe_fault(self) -> None:
        for spec in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
            parts = spec.split(":")
            if len(parts) < 2 or not self.phase.startswith(parts[0]):
                continue
            after = int(parts[2]) if len(parts) > 2 and parts[2] else 1
            if self.count != after:
                continue
            if parts[1] == "raise":
                raise RuntimeError(f"fault injected by {FAULT_ENV}={spec} after {after} line(s)")
            if parts[1] == "hang":
                print(f"[{self.phase}] hanging (fault injected by {FAULT_ENV}={spec})", flush=True)
                while True:
                    time.sleep(3600)


#: rest.tar.gz: what goes in first (the rest follows by name); what never goes in (traces, memory snapshots).
PACK_FIRST = ("*.json", "logs/*", "suite/results.jsonl", "suite/environment.json", "suite/hardware.json",
              "suite/report.html", "profile/results.jsonl", "profile/environment.json", "suite/report.pdf")
PACK_NEVER = ("profile/profiles/*", "*.tmp", "*.lock", "*.pickle", "*trace*.json*", "*.pt")


def pack(work: str | os.PathLike, tarball: str | os.PathLike, max_bytes: int = 15 << 20) -> list[str]:
    """Put WORK's files (not the traces and snapshots) into one gzipped tar under ``max_bytes``, in PACK_FIRST's
    order; a file that would take the tar past the limit is left out and named in the tar's MANIFEST.txt. Written
    beside ``tarball`` and renamed over it. Returns the names left out."""
    import fnmatch
    import io
    import tarfile

    work, tarball = Path(work), Path(tarball)
    files = sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file())
    files = [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in PACK_NEVER)]
    rank = {f: next((i for i, pat in enumerate(PACK_FIRST) if fnmatch.fnmatch(f, pat)), len(PACK_FIRST))
            for f in files}
    files.sort(key=lambda f: (rank[f], f))
    tmp = tarball.with_name(f".{tarball.name}.tmp")
    left_out, margin = [], 256 << 10
    with open(tmp, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for f in files:
            size = (work / f).stat().st_size
            # what the file may add to the tar: compressed formats as they are, text at most half (JSON, logs)
            estimate = size if f.endswith((".pdf", ".gz", ".png", ".zip", ".pt")) else size // 2
            if raw.tell() + estimate + margin > max_bytes:
                left_out.append(f"{f} ({size} B)")
                continue
            tar.add(work / f, arcname=f)
            if raw.tell() > max_bytes - margin:
                left_out.append("(the files after this point: the tar reached its size limit)")
                break
        manifest = "\n".join([f"packed {len(files) - len(left_out)} files of {work}", "left out:", *left_out]) + "\n"
        info = tarfile.TarInfo("MANIFEST.txt")
        info.size = len(manifest.encode())
        tar.addfile(info, io.BytesIO(manifest.encode()))
    os.replace(tmp, tarball)
    return left_out


def _main(argv: list[str]) -> int:
    os.environ.pop(FAULT_ENV, None)  # the shell's own notes (a phase's end, its cut-off) are never the fault
    if len(argv) >= 4 and argv[0] == "note":
        out, phase, text, *pairs = argv[1:]
        fields = {}
        for pair in pairs:
            key, _, value = pair.partition("=")
            try:
                fields[key] = json.loads(value)
            except ValueError:
                fields[key] = value
        Summary(out, phase).record(text, **fields)
        return 0
    if len(argv) == 3 and argv[0] == "pack":
        left_out = pack(argv[1], argv[2])
        print(f"{argv[2]}: {Path(argv[2]).stat().st_size / 2**20:.1f} MiB"
              + (f"; left out: {', '.join(left_out)}" if left_out else ""))
        return 0
    print("usage: gpu_report.py note OUT PHASE TEXT [KEY=VALUE ...] | pack WORK TARBALL", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
