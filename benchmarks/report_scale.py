"""A synthetic large results folder, for timing ``dimbench report`` on many points (issue 25, item 10).

    python benchmarks/report_scale.py --points 100000 --out /tmp/report100k
    time dimbench report /tmp/report100k

The folder is shaped like a big counts-and-timing sweep written by the runner (docs/contracts.md): 20 models of
the three registered families x 250 resolutions (16 px steps) x 20 batch sizes, cut to ``--points`` points; at
each point a ``gmacs`` row (count) and a ``latency_ms`` row (forward), the latency an error row at 1 % of the
points and an oom row at another 1 %. About 1 kB of JSON per point (100 MB for 100,000 points). Values are
smooth functions of the tokens, not measurements.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

FAMILIES = {"dim": (0.80, 0.0), "dit": (0.4469, 6.383e-5), "uvit": (0.50, 7.0e-5)}
MODELS = [f"{fam}_{size}_2" for size in ("s", "b", "l", "xl", "h", "g", "t") for fam in FAMILIES][:20]
RESOLUTIONS = [16 * i for i in range(1, 251)]
BATCHES = [1 << i for i in range(10)] + [3 * (1 << i) for i in range(10)]


def rows_of(model: str, res: int, batch: int, n: int) -> list[dict]:
    lin, quad = FAMILIES[model.split("_")[0]]
    tokens = (res // 16) ** 2
    gmacs = (lin * tokens + quad * tokens * tokens) * batch
    key = f"{model}|r{res}|b{batch}|bfloat16|cuda"
    base = {"suite": "scale", "point_key": key, "model": model, "resolution": res, "input_size": res // 8,
            "batch": batch, "dtype": "bfloat16", "device": "cuda", "started_at": "2025-01-01T00:00:00+00:00",
            "duration_s": 0.5, "error": None}
    status = "error" if n % 100 == 7 else "oom" if n % 100 == 42 else "ok"
    latency = {**base, "task": "forward", "metric": "latency_ms", "value": 0.25 + gmacs / 300.0, "unit": "ms",
               "status": status, "method": "cuda events, median of 50 after 10 warm-up",
               "extra": {"p10_ms": 0.2 + gmacs / 310.0, "p90_ms": 0.3 + gmacs / 290.0, "scan_backend": "chunked"}}
    if status != "ok":
        latency.update(value=None, error="CUDA out of memory" if status == "oom" else "RuntimeError: injected")
    return [{**base, "task": "count", "metric": "gmacs", "value": gmacs, "unit": "GMAC", "status": "ok",
             "method": "meta-device FlopCounterMode (1 MAC = 2 FLOPs)", "extra": {"gmacs_per_image": gmacs / batch}},
            latency]


def write(out: Path, points: int) -> int:
    out.mkdir(parents=True, exist_ok=True)
    grid = itertools.product(MODELS, RESOLUTIONS, BATCHES)
    with open(out / "results.jsonl", "w", encoding="utf-8") as f:
        for n, (model, res, batch) in enumerate(itertools.islice(grid, points)):
            for row in rows_of(model, res, batch, n):
                f.write(json.dumps(row) + "\n")
    env = {"command": f"benchmarks/report_scale.py --points {points}", "suite": "scale", "device": "cuda",
           "gpu_name": "synthetic", "versions": {"python": "3", "torch": "2"}}
    (out / "environment.json").write_text(json.dumps(env, indent=2), encoding="utf-8")
    return min(points, len(MODELS) * len(RESOLUTIONS) * len(BATCHES))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    n = write(Path(args.out), args.points)
    print(f"{args.out}: {n} points, {2 * n} rows")


if __name__ == "__main__":
    main()
