"""Sample quality of small trained models: the ``quality`` and ``upsample`` metrics.

Both score generated images with dimbench's *proxy* metric (:mod:`dimbench.quality.proxy`): a small classifier
that dimbench trains on the digits' training split; ``fd_proxy*`` rows are the Fréchet distance between its
features of held-out real digits and of generated ones (lower is better; a proxy, not FID), ``proxy_acc*`` rows
the fraction of class-conditional samples the classifier assigns to the class they were generated for.

- ``quality`` scores, at the point's resolution, the model the ``train`` metric trained there (its EMA weights;
  at a weak-to-strong point that is the fine-tuned model) and the same architecture untrained (its initial
  weights, the training seed), and writes a sample grid.
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
from dimbench.metrics.train import load_trained, same_architecture
from dimbench.points import SweepPoint
from dimbench.quality.proxy import load_or_train_classifier, proxy_scores
from dimbench.schema import Choice, Field, Integer, Number, Text
from dimbench.training.sampling import class_labels, generate, sampler_for, sampler_or_family, save_grid
from models.diffusion import make_schedule

SAMPLES_DIR = "samples"
UPSAMPLE_FACTORS = (2, 3)


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


def _score(ctx, clf, info, images, labels, resolution: int, spec, stage: str, fd_row: str, acc_row: str,
           extra: dict[str, Any]) -> list[Measurement]:
    real = load_digits(resolution, "test")
    scores = proxy_scores(clf, real.x, images, labels)
    how = (f"{spec.describe()}; {scores['n_fake']} samples ({resolution} px) vs {scores['n_real']} held-out real "
           f"digits, features of dimbench's proxy classifier ({info.get('source', 'digits train split')}, "
           f"{info.get('steps')} steps); {stage}")
    extra = {**extra, "stage": stage, "sampler": spec.name, "sampler_steps": spec.steps, "guidance_s": spec.guidance,
             "guidance_w": spec.guidance + 1, "image_px": resolution, "n_fake": scores["n_fake"],
             "n_real": scores["n_real"]}
    rows = [Measurement(fd_row, scores["fd"], None, "Fréchet distance of classifier features (a proxy, not FID); "
                        + how, extra)]
    if scores.get("accuracy") is not None:
        rows.append(Measurement(acc_row, 100.0 * scores["accuracy"], None,
                                "proxy classifier's accuracy on class-conditional samples; " + how, extra))
    else:
        rows.append(Measurement(acc_row, None, None, "", extra, status="skipped",
                                error="unconditional samples: no class to check"))
    return rows


def _grid(ctx: MetricContext, point: SweepPoint, row: str, images: torch.Tensor, how: str, extra: dict[str, Any]):
    if ctx.out_dir is None:
        return Measurement(row, None, None, "", extra, status="skipped", error="no run folder to write images to")
    rel = Path(SAMPLES_DIR) / slug(point.key) / f"{row}.png"
    shown = save_grid(images, Path(ctx.out_dir) / rel, columns=10, rows=4)
    return Measurement(row, float(shown), None, f"sample grid (one class per column): {how}",
                       {**extra, "path": str(rel)})


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
    st = _setup(point, ctx)
    device, fam, trained, facts = st.device, st.family, st.trained, st.facts
    clf, info = st.classifier, st.classifier_info
    spec, n, labels = st.spec, st.count, st.labels
    shape = (trained.in_channels, point.input_size, point.input_size)
    common = {"trained_steps": facts["step"]}
    kw = dict(schedule=st.schedule, timestep=fam.timestep, spec=spec, labels=labels, count=n, shape=shape,
              seed=ctx.options["sample_seed"], device=device)
    rows: list[Measurement] = []
    ctx.progress(0, 2, stage="trained")
    images = generate(trained, **kw)
    stage = (f"weak-to-strong from {facts['meta']['weak_to_strong_from']} px, fine-tuned {facts['step']} steps "
             "(EMA weights)" if facts["meta"].get("weak_to_strong_from")
             else f"trained ({facts['step']} steps, EMA weights)")
    rows += _score(ctx, clf, info, images, labels, point.input_size, spec, stage, "fd_proxy", "proxy_acc", common)
    rows.append(_grid(ctx, point, "samples", images, f"{spec.describe()}; {stage}", common))

    source = facts["meta"].get("weak_to_strong_from")
    if source:
        # The starting point of a weak-to-strong fine-tune is the trained low-resolution model, not random
        # weights; its score before fine-tuning is the upsample metric's 2x row at the source point.
        why = (f"a weak-to-strong point starts from the {source} px model, not from random weights (its score "
               f"before fine-tuning: fd_proxy_up{point.resolution // source} at {source} px, where measured)")
        return rows + [Measurement(m, None, None, "", {}, status="skipped", error=why)
                       for m in ("fd_proxy_untrained", "proxy_acc_untrained")]
    ctx.progress(1, 2, stage="untrained")
    torch.manual_seed(int(facts["config"]["seed"]))  # the trainer's seed: the same initial weights it started from
    with torch.device(device):
        untrained = models.create_model(point.model, **same_architecture(trained)).eval()
    images = generate(untrained, **kw)
    rows += _score(ctx, clf, info, images, labels, point.input_size, spec, "untrained (initial weights)",
                   "fd_proxy_untrained", "proxy_acc_untrained", {})
    return rows


def upsample_metric(point: SweepPoint, ctx: MetricContext) -> list[Measurement]:
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
            rows += _score(ctx, clf, info, images, labels, size, spec, stage, "fd_proxy" + suffix,
                           "proxy_acc" + suffix, extra)
            rows.append(_grid(ctx, point, "samples" + suffix, images, f"{spec.describe()}; {stage}", extra))
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
    )


_QUALITY_ROWS = (
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
