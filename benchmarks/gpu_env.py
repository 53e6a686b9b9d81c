"""Phase 1 of ``scripts/gpu_check.sh``: what ran where. The card (name, multiprocessors, L2, memory, capability, clocks,
power limit, driver), the software (torch, CUDA, Triton, Python), the commit, and which selective-scan backend each
request would run, one summary line each. (The phase's compile check, ``benchmarks/scan_static.py --summary``,
writes its own lines, from the rows it writes to its JSON.)

    python benchmarks/gpu_env.py --summary OUT [--json FILE]

The commit is ``$DIMBENCH_GIT_COMMIT`` when set (the copy of the tree on a device machine may have no .git), else
``git rev-parse HEAD`` with "dirty" when ``git status`` lists changes, else "unknown". Clocks and the power limit
come from ``nvidia-smi`` where it runs (the current SM clock of an idle card is low: it is read, not set).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

from gpu_report import Summary, write_json_atomic  # noqa: E402

SMI_FIELDS = ("name", "driver_version", "memory.total", "clocks.max.sm", "clocks.sm", "clocks.max.mem",
              "power.limit", "temperature.gpu")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--summary", help="append the lines to SUMMARY/summary.{txt,jsonl}")
    p.add_argument("--json", help="write everything read here")
    p.add_argument("--phase", default="1 environment")
    return p.parse_args(argv)


def commit() -> str:
    env = os.environ.get("DIMBENCH_GIT_COMMIT", "").strip()
    if env:
        return env
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return sha + (" (dirty: uncommitted changes)" if dirty else "")
    except Exception:
        return "unknown (no git here and DIMBENCH_GIT_COMMIT unset)"


def nvidia_smi() -> dict | str:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(SMI_FIELDS)}", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True, timeout=20).stdout.strip().splitlines()
    except Exception as exc:
        return f"nvidia-smi did not run ({type(exc).__name__})"
    return dict(zip(SMI_FIELDS, (v.strip() for v in out[0].split(",")), strict=False)) if out else "no GPU listed"


def environment() -> dict:
    import torch

    info: dict = {"commit": commit(), "python": platform.python_version(), "torch": torch.__version__,
                  "cuda": torch.version.cuda, "triton": _version("triton"), "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["device"] = {"name": p.name, "multiprocessors": p.multi_processor_count,
                          "l2_bytes": getattr(p, "L2_cache_size", None), "memory_bytes": p.total_memory,
                          "capability": f"{p.major}.{p.minor}"}
        info["nvidia_smi"] = nvidia_smi()
    from models.scan import available_backends, resolve_backend

    device = "cuda" if torch.cuda.is_available() else "cpu"
    info["scan_backends"] = {name: {"available": ok, "reason": reason}
                             for name, (ok, reason) in available_backends(device).items()}
    try:
        info["scan_auto"] = resolve_backend(None, device)
    except Exception as exc:
        info["scan_auto"] = f"fails: {exc}"
    info["scan_device"] = device
    return info


def report(info: dict, summary: Summary) -> None:
    summary.record(f"commit {info['commit']}; torch {info['torch']} (CUDA {info['cuda']}), triton {info['triton']}, "
                   f"python {info['python']}", **{k: info[k] for k in ("commit", "torch", "cuda", "triton", "python")})
    if "device" in info:
        d, smi = info["device"], info.get("nvidia_smi")
        text = (f"{d['name']}: {d['multiprocessors']} SMs, L2 {(d['l2_bytes'] or 0) / 2**20:.0f} MiB, "
                f"{d['memory_bytes'] / 2**30:.1f} GiB, sm_{d['capability'].replace('.', '')}")
        if isinstance(smi, dict):
            text += (f", driver {smi.get('driver_version')}, SM clock max {smi.get('clocks.max.sm')} (now "
                     f"{smi.get('clocks.sm')}), memory clock max {smi.get('clocks.max.mem')}, power limit "
                     f"{smi.get('power.limit')}, {smi.get('temperature.gpu')} C")
        else:
            text += f"; {smi}"
        summary.record(text, device=d, nvidia_smi=smi)
    else:
        summary.record("no CUDA GPU visible to torch: a dry run (the CUDA-only steps say they are skipped)",
                       device=None)
    usable = [n for n, b in info["scan_backends"].items() if b["available"]]
    missing = {n: b["reason"] for n, b in info["scan_backends"].items() if not b["available"]}
    summary.record(f"scan on {info['scan_device']}: auto -> {info['scan_auto']}; can run: {', '.join(usable)}; "
                   f"cannot: {', '.join(f'{n} ({_short(r)})' for n, r in missing.items()) or 'none'}",
                   scan_auto=info["scan_auto"], scan_backends=info["scan_backends"])


def _short(reason: str, limit: int = 70) -> str:
    return reason if len(reason) <= limit else reason[:limit - 3].rstrip() + "..."


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:
        return None


def main(argv=None) -> int:
    args = parse_args(argv)
    summary = Summary(args.summary, args.phase)
    info = environment()
    if args.json:
        write_json_atomic(args.json, info)
    report(info, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
