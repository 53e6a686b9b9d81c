"""The scores of a quality run as a reader checks them: every stage's proxy distance against the floor real digits
score under the same sample count, the classifier's accuracy against its accuracy on real digits, seeds and their
spread, what each family's training cost, and a verdict line per family that makes a failed run obvious.

Rows read (docs/contracts.md): ``fd_proxy*`` / ``proxy_acc*`` with ``extra.stage`` (and, from multi-seed runs,
``extra.sd``, ``min``, ``max``, ``per_seed``; ``extra.fd_floor`` and ``x_floor``), the reference rows
``fd_proxy_real`` and ``proxy_acc_real``, and the train metric's final rows at the same point.
"""

from __future__ import annotations

import dataclasses
import itertools

from . import declared
from .data import Results
from .document import Cell, Table, fmt, px

#: The bar a trained stage must clear to count as learning (issue 20): accuracy on the class asked for, the
#: distance as a multiple of the real-digit floor, and the trained distance against the untrained one.
LEARNS_ACCURACY = 90.0
LEARNS_FLOOR_MULTIPLE = 2.5
LEARNS_UNTRAINED_FRACTION = 0.2
WEAK_TO_STRONG_ACCURACY = 80.0


@dataclasses.dataclass
class Score:
    """One stage of one model: the proxy distance (mean over seeds) and the accuracy paired with it."""

    model: str
    point_key: str
    resolution: int
    metric: str
    status: str
    fd: float | None
    extra: dict
    acc: float | None
    acc_extra: dict

    @property
    def seeds(self) -> int:
        return len(self.extra.get("seeds") or [0])

    @property
    def x_floor(self) -> float | None:
        return self.extra.get("x_floor")

    @property
    def image_px(self) -> int:
        return int(self.extra.get("image_px") or self.resolution)

    @property
    def weak_to_strong(self) -> bool:
        return "weak-to-strong" in str(self.extra.get("stage", ""))

    def rank(self) -> tuple:
        """Untrained, trained, weak-to-strong, then 2x / 3x plain and guided."""
        if self.metric.endswith("_untrained"):
            return (0, self.image_px, self.metric)
        if "_up" in self.metric:
            return (3, self.image_px, self.metric)
        return (2 if self.weak_to_strong else 1, self.image_px, self.metric)

    def stage(self) -> str:
        if "_up" in self.metric:
            factor = self.metric.split("_up")[1].split("_")[0]
            return f"{factor}x upsampled, " + ("Upsample Guidance" if self.metric.endswith("_ug") else "plain")
        return str(self.extra.get("stage", self.metric))


def staged_metrics(results: Results) -> list[str]:
    """The proxy distance rows of a quality run (those whose rows say which stage they score)."""
    return [m for m in results.metrics() if m.startswith("fd_") and m != "fd_proxy_real"
            and any(isinstance(e, dict) and "stage" in e for e in results.rows(m)["extra"])]


def scores(results: Results) -> list[Score]:
    """Every staged distance with its accuracy, in model order then stage order."""
    out = []
    for metric in staged_metrics(results):
        acc_name = results.declaration(metric).pairs_with  # the classifier accuracy of the same samples
        accs = results.rows(acc_name) if acc_name and results.has(acc_name) else None
        for r in results.rows(metric).itertuples(index=False):
            if not isinstance(r.extra, dict) or "stage" not in r.extra:
                continue
            acc, acc_extra = None, {}
            if accs is not None:
                match = accs[(accs["point_key"] == r.point_key) & (accs["status"] == "ok")]
                if len(match):
                    acc, acc_extra = float(match["value"].iloc[0]), match["extra"].iloc[0]
            out.append(Score(r.model, r.point_key, int(r.resolution), metric, r.status,
                             float(r.value) if r.status == "ok" else None, r.extra, acc, acc_extra))
    order = {m: i for i, m in enumerate(results.models)}
    return sorted(out, key=lambda s: (order.get(s.model, len(order)), s.rank()))


def _mean_sd(value: float | None, extra: dict, digits: int = 1) -> str:
    if value is None:
        return "—"
    text = f"{value:.{digits}f}"
    if len(extra.get("seeds") or []) > 1 and extra.get("sd") is not None:
        text += f" ± {extra['sd']:.{digits}f}"
    return text


def _references(results: Results) -> list[tuple[int, int, float, dict, float | None]]:
    """(image px, samples, floor, its extra, real accuracy) per distinct floor measured (one per resolution)."""
    if not results.has("fd_proxy_real", ok=True):
        return []
    acc = results.rows("proxy_acc_real")
    seen: dict[tuple[int, int], tuple] = {}
    for r in results.rows("fd_proxy_real").itertuples(index=False):
        if r.status != "ok":
            continue
        key = (int(r.extra.get("image_px") or r.resolution), int(r.extra.get("n_fake") or 0))
        if key in seen:
            continue
        a = acc[(acc["point_key"] == r.point_key) & (acc["status"] == "ok")]
        seen[key] = (*key, float(r.value), r.extra, float(a["value"].iloc[0]) if len(a) else None)
    return [seen[k] for k in sorted(seen)]


def stage_table(results: Results) -> Table:
    """Reference rows (real digits) first, then model x stage: distance, multiple of the floor, accuracy, seeds."""
    body = []
    for image_px, n, floor, extra, acc in _references(results):
        draws = len(extra.get("per_draw") or [])
        body.append([Cell("real digits"), Cell(f"floor: {n} real training digits vs the held-out ones"
                                                + (f" (mean of {draws} draws)" if draws else "")),
                     Cell(px(image_px)), Cell("—"), Cell(f"{floor:.1f}" + (f" ± {extra['sd']:.1f}"
                                                                           if draws > 1 else "")),
                     Cell("1.00"), Cell("—" if acc is None else f"{acc:.1f} (held-out digits)"), Cell("—"),
                     Cell("—"), Cell(str(n))])
    for s in scores(results):
        e = s.extra
        fd_cell = Cell(_mean_sd(s.fd, e)) if s.status == "ok" else Cell(s.status, s.status)
        sampler = f"{e.get('sampler', '?')}, {e.get('sampler_steps', '?')} steps"
        guidance = f"s = {e['guidance_s']:g} (w = {e['guidance_w']:g})" if e.get("guidance_s") else "none"
        body.append([Cell(s.model), Cell(s.stage()), Cell(px(s.image_px)), Cell(str(s.seeds)), fd_cell,
                     Cell(f"{s.x_floor:.2f}" if s.x_floor else "—", "ok" if s.x_floor else "missing"),
                     Cell(_mean_sd(s.acc, s.acc_extra), "ok" if s.acc is not None else "missing"), Cell(sampler),
                     Cell(guidance), Cell(str(e.get("n_fake", "")))])
    return Table("Proxy quality per model and stage. First the reference rows: real training digits against the "
                 "held-out digits under the same number of samples (the floor a perfect model would score; random "
                 "subsets with every class equally often) and the classifier's accuracy on the held-out digits "
                 "themselves. Then each stage: the Fréchet distance of the features of dimbench's own small "
                 "classifier between generated and held-out real digits (lower is better; a proxy, NOT the standard "
                 "FID; comparable only within this run's classifier and sample counts), that distance as a multiple "
                 "of the floor measured at the same image size and sample count, and the classifier's accuracy on "
                 "class-conditional samples (higher is better; 10 % is chance). With several seeds: mean ± standard "
                 "deviation over the seeds' models. Each row's full method is in the Methods section.",
                 ["model", "stage", "images", "seeds", "proxy FD", "× floor", "accuracy %", "sampler", "guidance",
                  "samples"], body, [False, False, True, True, True, True, True, False, False, True])


def final_value(results: Results, metric: str, key: str) -> tuple[float, dict] | None:
    """(value, extra) of a metric's ok row at a point, or None."""
    if not results.has(metric, ok=True):
        return None
    rows = results.rows(metric)
    rows = rows[(rows["point_key"] == key) & (rows["status"] == "ok")]
    return (float(rows["value"].iloc[0]), rows["extra"].iloc[0]) if len(rows) else None


def _batch(results: Results, key: str) -> int:
    return int(results.df.loc[results.df["point_key"] == key, "batch"].iloc[0])


def training_table(results: Results) -> Table | None:
    """Per trained point: what training cost (time, images/s, FLOPs) next to the score it reached."""
    if not results.has("train_time_s", ok=True) and not results.has("train_images_per_s", ok=True):
        return None
    body = []
    trained = {(s.model, s.point_key): s for s in scores(results) if s.metric == "fd_proxy"}
    for (model, key), s in trained.items():
        time_s = final_value(results, "train_time_s", key)
        rate = final_value(results, "train_images_per_s", key)
        tflop = final_value(results, "train_tflop", key)
        params = final_value(results, "params", key)
        steps = (time_s or rate or tflop or (0, {}))[1].get("steps")
        fam = declared.family(model)
        body.append([
            Cell(model), Cell(fam.display if fam else "—"), Cell(s.stage()),
            Cell(fmt(params[0], "params") if params else "—"),
            Cell(f"{steps} x {_batch(results, key)}" if steps else "—"),
            Cell(str(s.seeds)), Cell(_mean_sd(*time_s) if time_s else "—"),
            Cell(f"{rate[0]:.0f}" if rate else "—"),
            Cell(f"{tflop[0]:.2f}" if tflop else "—"),
            Cell(f"{tflop[1]['forward_gflops_per_image'] * 1e3:.1f}" if tflop and tflop[1].get(
                "forward_gflops_per_image") else "—"),
            Cell(f"{s.x_floor:.2f}" if s.x_floor else "—"), Cell(_mean_sd(s.acc, s.acc_extra)),
        ])
    if not body:
        return None
    return Table("What each model's training cost to reach its score, so that families are compared per second and "
                 "per FLOP as well as per step: training time (the logged windows' wall time, checkpoint writes and "
                 "held-out losses excluded; mean ± sd over seeds), training images per second (median window), "
                 "training FLOPs = 3 × the forward FLOPs of one image (dimbench's count, 2 per multiply-add) × the "
                 "images seen, and the forward MFLOPs per image they come from.",
                 ["model", "family", "stage", "params", "steps", "seeds", "training time s", "train img/s",
                  "training TFLOP", "forward MFLOP / image", "FD × floor", "accuracy %"], body,
                 [False, False, False, True, True, True, True, True, True, True, True, True])


def verdicts(results: Results) -> list[str]:
    """One line per family's trained stage (and weak-to-strong stage) against the bar, the reference, which
    families the seeds cannot tell apart, and what a training image costs relative to the first baseline."""
    refs = _references(results)
    lines = []
    if refs:
        parts = [f"{floor:.1f} at {px(image_px)} ({n} samples)" for image_px, n, floor, _, _ in refs]
        accs = [f"{acc:.1f} %" for *_, acc in refs if acc is not None]
        lines.append("Reference: real digits score a proxy FD of " + "; ".join(parts) + " against the held-out digits "
                     "(the floor), and the classifier is " + (accs[0] if len(set(accs)) == 1 else ", ".join(accs))
                     + " accurate on the held-out digits.")
    all_scores = scores(results)
    untrained = {s.model: s for s in all_scores if s.metric == "fd_proxy_untrained" and s.fd is not None}
    trained = [s for s in all_scores if s.metric == "fd_proxy" and s.fd is not None and not s.weak_to_strong]
    for s in trained:
        checks = []
        ok_acc = s.acc is not None and s.acc >= LEARNS_ACCURACY
        ok_fd = s.x_floor is not None and s.x_floor <= LEARNS_FLOOR_MULTIPLE
        base = untrained.get(s.model)
        ok_untrained = base is not None and s.fd < LEARNS_UNTRAINED_FRACTION * base.fd
        checks.append(f"accuracy {_mean_sd(s.acc, s.acc_extra)} % ({'≥' if ok_acc else 'below'} "
                      f"{LEARNS_ACCURACY:g} %)")
        checks.append(f"FD {s.x_floor:.2f}x the floor ({'≤' if ok_fd else 'above'} {LEARNS_FLOOR_MULTIPLE:g}x)"
                      if s.x_floor else "no floor recorded")
        if base is not None:
            checks.append(f"{s.fd / base.fd:.2f} of the untrained FD ({'<' if ok_untrained else 'not below'} "
                          f"{LEARNS_UNTRAINED_FRACTION:g})")
        verdict = "learns" if ok_acc and ok_fd and ok_untrained else "does NOT meet the bar"
        seeds = f" over {s.seeds} seeds" if s.seeds > 1 else ""
        lines.append(f"{_name(s.model)} trained at {px(s.image_px)}{seeds}: {verdict} — " + "; ".join(checks) + ".")
    for s in all_scores:
        if s.metric == "fd_proxy" and s.weak_to_strong and s.acc is not None:
            ok = s.acc >= WEAK_TO_STRONG_ACCURACY
            lines.append(f"{_name(s.model)} weak-to-strong at {px(s.image_px)}: accuracy {s.acc:.1f} % "
                         f"({'≥' if ok else 'below'} {WEAK_TO_STRONG_ACCURACY:g} %), FD "
                         + (f"{s.x_floor:.2f}x the floor." if s.x_floor else "without a floor."))
    return lines + spread_statements(trained) + cost_statements(results, trained)


def headlines(results: Results) -> list[str]:
    """The verdict lines of a quality run's stages (for the report's summary); none for other runs."""
    if not staged_metrics(results):
        return []
    return [ln for ln in verdicts(results) if " trained at " in ln or " weak-to-strong at " in ln]


def _name(model: str) -> str:
    fam = declared.family(model)
    return f"{fam.display} ({model})" if fam else model


def _range(s: Score) -> tuple[float, float] | None:
    """The seeds' range of the distance as a multiple of the floor (None with one seed)."""
    floor = s.extra.get("fd_floor")
    if s.seeds < 2 or not floor or s.extra.get("min") is None:
        return None
    return s.extra["min"] / floor, s.extra["max"] / floor


def spread_statements(trained: list[Score]) -> list[str]:
    """For each pair of trained stages with several seeds at the same image size: whether their seed ranges of
    the distance overlap (then this run does not tell them apart) or not."""
    same, apart = [], []
    for a, b in itertools.combinations(trained, 2):
        ra, rb = _range(a), _range(b)
        if ra is None or rb is None or a.image_px != b.image_px:
            continue
        pair = f"{_name(a.model)} {ra[0]:.2f}–{ra[1]:.2f}x and {_name(b.model)} {rb[0]:.2f}–{rb[1]:.2f}x"
        (same if ra[0] <= rb[1] and rb[0] <= ra[1] else apart).append(pair)
    out = []
    if same:
        out.append("Within each other's spread (the seeds' ranges of FD / floor overlap, so this run does not tell "
                   "them apart): " + "; ".join(same) + ".")
    if apart:
        out.append("Apart beyond the seeds' spread (ranges of FD / floor do not overlap): " + "; ".join(apart) + ".")
    return out


def cost_statements(results: Results, trained: list[Score]) -> list[str]:
    """Training cost per image relative to the first baseline family's model (wall time and FLOPs)."""
    baselines = [s for s in trained if declared.has_role(s.model, "baseline")]
    if not baselines:
        return []
    ref = baselines[0]
    ref_rate = final_value(results, "train_images_per_s", ref.point_key)
    ref_fwd = (final_value(results, "train_tflop", ref.point_key) or (0, {}))[1].get("forward_gflops_per_image")
    parts = []
    for s in trained:
        if s is ref:
            continue
        rate = final_value(results, "train_images_per_s", s.point_key)
        tflop = final_value(results, "train_tflop", s.point_key)
        if rate and ref_rate:
            text = f"{_name(s.model)} {ref_rate[0] / rate[0]:.2f}x the time"
            fwd = (tflop or (0, {}))[1].get("forward_gflops_per_image")
            if fwd and ref_fwd:
                text += f" and {fwd / ref_fwd:.2f}x the FLOPs"
            parts.append(text)
    if not parts:
        return []
    return [f"Per training image, relative to {_name(ref.model)}: " + "; ".join(parts) + " (this machine; the "
            "training table has the numbers)."]
