"""Performance-regression gates: compare a run with a committed baseline.

    dimbench baseline RESULTS_DIR -o baselines/cpu.json      # write (or update) a baseline, deliberately
    dimbench gate RESULTS_DIR --baseline baselines/cpu.json  # exit 0 pass, 1 regression, 2 bad input

What is compared, and how, is each row's declaration (:class:`dimbench.metrics.Gate`, ``Row.gate_policy``):
counts exactly (a change either way fails: the model is no longer the one baselined), predicted memory within
1 %, timings as ratios to a reference matmul timed in the same run (``latency_rel``, ``train_step_rel``) within
a tolerance wide enough for a noisy machine, measured memory within 2 %. A timing change beyond its tolerance is a
regression only when a two-sided Mann-Whitney U test on the raw samples (kept in the baseline) finds it
significant, as asv decides; otherwise it is "not significant". Rows that depend on the hardware are
compared only when the run and the baseline come from the same device class (GPU name, or CPU model and thread
count); otherwise the gate says so and compares the counts alone.

Modules: ``baseline`` (the baseline file: build, read with validation, write), ``compare`` (verdicts),
``render`` (console table, Markdown, JSON), ``cli`` (the two commands).
"""

from .baseline import Baseline, BaselineError, build_baseline, device_class, load_baseline, write_baseline
from .compare import GateResult, Verdict, compare, parse_tolerances

__all__ = [
    "Baseline",
    "BaselineError",
    "GateResult",
    "Verdict",
    "build_baseline",
    "compare",
    "device_class",
    "load_baseline",
    "parse_tolerances",
    "write_baseline",
]
