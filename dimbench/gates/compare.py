"""The comparison of a run with its baseline: one :class:`Verdict` per (point, gated metric).

Verdicts:

- ``ok``: within tolerance (or the same oom / skipped status as the baseline);
- ``regressed``: worse than the tolerance allows in the declared direction (slower, larger), or the point now
  runs out of memory or fails (an ok row whose value is not a finite number counts as a failure), or a measure
  the baseline has is now skipped or missing at a point that still ran; fails the gate;
- ``changed``: a count that moved either way beyond its (usually zero) tolerance; fails the gate;
- ``improved``: better than the tolerance in the other direction, or an oom point that now fits; passes;
- ``not significant``: a row with samples (the timing ratios) beyond its tolerance, either way, whose samples a
  two-sided Mann-Whitney U test does not tell apart from the baseline's at level ``alpha``: noise, not a
  change; passes, and the note gives p;
- ``not compared``: a hardware-dependent row (timing, measured memory) from another device class than the
  baseline's, whatever its status; passes, and the gate says why;
- ``new`` / ``removed``: a point (or a measure that was not an ok value) in only one of the two; reported, and
  fails the gate only when asked (``fail_on_new`` / ``fail_on_removed``).

Rows with samples are decided as asv decides a benchmark: a regression must be both beyond the tolerance and
significant (the test on the raw samples of the baseline and the run, p < ``alpha``, 0.05 unless given). Where
either side has no samples (a baseline written before version 2) or too few for the test ever to reach ``alpha``,
the tolerance decides alone, and the verdict's note says so.
"""

from __future__ import annotations

import dataclasses
import math

from dimbench.errors import UserError
from dimbench.metrics import Gate, row_declaration

from .baseline import Baseline, BaselineError, Entry, Run

ALWAYS_FAIL = ("regressed", "changed")
ORDER = ("regressed", "changed", "removed", "new", "not significant", "improved", "not compared", "ok")
#: The significance level of the Mann-Whitney U test, unless the command line gives another (``--alpha``).
ALPHA = 0.05


@dataclasses.dataclass(frozen=True)
class Verdict:
    point_key: str
    point: str  # readable: "dit_s_2 32px b1 float32 cpu"
    metric: str
    unit: str
    baseline: float | None
    baseline_status: str | None  # None: not in the baseline
    now: float | None
    now_status: str | None  # None: not in the run
    change: float | None  # relative: (now - baseline) / |baseline|
    tolerance: float | None
    verdict: str
    note: str = ""


@dataclasses.dataclass
class GateResult:
    verdicts: list[Verdict]
    failing: tuple[str, ...]
    notes: list[str]
    baseline: Baseline
    results_dir: str
    alpha: float = ALPHA

    @property
    def failed(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.verdict in self.failing]

    @property
    def passed(self) -> bool:
        return not self.failed

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in ORDER}
        for v in self.verdicts:
            out[v.verdict] += 1
        return out


def parse_tolerances(items: list[str] | None) -> dict[str, float]:
    """``["latency_rel=0.5", "gmacs=0"]`` -> {"latency_rel": 0.5, "gmacs": 0.0}; a bad item is a UserError."""
    out: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        try:
            tol = float(value)
        except ValueError:
            tol = math.nan
        if not sep or not name or not (tol >= 0 and math.isfinite(tol)):
            raise UserError(f"--tolerance {item!r}: expected METRIC=RELATIVE_CHANGE with a number >= 0, e.g. "
                            "latency_rel=0.5 (50 %)")
        out[name] = tol
    return out


def _policy(metric: str, baseline: Baseline, overrides: dict[str, float]) -> Gate:
    declared = row_declaration(metric).gate_policy
    # A metric this installation does not declare (a plugin not loaded) is compared as if hardware-dependent:
    # never across device classes, and either direction fails.
    base = declared or Gate(0.0, None, same_device=True)
    tolerance = overrides.get(metric, baseline.tolerances.get(metric, base.tolerance))
    return dataclasses.replace(base, tolerance=tolerance)


def _other_class(base: Entry, now: Entry, gate: Gate) -> str | None:
    """Why a hardware-dependent row is not compared (another or an unknown device class), or None."""
    if gate.needs_same_device(now.device) and (base.device_class != now.device_class
                                               or "unknown" in (base.device_class, now.device_class)):
        return f"device class differs: baseline {base.device_class!r}, run {now.device_class!r}"
    return None


def _numeric(base: Entry, now: Entry, gate: Gate) -> tuple[float | None, str, str]:
    """(relative change, verdict, note) of two ok values under ``gate`` (same device class checked before)."""
    b, n = float(base.value), float(now.value)
    change = (n - b) / abs(b) if b != 0 else (0.0 if n == 0 else math.copysign(math.inf, n))
    if abs(change) <= gate.tolerance * (1 + 1e-9) + 1e-12:  # the slack absorbs float rounding of exact values
        return change, "ok", ""
    if gate.worse is None:
        return change, "changed", "a count moved: the model is no longer the one baselined"
    worse = change > 0 if gate.worse == "higher" else change < 0
    return change, ("regressed" if worse else "improved"), ""


def smallest_p(n: int, m: int) -> float:
    """The smallest two-sided p-value the exact Mann-Whitney U test can give for samples of sizes n and m (all
    of one below all of the other): with fewer samples than that allows, no change can be significant."""
    return min(1.0, 2 / math.comb(n + m, n)) if n and m else 1.0


def mann_whitney_p(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Two-sided Mann-Whitney U p-value of two samples (scipy: exact for small samples without ties, else the
    normal approximation with tie and continuity corrections); 1 when it is undefined (all values equal)."""
    # scipy takes seconds to import; only a timing row beyond its tolerance needs it
    from scipy.stats import mannwhitneyu

    p = float(mannwhitneyu(a, b, alternative="two-sided").pvalue)
    return p if math.isfinite(p) else 1.0


def _significance(base: Entry, now: Entry, verdict: str, alpha: float) -> tuple[str, str]:
    """A tolerance verdict on a row with samples, tested for significance: (verdict, note)."""
    if base.samples is None or now.samples is None:
        which = "the baseline" if base.samples is None else "the run's row"
        return verdict, f"tolerance only: {which} keeps no samples to test"
    n, m = len(base.samples), len(now.samples)
    if smallest_p(n, m) >= alpha:
        return verdict, f"tolerance only: {n} vs {m} samples cannot reach p < {alpha:g}"
    p = mann_whitney_p(base.samples, now.samples)
    test = f"Mann-Whitney U p={p:.2g}, {n} vs {m} samples"
    if p < alpha:
        return verdict, f"significant: {test}"
    return "not significant", f"beyond tolerance but not significant ({test}, alpha {alpha:g})"


def _by_status(base: Entry, now: Entry) -> tuple[str, str]:
    """Verdict and note when at least one of the two is not an ok value."""
    pair = (base.status, now.status)
    if now.status == "error":
        return "regressed", "the run recorded an error at this point (or a value that is not a finite number)"
    if pair == ("ok", "oom"):
        return "regressed", "out of memory now"
    if pair == ("ok", "skipped"):
        return "regressed", "skipped now, measured in the baseline (re-baseline if that is meant)"
    if pair == ("oom", "ok"):
        return "improved", "fits in memory now"
    if base.status == now.status:
        return "ok", ""
    if base.status == "skipped":
        return "new", f"{now.status} now, skipped in the baseline"
    return "removed", f"{now.status} now, {base.status} in the baseline"


def check_tolerances(overrides: dict[str, float], baseline: Baseline) -> None:
    """A ``--tolerance`` for a metric that is neither gated nor in the baseline is a typo, not a setting."""
    known = {e.metric for e in baseline.entries.values()}
    for metric in overrides:
        if metric not in known and row_declaration(metric).gate_policy is None:
            raise UserError(f"--tolerance {metric}=...: {metric!r} is not a gated metric of this baseline "
                            f"(its metrics: {', '.join(sorted(known))})")


def compare(baseline: Baseline, run: Run, results_dir: str, overrides: dict[str, float] | None = None,
            fail_on_new: bool = False, fail_on_removed: bool = False, alpha: float = ALPHA) -> GateResult:
    """Compare a run's gated rows with the baseline (see the module docstring for the verdicts)."""
    if not 0 < alpha < 1:
        raise UserError(f"--alpha {alpha:g}: expected a significance level between 0 and 1, e.g. 0.05")
    overrides = overrides or {}
    check_tolerances(overrides, baseline)
    where = baseline.path or "the baseline"
    if not baseline.entries:
        raise BaselineError(f"{where}: holds no entries; write it from a run with `dimbench baseline`")
    base_points = {e.point_key for e in baseline.entries.values()}
    run_points = {e.point_key for e in run.entries.values()}
    if not base_points & run_points:
        raise BaselineError(
            f"{where}: mismatched baseline: it holds {len(base_points)} point(s) of suite "
            f"{baseline.suite or '?'!r} (e.g. {sorted(base_points)[0]}), the run in {results_dir} "
            f"{len(run_points)} of suite {', '.join(run.suites) or '?'!r}"
            + (f" (e.g. {sorted(run_points)[0]})" if run_points else "") + ", none in common")
    notes = list(run.warnings)
    if baseline.suite and run.suites and not set(baseline.suite.split(", ")) & set(run.suites):
        notes.append(f"the baseline was written from suite {baseline.suite!r}, the run is of "
                     f"{', '.join(run.suites)!r}: only the points they share are compared")
    verdicts: list[Verdict] = []
    for key, base in sorted(baseline.entries.items()):
        now = run.entries.get(key)
        gate = _policy(base.metric, baseline, overrides)
        if now is None:
            if base.point_key in run_points and base.status == "ok":  # the point ran, this measure is gone
                verdict, note = "regressed", "not measured in this run, measured in the baseline"
            else:
                verdict, note = "removed", ("not measured in this run" if base.point_key in run_points
                                            else "point not in this run")
            verdicts.append(_verdict(base, None, None, gate.tolerance, verdict, note))
            continue
        other_class = _other_class(base, now, gate)
        if now.status == "error":
            change, (verdict, note) = None, _by_status(base, now)
        elif other_class:
            change, verdict, note = None, "not compared", other_class
        elif base.status == "ok" and now.status == "ok":
            change, verdict, note = _numeric(base, now, gate)
            sampled = gate.samples is not None or base.samples is not None or now.samples is not None
            if sampled and verdict in ("regressed", "improved"):
                verdict, note = _significance(base, now, verdict, alpha)
        else:
            change, (verdict, note) = None, _by_status(base, now)
        verdicts.append(_verdict(base, now, change, gate.tolerance, verdict, note))
    for key, now in sorted(run.entries.items()):
        if key not in baseline.entries and now.status != "error":
            verdicts.append(_verdict(now, now, None, None, "new", "not in the baseline", in_baseline=False))
        elif key not in baseline.entries:
            verdicts.append(_verdict(now, now, None, None, "regressed", "the run recorded an error at this point "
                                     "(not in the baseline)", in_baseline=False))
    uncompared = [v for v in verdicts if v.verdict == "not compared"]
    if uncompared:
        notes.append(f"{len(uncompared)} timing/memory row(s) not compared: "
                     + "; ".join(sorted({v.note for v in uncompared})) + " (counts are still compared)")
    tested = [v for v in verdicts if v.note.startswith(("significant: ", "beyond tolerance but not significant"))]
    if tested:
        notes.append(f"{len(tested)} timing row(s) beyond tolerance tested for significance: two-sided Mann-Whitney "
                     f"U test on the raw samples of baseline and run, alpha {alpha:g}; a regression must be both")
    untested = [v for v in verdicts if v.note.startswith("tolerance only: ")]
    if untested:
        reasons = sorted({v.note.removeprefix("tolerance only: ") for v in untested})
        notes.append(f"{len(untested)} timing row(s) beyond tolerance decided by the tolerance alone: "
                     + "; ".join(reasons) + (" (a baseline written by this dimbench keeps the samples)"
                                             if any(r.startswith("the baseline") for r in reasons) else ""))
    failing = ALWAYS_FAIL + (("new",) if fail_on_new else ()) + (("removed",) if fail_on_removed else ())
    verdicts.sort(key=lambda v: (ORDER.index(v.verdict), v.point_key, v.metric))
    return GateResult(verdicts, failing, notes, baseline, results_dir, alpha)


def _verdict(ref: Entry, now: Entry | None, change: float | None, tolerance: float | None, verdict: str,
             note: str, in_baseline: bool = True) -> Verdict:
    return Verdict(
        point_key=ref.point_key, point=ref.point_label(), metric=ref.metric, unit=ref.unit,
        baseline=ref.value if in_baseline else None, baseline_status=ref.status if in_baseline else None,
        now=now.value if now is not None else None, now_status=now.status if now is not None else None,
        change=change, tolerance=tolerance, verdict=verdict, note=note,
    )
