"""The environment record written beside every run's results (``environment.json``).

It says on what and with which code paths the numbers were obtained: versions (python, torch, CUDA, triton,
timm, dimbench), the devices (GPU names, memory, driver), the TF32 setting, the scaled-dot-product-attention
backends enabled, the selective-scan backends available, the project's git commit, the command line.

Collecting it never creates a CUDA context (device names come from NVML when it is there, otherwise from
``torch.cuda.get_device_properties``, which does not create one), so the runner process does not show up in the
device memory a worker measures.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from models import scan

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def now_iso() -> str:
    """UTC time as ISO 8601 with seconds (what every started_at holds)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _version(module: str) -> str | None:
    try:
        return version(module)
    except Exception:
        return None


def git_commit(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """The project's commit and whether the working tree had uncommitted changes (None outside a checkout).

    A copy of the tree without its .git folder (a lent GPU machine gets one) can be told its commit through
    ``DIMBENCH_GIT_COMMIT``; the record then says it was declared, not read from git.
    """
    declared = os.environ.get("DIMBENCH_GIT_COMMIT")
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            if declared:
                return {"commit": declared, "dirty": None, "source": "DIMBENCH_GIT_COMMIT (no .git here)"}
            return {"commit": None, "dirty": None}
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=10)
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        if declared:
            return {"commit": declared, "dirty": None, "source": "DIMBENCH_GIT_COMMIT (git not runnable)"}
        return {"commit": None, "dirty": None}


def attention_backends() -> dict[str, bool]:
    """Which scaled_dot_product_attention backends torch may pick (flags only; the kernel that ran is per row)."""
    out = {}
    for name in ("flash", "mem_efficient", "math", "cudnn"):
        fn = getattr(torch.backends.cuda, f"{name}_sdp_enabled", None)
        if fn is not None:
            out[name] = bool(fn())
    return out


def tf32() -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # newer torch warns about the legacy allow_tf32 flags; we only read them
        return {
            "cuda_matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        }


def _nvml_devices() -> tuple[list[dict[str, Any]], str | None, str | None]:
    """GPUs as NVML sees them, the driver version, and why NVML was not usable (or None)."""
    try:  # imported where NVML is read: without nvidia-ml-py the record says so
        import pynvml
    except ImportError:
        return [], None, "nvidia-ml-py not installed"
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        return [], None, f"NVML unavailable ({type(exc).__name__})"
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else driver
        devices = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            devices.append({
                "index": i,
                "name": name.decode() if isinstance(name, bytes) else name,
                "memory_total_gib": round(mem.total / 2**30, 2),
            })
        return devices, driver, None
    finally:
        pynvml.nvmlShutdown()


def cuda_devices() -> list[dict[str, Any]]:
    """The CUDA devices torch can use (respecting CUDA_VISIBLE_DEVICES), with name, memory and capability."""
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        out.append({
            "index": i,
            "name": props.name,
            "memory_total_gib": round(props.total_memory / 2**30, 2),
            "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
        })
    return out


def scan_backends(device: str) -> Any:
    """What models.scan.available_backends(device) says (or why it could not be asked)."""
    try:
        return scan.available_backends(device)
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}: {exc}"


def scan_choice(device: str) -> str:
    """The scan backend a model gets on ``device`` without naming one, and why (models.scan.choice_reason: the
    environment variable, or auto's choice with every backend passed over and its reason)."""
    try:
        return scan.choice_reason(scan.resolve_backend(None, device), device)
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}: {exc}"


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC 7B13"), from /proc/cpuinfo on Linux; the platform's processor string
    elsewhere. Regression gates compare timings only between runs on the same model (see dimbench.gates)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def collect(argv: list[str] | None = None, device: str | None = None) -> dict[str, Any]:
    """The environment record. ``device`` (resolved, e.g. "cuda") selects which scan backends are listed."""
    nvml, driver, nvml_note = _nvml_devices()
    cuda = cuda_devices()
    devices = ["cpu"] + [f"cuda:{d['index']}" for d in cuda]
    record: dict[str, Any] = {
        "started_at": now_iso(),
        "hostname": socket.gethostname(),
        "command": shlex.join(argv if argv is not None else sys.argv),
        "cwd": os.getcwd(),
        "platform": platform.platform(),
        "cpu": {"processor": platform.processor() or platform.machine(), "model": cpu_model(),
                "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "triton": _version("triton"),
            "timm": _version("timm"),
            "fvcore": _version("fvcore"),
            "mamba_ssm": _version("mamba-ssm") or _version("mamba_ssm"),
            "dimbench": _version("dimbench"),
        },
        "device": device,
        "cuda_devices": cuda,
        "gpu_name": cuda[0]["name"] if cuda else None,
        "driver": driver,
        "nvml": nvml or nvml_note,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "tf32": tf32(),
        "attention_backends_enabled": attention_backends(),
        "scan_backends": {d: scan_backends(d) for d in devices},
        "scan_backend_override": os.environ.get("DIMBENCH_SCAN_BACKEND"),
        "scan_choice": {d: scan_choice(d) for d in devices},
        "git": git_commit(),
    }
    return record


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    """The fields that must match for two runs' numbers to be comparable (used to warn on resume)."""
    return {
        "hostname": record.get("hostname"),
        "versions": record.get("versions"),
        "gpu_name": record.get("gpu_name"),
        "driver": record.get("driver"),
        "tf32": record.get("tf32"),
        "git_commit": (record.get("git") or {}).get("commit"),
    }


def collect_isolated(argv: list[str], device: str | None, timeout: float = 120) -> dict[str, Any]:
    """:func:`collect` in a child process, so that whatever CUDA state it creates (device properties can create
    a context on some drivers) dies with it instead of living on in the runner beside the measured workers."""
    cmd = [sys.executable, "-m", "dimbench.environment", "--device", str(device), "--argv", json.dumps(argv)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode == 0:
            return json.loads(proc.stdout)
        problem = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    return {"started_at": now_iso(), "command": shlex.join(argv), "device": device,
            "error": f"environment could not be collected: {problem}"}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m dimbench.environment",
                                     description="Print the environment record as JSON.")
    parser.add_argument("--device", default=None)
    parser.add_argument("--argv", default=None, help="the command line to record, as a JSON list")
    args = parser.parse_args()
    argv = json.loads(args.argv) if args.argv else None
    device = None if args.device in (None, "None") else args.device
    print(json.dumps(collect(argv, device), indent=2, default=str))


if __name__ == "__main__":
    main()
