"""Peak host memory of precision/recall (torch-fidelity's prc_features_to_metric) at FID-50K, measured on smaller N
and extrapolated.

    python benchmarks/fid_prc_memory.py [--out prc_memory.json] [--sizes 2500 5000 10000] [--dim 64]

Method: each configuration runs in a fresh process (so its peak is its own): random features, N generated and
N / 5 real (50,000 samples against ADM's 10,000 reference images keeps that ratio), float32, ``--dim`` features
(the distance matrices, which dominate, do not depend on it; a small dimension keeps the run short). The process
records its peak resident set size (``ru_maxrss``) after making the features, runs precision/recall, and records
the peak again: the difference is the call's own peak. Two paths: torch-fidelity's default (``save_cpu_ram=False``:
full N x N, M x M and M x N distance matrices, each built from blocks then concatenated) and the memory-saving one
dimbench runs (``save_cpu_ram=True``: blocks of ``PRC_BATCH`` rows against all features, reduced at once). The
full path is fitted as a·N² (it grows with the square of N), the saving one as b·N at the fixed block size (it grows
with N); both are evaluated at N = 50,000, M = 10,000. The features themselves (50,000 + 10,000 of 2048 float32 =
0.49 GB for pool3) are resident before the call and not counted. CPU only; prints a table and writes ``--out``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FULL_N, FULL_M = 50_000, 10_000


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _child(n: int, m: int, dim: int, save: bool) -> None:
    import numpy as np

    from dimbench.fid.scores import PRC_BATCH, precision_recall

    rng = np.random.default_rng(0)
    fake = rng.normal(size=(n, dim)).astype(np.float32)
    real = rng.normal(size=(m, dim)).astype(np.float32)
    precision_recall(fake[:8], real[:8], batch=PRC_BATCH, save_cpu_ram=save)  # imports and allocator warm
    before = _peak_bytes()
    precision_recall(fake, real, batch=PRC_BATCH, save_cpu_ram=save)
    print(json.dumps({"n": n, "m": m, "save_cpu_ram": save, "peak_delta_bytes": _peak_bytes() - before,
                      "batch": PRC_BATCH}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2500, 5000, 10000], help="generated-feature counts N")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        n, m, dim, save = args.child
        _child(int(n), int(m), int(dim), save == "1")
        return 0
    runs = []
    for save in (False, True):
        for n in args.sizes:
            cmd = [sys.executable, __file__, "--child", str(n), str(n // 5), str(args.dim), "1" if save else "0"]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True, env={"OMP_NUM_THREADS": "1",
                                  "PYTHONPATH": str(ROOT)})
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    out = {"method": __doc__.split("\n\n", 2)[2].strip(), "runs": runs, "extrapolated_to": {"n": FULL_N,
           "m": FULL_M}}
    for save, name, power in ((False, "full", 2), (True, "memory_saving", 1)):
        pts = [(r["n"], r["peak_delta_bytes"]) for r in runs if r["save_cpu_ram"] == save]
        # least squares through the origin of peak = c * N**power, on the measured points
        c = sum(p * n ** power for n, p in pts) / sum(n ** (2 * power) for n, _ in pts)
        out[name] = {"fit": f"peak = {c:.4g} * N^{power} bytes", "peak_gb_at_50k": c * FULL_N ** power / 1e9,
                     "fit_residuals_pct": [round(100 * (c * n ** power - p) / p, 1) for n, p in pts]}
    print(f"{'path':<15}{'N':>8}{'M':>7}{'peak MB':>10}")
    for r in runs:
        print(f"{'memory_saving' if r['save_cpu_ram'] else 'full':<15}{r['n']:>8}{r['m']:>7}"
              f"{r['peak_delta_bytes'] / 1e6:>10.1f}")
    for name in ("full", "memory_saving"):
        print(f"{name}: {out[name]['fit']}, at N = {FULL_N:,}, M = {FULL_M:,}: {out[name]['peak_gb_at_50k']:.2f} GB "
              f"(fit residuals {out[name]['fit_residuals_pct']} %)")
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
