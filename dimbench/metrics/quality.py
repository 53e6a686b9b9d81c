"""Sample quality of small trained models: the ``quality`` and ``upsample`` metrics.

Both score generated images with dimbench's *proxy* metric (:mod:`dimbench.quality.proxy`): a small classifier
that dimbench trains on the digits' training split; ``fd_proxy*`` rows are the Fréchet distance between its
features of held-out real digits and of generated ones (lower is better; a proxy, not FID), ``proxy_acc*`` rows
the fraction of class-conditional samples the classifier assigns to the class they were generated for.

- ``quality`` scores, at the point's resolution, the model the ``train`` metric trained there (its EMA weights;
  at a weak-to-strong point that is the fine-tuned model; with several seeds each seed's model, the rows then
  the mean with every seed's value and the spread in ``extra``) and the same architecture untrained (its initial
  weights, the first training seed), and writes a sample grid (the first seed's; one row per class). It also
  writes the reference rows a reader needs to tell a failed run: ``fd_proxy_real``, the distance of real
  training digits to the same held-out digits under the same sample count (random class-balanced subsets of the
  train split, the mean of ``floor_draws`` draws: the floor a perfect model would score), and
  ``proxy_acc_real``, the classifier's accuracy on the held-out digits themselves. Every ``fd_proxy*`` row
  carries that floor (at its image size and sample count) in ``extra.fd_floor`` and its multiple in
  ``extra.x_floor``.
- ``upsample`` (training-free upsampling, dim.md §8) runs the model trained at the point's resolution at 2x and
  3x that resolution, its position embedding resized by the family's loader, plainly and with Upsample
  Guidance, and scores each against real digits at the higher resolution.

Every row says which sampler, steps and guidance produced it (method, and ``extra``).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch

import models
from dimbench.data import load_digits
from dimbench.metrics.base import Measurement, Metric, MetricContext, Row, SkipMetric, slug
from dimbench.metrics.common import resolve_device
from dimbench.metrics.train import intra_op_threads, load_trained, same_architecture
from dimbench.points import SweepPoint
from dimbench.quality.proxy import accuracy, load_or_train_classifier, proxy_scores
from dimbench.schema import Choice, Field, Integer, Number, Text
from dimbench.training.sampling import (
    class_labels,
    generate,
    sampler_for,
    sampler_or_family,
    save_class_grid,
    save_grid,
)
from models.diffusion import make_schedule

SAMPLES_DIR = "samples"
UPSAMPLE_FACTORS = (2, 3)
GRID_PER_CLASS = 8  # samples per class shown in a grid (one row per class)


def _classifier(ctx: MetricContext):
    """dimbench's proxy classifier, trained once per run folder (cached beside the run's state)."""
    base = Path(ctx.out_dir) if ctx.out_dir else ctx.state_dir
    cache = base / "state" / "proxy_classifier" / f"digits-seed{ctx.options['classifier_seed']}.pt"
    return load_or_train_classifier(cache, train_data_fn=lambda: load_digits(32, "train"),
                                    steps=ctx.options["classifier_steps"], seed=ctx.options["classifier_seed"])


def _spec(ctx: MetricContext, point: SweepPoint):
    o = ctx.options
    return sampler_for(models.family_of_model(point.model), o["sampler"] or None, o["steps"] or None,
                       o["guidance"])


_FLOORS: dict[tuple, tuple[float, list[float]]] = {}  # (classifier, px, n, draws, seed) -> (mean, per draw)


def real_floor(clf, resolution: int, count: int, draws: int, seed: int) -> tuple[float, list[float]]:
    """The proxy distance of real digits under the same sample count: ``draws`` random class-balanced subsets of
    ``count`` training digits (as the samples are balanced) against the held-out digits; (mean, per draw).
    Cached per classifier and setting in this process (the upsample metric asks for the same ones again)."""
    key = (id(clf), resolution, count, draws, seed)
    if key not in _FLOORS:
        train, test = load_digits(resolution, "train"), load_digits(resolution, "test")
        wanted = class_labels(count, 10)
        g = torch.Generator().manual_seed(seed)
        values = []
        for _ in range(draws):
            pick = []
            for c in range(10):
                pool = torch.nonzero(train.labels == c).flatten()
                k = int((wanted == c).sum())
                pick.append(pool[torch.randperm(len(pool), generator=g)[:k]])
            values.append(float(proxy_scores(clf, test.x, train.x[torch.cat(pick)])["fd"]))
        _FLOORS[key] = (sum(values) / len(values), values)
    return _FLOORS[key]


def _spread(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (0 for one value), min and max."""
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "sd": sd, "min": min(values), "max": max(values)}


def _score(ctx, clf, info, runs: list[tuple[int, torch.Tensor]], labels, resolution: int, spec, stage: str,
           fd_row: str, acc_row: str, extra: dict[str, Any]) -> list[Measurement]:
    """The distance and accuracy rows of a stage: ``runs`` = [(seed, its images)], one or more seeds (the rows are
    then the means, with every seed's value and the spread in ``extra``)."""
    real = load_digits(resolution, "test")
    scores = [proxy_scores(clf, real.x, images, labels) for _, images in runs]
    first = scores[0]
    seeds = [seed for seed, _ in runs]
    floor, _ = real_floor(clf, resolution, first["n_fake"], ctx.options["floor_draws"], ctx.options["sample_seed"])
    of = (f"; mean over {len(runs)} seeds' models ({', '.join(map(str, seeds))}), each with the same noise"
          if len(runs) > 1 else "")
    how = (f"{spec.describe()}; {first['n_fake']} samples ({resolution} px) vs {first['n_real']} held-out real "
           f"digits, features of dimbench's proxy classifier ({info.get('source', 'digits train split')}, "
           f"{info.get('steps')} steps); {stage}{of}")
    extra = {**extra, "stage": stage, "sampler": spec.name, "sampler_steps": spec.steps, "guidance_s": spec.guidance,
             "guidance_w": spec.guidance + 1, "image_px": resolution, "n_fake": first["n_fake"],
             "n_real": first["n_real"], "seeds": seeds}
    fds = [float(sc["fd"]) for sc in scores]
    fd_stats = _spread(fds)
    fd_extra = {**extra, "per_seed": dict(zip(map(str, seeds), fds, strict=True)), **fd_stats, "fd_floor": floor,
                "x_floor": fd_stats["mean"] / floor}
    rows = [Measurement(fd_row, fd_stats["mean"], None, "Fréchet distance of classifier features (a proxy, not "
                        "FID); " + how, fd_extra)]
    if first.get("accuracy") is not None:
        accs = [100.0 * sc["accuracy"] for sc in scores]
        stats = _spread(accs)
        rows.append(Measurement(acc_row, stats["mean"], None,
                                "proxy classifier's accuracy on class-conditional samples; " + how,
                                {**extra, "per_seed": dict(zip(map(str, seeds), accs, strict=True)), **stats}))
    else:
        rows.append(Measurement(acc_row, None, None, "", extra, status="skipped",
                                error="unconditional samples: no class to check"))
    return rows


def _reference_rows(ctx: MetricContext, clf, info, resolution: int, count: int) -> list[Measurement]:
    """``fd_proxy_real`` (the real-vs-real floor under the same sample count) and ``proxy_acc_real`` (the
    classifier on the held-out digits)."""
    draws, seed = ctx.options["floor_draws"], ctx.options["sample_seed"]
    floor, values = real_floor(clf, resolution, count, draws, seed)
    real = load_digits(resolution, "test")
    clf_text = (f"dimbench's proxy classifier ({info.get('source', 'digits train split')}, {info.get('steps')} "
                "steps)")
    extra = {"stage": "real digits (reference)", "image_px": resolution, "n_fake": count, "n_real": len(real)}
    return [
        Measurement("fd_proxy_real", floor, None,
                    f"Fréchet distance of classifier features (a proxy, not FID) between {count} real training "
                    f"digits ({resolution} px; a random subset with every class equally often, as the samples) and "
                    f"the {len(real)} held-out digits: the mean over {draws} draws (seed {seed}), the floor a "
                    f"perfect model would score with this many samples; features of {clf_text}",
                    {**extra, "per_draw": values, **_spread(values)}),
        Measurement("proxy_acc_real", 100.0 * accuracy(clf, real.x, real.labels), None,
                    f"proxy classifier's accuracy on the {len(real)} held-out real digits ({resolution} px): "
                    f"{clf_text}", {**extra, "n_fake": 0}),
    ]


def _grid(ctx: MetricContext, point: SweepPoint, row: str, images: torch.Tensor, labels: torch.Tensor | None,
          how: str, extra: dict[str, Any]):
    if ctx.out_dir is None:
        return Measurement(row, None, None, "", extra, status="skipped", error="no run folder to write images to")
    rel = Path(SAMPLES_DIR) / slug(point.key) / f"{row}.png"
    if labels is None:
        shown = save_grid(images, Path(ctx.out_dir) / rel, columns=10, rows=4)
        return Measurement(row, float(shown), None, f"sample grid: {how}", {**extra, "path": str(rel)})
    per_class = min(GRID_PER_CLASS, int(torch.bincount(labels).min()))
    shown, classes = save_class_grid(images, labels, Path(ctx.out_dir) / rel, per_class=per_class)
    grid = {"rows": "class", "classes": classes, "per_class": per_class, "tile_px": int(images.shape[-1])}
    return Measurement(row, float(shown), None, f"sample grid (one row per class, {per_class} samples each): {how}",
                       {**extra, "path": str(rel), "grid": grid})


@dataclasses.dataclass
class _Setup:
    """What both metrics start from: the trained model and how to sample and score it."""

    device: torch.device
    family: models.Family
    classifier: Any
    classifier_info: dict[str, Any]
    trained: torch.nn.Module
    facts: dict[str, Any]
    schedule: Any
    spec: Any
    count: int
    labels: torch.Tensor | None


def _setup(point: SweepPoint, ctx: MetricContext) -> _Setup:
    if ctx.options["data"] != "digits":
        raise SkipMetric("the proxy metric's classifier is trained on the digits; other data has no proxy yet")
    device = resolve_device(point)
    clf, info = _classifier(ctx)
    trained, facts = load_trained(ctx.out_dir, point, device=device)
    n = ctx.options["samples"]
    return _Setup(device, models.family_of_model(point.model), clf, info, trained, facts,
                  make_schedule(facts["config"]["schedule"]), _spec(ctx, point), n,
                  class_labels(n, int(getattr(trained, "num_classes", 0) or 0)))


def quality_metric(point: SweepPoint, ctx: MetricContext) -> list[Measurement]:
    with intra_op_threads(ctx.options["threads"]):
        return _quality_metric(point, ctx)


def _quality_metric(point: SweepPoint, ctx: MetricContext) -> list[Measurement]:
    st = _setup(point, ctx)
    device, fam, trained, facts = st.device, st.family, st.trained, st.facts
    clf, info = st.classifier, st.classifier_info
    spec, n, labels = st.spec, st.count, st.labels
    shape = (trained.in_channels, point.input_size, point.input_size)
    seeds = list(facts["meta"].get("seeds") or [facts["config"]["seed"]])
    common = {"trained_steps": facts["step"]}
    kw = dict(schedule=st.schedule, timestep=fam.timestep, spec=spec, labels=labels, count=n, shape=shape,
              seed=ctx.options["sample_seed"], device=device)
    rows = _reference_rows(ctx, clf, info, point.input_size, n)
    total = len(seeds) + 1
    runs = []
    for k, seed in enumerate(seeds):
        ctx.progress(k, total, stage="trained", seed=seed)
        model = trained if k == 0 else load_trained(ctx.out_dir, point, device=device, seed=seed)[0]
        runs.append((seed, generate(model, **kw)))
    stage = (f"weak-to-strong from {facts['meta']['weak_to_strong_from']} px, fine-tuned {facts['step']} steps "
             "(EMA weights)" if facts["meta"].get("weak_to_strong_from")
             else f"trained ({facts['step']} steps, EMA weights)")
    rows += _score(ctx, clf, info, runs, labels, point.input_size, spec, stage, "fd_proxy", "proxy_acc", common)
    grid_note = f"; seed {seeds[0]}'s model" if len(seeds) > 1 else ""
    rows.append(_grid(ctx, point, "samples", runs[0][1], labels, f"{spec.describe()}; {stage}{grid_note}",
                      {**common, "stage": stage, "image_px": point.input_size}))

    source = facts["meta"].get("weak_to_strong_from")
    if source:
        # The starting point of a weak-to-strong fine-tune is the trained low-resolution model, not random
        # weights; its score before fine-tuning is the upsample metric's 2x row at the source point.
        why = (f"a weak-to-strong point starts from the {source} px model, not from random weights (its score "
               f"before fine-tuning: fd_proxy_up{point.resolution // source} at {source} px, where measured)")
        return rows + [Measurement(m, None, None, "", {}, status="skipped", error=why)
                       for m in ("fd_proxy_untrained", "proxy_acc_untrained")]
    ctx.progress(total - 1, total, stage="untrained")
    torch.manual_seed(int(facts["config"]["seed"]))  # the trainer's seed: the same initial weights it started from
    with torch.device(device):
        untrained = models.create_model(point.model, **same_architecture(trained)).eval()
    rows += _score(ctx, clf, info, [(seeds[0], generate(untrained, **kw))], labels, point.input_size, spec,
                   f"untrained (initial weights of seed {seeds[0]})", "fd_proxy_untrained", "proxy_acc_untrained", {})
    return rows


def upsample_metric(point: SweepPoint, ctx: MetricContext) -> list[Measurement]:
    with intra_op_threads(ctx.options["threads"]):
        return _upsample_metric(point, ctx)


def _upsample_metric(point: SweepPoint, ctx: MetricContext) -> list[Measurement]:
    st = _setup(point, ctx)
    if not hasattr(st.schedule, "alphas_cumprod"):
        raise SkipMetric("Upsample Guidance reads a discrete schedule; this model was trained on a continuous one")
    device, fam, trained, facts = st.device, st.family, st.trained, st.facts
    clf, info = st.classifier, st.classifier_info
    schedule, spec, n, labels = st.schedule, st.spec, st.count, st.labels
    config = same_architecture(trained)
    rows: list[Measurement] = []
    total = 2 * len(UPSAMPLE_FACTORS)
    for i, m in enumerate(UPSAMPLE_FACTORS):
        size = m * point.input_size
        # Above its trained resolution a model takes its family's options for that (DiM: cyclic pads, dim.md §1,
        # §8); the low-resolution pass runs the model as trained.
        above = dict(fam.diffusion.finetune) if fam.diffusion else {}
        with torch.device(device):
            high = models.create_model(point.model, **{**config, **above, "input_size": size}).eval()
            low = models.create_model(point.model, **config).eval()
        models.load_resized_state_dict(high, trained.state_dict())
        # dim.md §8: the low-resolution pass uses the resized table resized back, as the official code does.
        models.load_resized_state_dict(low, high.state_dict())
        common = {"trained_px": point.input_size, "factor": m, "trained_steps": facts["step"], **above}
        for j, guided in enumerate((False, True)):
            ctx.progress(2 * i + j, total, factor=m, upsample_guidance=guided)
            suffix = f"_up{m}" + ("_ug" if guided else "")
            options = "".join(f", {k}={v}" for k, v in above.items())
            stage = (f"trained at {point.input_size} px, sampled at {size} px ({m}x) with its position embedding "
                     f"resized{options}" + (f", Upsample Guidance while t >= {ctx.options['until']:g}" if guided
                                  else ", no Upsample Guidance"))
            images = generate(high, schedule=schedule, timestep=fam.timestep, spec=spec, labels=labels, count=n,
                              shape=(high.in_channels, size, size), seed=ctx.options["sample_seed"], device=device,
                              lowres_model=low if guided else None, upsample=m if guided else None,
                              until=ctx.options["until"])
            extra = {**common, "upsample_guidance": guided}
            rows += _score(ctx, clf, info, [(facts["config"]["seed"], images)], labels, size, spec, stage,
                           "fd_proxy" + suffix, "proxy_acc" + suffix, extra)
            rows.append(_grid(ctx, point, "samples" + suffix, images, labels, f"{spec.describe()}; {stage}",
                              {**extra, "stage": stage, "image_px": size}))
    return rows


def _sampling_options(samples: int, sampler: str, guidance: float | None, guidance_doc: str) -> tuple[Field, ...]:
    return (
        Field("data", Text(), "digits", "the data the model was trained on (the proxy classifier needs `digits`)"),
        Field("samples", Integer(10), samples, "generated images per score (every class equally often)"),
        Field("sampler", Choice(sampler_or_family), sampler, "sampler; empty: the family's own (DiT: DDPM, DiM and "
              "U-ViT: DPM-Solver++)"),
        Field("steps", Integer(0), 0, "network evaluations per sample and guidance pass; 0: the family's own"),
        Field("guidance", Number(-1e-12, none="the family's own scale"), guidance,
              "classifier-free guidance s (U-ViT/DiM convention; DiT's w = s + 1); 0: none " + guidance_doc),
        Field("sample_seed", Integer(0), 0, "seed of the initial noise and the samplers' noise"),
        Field("classifier_steps", Integer(1), 400, "training steps of the proxy classifier"),
        Field("classifier_seed", Integer(0), 0, "seed of the proxy classifier"),
        Field("floor_draws", Integer(1), 5, "random subsets of real training digits whose mean distance to the "
              "held-out digits is the floor (fd_proxy_real; extra.fd_floor of every distance)"),
        Field("threads", Integer(0), 0, "torch intra-op threads while sampling (0: as the runner set them)"),
    )


_QUALITY_ROWS = (
    Row("fd_proxy_real", "FD", "proxy Fréchet distance of real digits (floor)", task="evaluate",
        pairs_with="proxy_acc_real"),
    Row("proxy_acc_real", "%", "proxy classifier accuracy on real held-out digits", task="evaluate"),
    Row("fd_proxy", "FD", "proxy Fréchet distance (trained)", task="evaluate", pairs_with="proxy_acc"),
    Row("proxy_acc", "%", "proxy classifier accuracy (trained)", task="evaluate"),
    Row("fd_proxy_untrained", "FD", "proxy Fréchet distance (untrained)", task="evaluate",
        pairs_with="proxy_acc_untrained"),
    Row("proxy_acc_untrained", "%", "proxy classifier accuracy (untrained)", task="evaluate"),
    Row("samples", "images", "sample grid", task="sample"),
)

QUALITY = Metric(
    name="quality",
    rows=_QUALITY_ROWS,
    fn=quality_metric,
    description="samples the trained model and the untrained one; proxy Fréchet distance (not FID) and classifier "
    "accuracy against held-out digits; a sample grid",
    options=_sampling_options(200, "", None, "(null: the family's own)"),
    timeout=math.inf,
)


def _upsample_rows() -> tuple[Row, ...]:
    rows = []
    for m in UPSAMPLE_FACTORS:
        for ug, what in (("", "plain"), ("_ug", "Upsample Guidance")):
            rows += [Row(f"fd_proxy_up{m}{ug}", "FD", f"proxy Fréchet distance at {m}x ({what})", task="evaluate",
                         pairs_with=f"proxy_acc_up{m}{ug}"),
                     Row(f"proxy_acc_up{m}{ug}", "%", f"proxy classifier accuracy at {m}x ({what})", task="evaluate"),
                     Row(f"samples_up{m}{ug}", "images", f"sample grid at {m}x ({what})", task="sample")]
    return tuple(rows)


UPSAMPLE = Metric(
    name="upsample",
    rows=_upsample_rows(),
    fn=upsample_metric,
    description="training-free upsampling: the trained model sampled at 2x and 3x its resolution, plain and with "
    "Upsample Guidance (dim.md §8), scored with the proxy metric",
    options=(*_sampling_options(100, "dpm_solver", 3.0, "(dim.md §8 uses 3.0)"),
             Field("until", Number(0), 0.7, "Upsample Guidance acts while t >= this (the noisiest 30 %)")),
    timeout=math.inf,
)
