"""The ``fid`` metric: FID (and Inception Score, KID, precision/recall) of a checkpoint at a point's resolution.

For a point (model, resolution, the suite's ``checkpoint:``) it samples ``samples`` images (50,000 for the paper
number) with the family's published sampler settings (DiffusionRecipe: DiM and U-ViT DPM-Solver++ 50 steps, DiT
DDPM 250; the guidance scale per model and resolution from the ``guidance`` option, else the family's), or, at a
multiple of the checkpoint's own resolution (1024 / 1536 px from the 512 model) and only for the models
``upsample_from`` names (DiM in suites/fid_imagenet.yaml), by training-free upsampling with Upsample Guidance
(dim.md §8: DPM-Solver 50 steps, noise prediction, s = 3.0); decodes latents with the local
Stable Diffusion VAE (diffusers, scale 0.18215); extracts torch-fidelity's TF-2015-12-05 Inception features from
the local weights file; scores against the reference statistics (ADM / U-ViT .npz). A long task: progress, the
features saved per chunk in ``ctx.state_dir`` (a killed run resumes without re-generating scored images), the
seconds per image of the whole sampling run, and a grid of the first samples (``samples_fid``).

Every path is checked when the suite is read (:meth:`FidMetric.check_options`, called by the suite's
validation): each missing, unreadable or wrong one is named, exit 2, before any point runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

import models
from dimbench.fid.options import (
    GuidanceTable,
    LocalPath,
    PathPerResolution,
    UpsampleTable,
    guidance_for,
    reference_for,
    upsample_source,
)
from dimbench.files import atomic_write
from dimbench.metrics.base import Measurement, Metric, MetricContext, Row, SkipMetric, slug
from dimbench.points import SweepPoint
from dimbench.schema import Boolean, Choice, Field, Integer, Number, Text

SAMPLES_DIR = "samples"
UNAVAILABLE = "not available: torch-fidelity does not import"


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class FidMetric(Metric):
    """A Metric whose paths the suite's validation checks as a whole (required ones given, the weights' hash)."""

    def check_options(self, options: dict[str, Any], model_names: list[str],
                      resolutions: list[int] | tuple[int, ...] | None = None) -> list[tuple[str, str]]:
        """(option, message) for each problem of the resolved options: what a run would stop on. Each reference
        file is opened (keys, shapes) and a {resolution: file} mapping must cover every one of ``resolutions``."""
        from dimbench.console import UserError
        from dimbench.fid import inception
        from dimbench.fid.reference import check_reference_file

        problems = []
        weights = options.get("inception_weights") or ""
        if not weights:
            problems.append(("inception_weights", "key 'options.fid.inception_weights': expected the local FID "
                             f"Inception weights file ({inception.expected_text(options['inception_sha256'])}), "
                             "got nothing"))
        elif inception.available() is None:  # where torch-fidelity is missing the metric skips; no hash needed
            try:
                inception.check_weights_file(weights, options["inception_sha256"])
            except UserError as exc:
                problems.append(("inception_weights", f"key 'options.fid.inception_weights': {exc}"))
        if not options.get("reference"):
            problems.append(("reference", "key 'options.fid.reference': expected the reference statistics .npz "
                             "(ADM reference batch or U-ViT fid_stats_*.npz), or {resolution: file}, got nothing"))
        else:
            reference = options["reference"]
            files = list(reference.values()) if isinstance(reference, dict) else [reference]
            for file in dict.fromkeys(f for f in files if isinstance(f, str) and f and os.path.exists(f)):
                message = check_reference_file(file)  # a missing file is the path type's message already
                if message:
                    problems.append(("reference", f"key 'options.fid.reference': {message}"))
            missing = [r for r in (resolutions or ()) if isinstance(reference, dict) and r not in reference]
            if missing:
                problems.append(("reference", f"key 'options.fid.reference': names no file for "
                                 f"{', '.join(map(str, missing))} px (the suite's resolutions: "
                                 f"{', '.join(map(str, resolutions))})"))
        latent = [m for m in model_names if m in models.list_models() and models.model_info(m).latent]
        if latent and not options.get("vae"):
            problems.append(("vae", f"key 'options.fid.vae': expected the local VAE folder (diffusers "
                             f"AutoencoderKL, Stable Diffusion KL-f8) that {', '.join(latent)} decode(s) with, got "
                             "nothing"))
        return problems


def _load_models(point: SweepPoint, o: dict, device: torch.device):
    """(model at the point's size, the model at its own size when upsampling else None, factor, facts)."""
    from dimbench.metrics.common import model_kwargs

    fam = models.family_of_model(point.model)
    if not point.checkpoint:
        if not o["random_weights"]:
            raise SkipMetric("no checkpoint: FID scores trained weights (models: [{name, checkpoint}]); "
                             "random_weights: true runs the pipeline on random weights (a speed check)")
        torch.manual_seed(int(o["seed"]))
        with torch.device(device):
            model = models.create_model(point.model, **model_kwargs(point)).eval()
        return model, None, None, {"checkpoint": None, "checkpoint_sha256": None, "weights": "random (seeded)"}
    native = int(models.inspect_checkpoint(point.checkpoint)["input_size"])
    per_px = point.resolution / point.input_size  # 8 for latent models, 1 for pixel models
    native_px = int(round(native * per_px))
    if point.input_size != native:
        source = upsample_source(o["upsample_from"], point.model, point.resolution)
        if source != native_px or point.input_size % native:
            raise SkipMetric(f"the checkpoint is a {native_px} px model; options.fid.upsample_from gives "
                             f"{point.model} at {point.resolution} px " +
                             (f"from {source} px checkpoints" if source else "no source resolution (training-free "
                              "upsampling runs only for the models it names)") + ": not scored here")
    facts = {"checkpoint": point.checkpoint, "checkpoint_sha256": _file_sha256(point.checkpoint)}
    own = models.load_checkpoint(point.model, point.checkpoint, pad_layout=point.pad_layout, map_location=device)
    if point.input_size == native:
        return own, None, None, facts
    m = point.input_size // native
    finetune = dict(fam.diffusion.finetune) if fam.diffusion else {}
    if point.pad_layout:
        finetune["pad_layout"] = point.pad_layout
    high = models.load_checkpoint(point.model, point.checkpoint, input_size=point.input_size, map_location=device,
                                  **finetune)
    # dim.md §8: the low-resolution pass uses the resized table resized back, as the official code does.
    models.load_resized_state_dict(own, high.state_dict())
    return high.eval(), own.eval(), m, {**facts, "trained_input_size": native, **finetune}


def _decoder(o: dict, model: torch.nn.Module, device: torch.device):
    """(decode function, description)."""
    channels = int(model.in_channels)
    if o["vae"]:
        from dimbench.fid.vae import SCALE, decode, load_vae

        vae = load_vae(o["vae"], device)
        latent_channels = int(vae.config.latent_channels)
        if channels == latent_channels:
            return (lambda z: decode(vae, z, batch=max(1, o["decode_batch"])),
                    f"latents decoded by the VAE {o['vae']} (AutoencoderKL, z / {SCALE})")
    if channels not in (1, 3):
        raise ValueError(f"{channels}-channel outputs are latents: give options.fid.vae (a local diffusers "
                         "AutoencoderKL folder) to decode them")
    return (lambda x: x.float().clamp(-1, 1)), "pixel model: outputs are the images"


def _real_features(ctx: MetricContext, ref, extractor, weights_sha: str) -> np.ndarray:
    """pool3 features of an ADM reference batch's images, cached per (file, weights) in the run's state."""
    from dimbench.fid.inception import extract

    stat = os.stat(ref.path)
    key = hashlib.sha1(f"{os.path.abspath(ref.path)}|{stat.st_size}|{stat.st_mtime_ns}|{weights_sha}".encode())
    base = Path(ctx.out_dir) / "state" / "fid_reference" if ctx.out_dir else ctx.state_dir
    cache = base / f"{key.hexdigest()[:16]}.npy"
    if cache.exists():
        return np.load(cache, allow_pickle=False)
    images = torch.from_numpy(np.ascontiguousarray(ref.images)).permute(0, 3, 1, 2)
    pool, _ = extract(extractor, images)
    base.mkdir(parents=True, exist_ok=True)
    atomic_write(cache, lambda f: np.save(f, pool))
    return pool


def fid_metric(point: SweepPoint, ctx: MetricContext) -> list[Measurement]:
    from dimbench.console import UserError
    from dimbench.fid import inception, pipeline
    from dimbench.fid.reference import read_reference
    from dimbench.fid.scores import all_scores
    from dimbench.metrics.common import resolve_device
    from dimbench.training.distributed import distributed_info
    from dimbench.training.sampling import SamplerSpec, sampler_for, save_grid
    from models.diffusion import make_schedule

    reason = inception.available()
    if reason:
        raise SkipMetric(f"{UNAVAILABLE} ({reason})")
    if point.dtype != "float32":
        raise SkipMetric(f"FID samples in float32 only (the papers' numbers; no autocast here): this point's dtype "
                         f"is {point.dtype} (give the fid metric dtypes: [float32])")
    o = ctx.options
    problems = FID.check_options(o, [point.model], [point.resolution])
    ref_path = reference_for(o["reference"], point.resolution)
    if problems:
        raise UserError("; ".join(m for _, m in problems))
    device = resolve_device(point)
    fam = models.family_of_model(point.model)
    model, low, m, facts = _load_models(point, o, device)
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    recipe = fam.diffusion
    if m:
        spec = SamplerSpec(o["upsample_sampler"], int(o["upsample_steps"]), float(o["upsample_guidance"]))
        stage = (f"training-free upsampling x{m} from the checkpoint's {facts['trained_input_size']}-side model "
                 f"(position embedding resized), Upsample Guidance while t >= {o['until']:g}")
    else:
        spec = sampler_for(fam, o["sampler"] or None, o["steps"] or None,
                           guidance_for(o["guidance"], point.model, point.resolution))
        stage = "at the checkpoint's own resolution" if point.checkpoint else "random weights (pipeline check)"
    decode, decoded = _decoder(o, model, device)
    extractor, weights_sha = inception.load_extractor(o["inception_weights"], o["inception_sha256"], device)
    shape = (int(model.in_channels), point.input_size, point.input_size)
    subset = recipe.guided_channels if recipe else None
    channels = subset if subset is not None and shape[0] > subset else None  # DiT: 3 of its 4 latent channels
    settings = {"model": point.model, "point": point.key, **facts, "sampler": spec.name, "steps": spec.steps,
                "guidance": spec.guidance, "seed": o["seed"], "batch": o["batch"], "shape": shape, "vae": o["vae"],
                "inception_sha256": weights_sha, "upsample": m, "until": o["until"] if m else None,
                "labels": o["labels"]}
    job = pipeline.SampleJob(model=model, schedule=make_schedule(recipe.schedule), timestep=fam.timestep, spec=spec,
                             shape=shape, num_classes=num_classes, count=o["samples"], batch=o["batch"],
                             seed=o["seed"], device=device, decode=decode, extractor=extractor, lowres_model=low,
                             upsample=m, until=o["until"], settings=settings, labels=o["labels"])
    dist = distributed_info()
    state = ctx.state_dir
    if dist.rank == 0:
        pipeline.prepare_state(state, settings)
    dist.barrier()
    did = pipeline.run(job, state, rank=dist.rank, world=dist.world_size,
                       progress=lambda done, total, info: ctx.progress(done, total, **info))
    dist.barrier()
    if dist.rank != 0:
        return []
    sampled = spec.describe(channels if num_classes else None)
    return _rows(ctx, point, o, spec, sampled, stage, decoded, facts, weights_sha, ref_path, did, dist.world_size,
                 extractor, num_classes, m, read_reference, all_scores, save_grid)


#: The classifier-free guidance s (U-ViT/DiM convention) of the published FID-50K rows
#: (dimbench/paper/published.yaml, table fid): DiM and U-ViT 0.4 at 256 px and 0.7 at 512 px (dim.md §7,
#: baselines.md), DiT cfg 1.5 (s = 0.5). The sampler and steps are the family's DiffusionRecipe.
PUBLISHED_GUIDANCE = {("dim_h_2", 256): 0.4, ("dim_h_2", 512): 0.7, ("uvit_l_2", 256): 0.4, ("uvit_h_2", 256): 0.4,
                      ("uvit_l_4", 512): 0.7, ("uvit_h_4", 512): 0.7, ("dit_xl_2", 256): 0.5, ("dit_xl_2", 512): 0.5}
#: dim.md §8: training-free upsampling as published (DPM-Solver noise prediction, 50 steps, s = 3.0, t >= 0.7).
PUBLISHED_UPSAMPLING = ("dpm_solver", 50, 3.0, 0.7)


def comparable_to_published(point: SweepPoint, o: dict, spec, m: int | None, n: int, checkpoint: str | None) -> bool:
    """True only when a row measures what a published FID-50K does: a real checkpoint, 50,000 samples, random
    labels, float32, and the paper's sampler, steps and guidance (at an upsampled resolution: dim.md §8's)."""
    if not checkpoint or n != 50000 or o["labels"] != "random" or point.dtype != "float32":
        return False
    if m:
        return (spec.name, spec.steps, spec.guidance, float(o["until"])) == PUBLISHED_UPSAMPLING
    recipe = models.family_of_model(point.model).diffusion
    guidance = PUBLISHED_GUIDANCE.get((point.model, point.resolution))
    return (recipe is not None and guidance is not None and spec.name == recipe.sampler
            and spec.steps == recipe.sample_steps and math.isclose(spec.guidance, guidance))


def _rows(ctx, point, o, spec, sampled, stage, decoded, facts, weights_sha, ref_path, did, world, extractor,
          num_classes, m, read_reference, all_scores, save_grid) -> list[Measurement]:
    from dimbench.fid import pipeline

    feats = pipeline.gather(ctx.state_dir, o["samples"], o["batch"])
    ref = read_reference(ref_path)
    real = _real_features(ctx, ref, extractor, weights_sha) if ref.images is not None else None
    if ref.mu is not None:
        mu, sigma, stats_from = ref.mu, ref.sigma, "the file's mu/sigma"
    else:
        from dimbench.quality.frechet import gaussian_stats

        mu, sigma = gaussian_stats(real)
        stats_from = f"pool3 statistics of its {len(real)} images (computed here)"
    n = int(feats["pool"].shape[0])
    scores = all_scores(feats["pool"], feats["logits"], mu, sigma, real)
    ckpt = (f"checkpoint {facts['checkpoint']} (SHA256 {facts['checkpoint_sha256']})" if facts.get("checkpoint")
            else "random weights (no checkpoint: a pipeline check, not a quality number)")
    if not num_classes:
        labels = "unconditional"
    elif o["labels"] == "balanced":
        labels = (f"balanced labels i mod {num_classes} (DiT, U-ViT and ADM sample uniformly random labels "
                  "instead)")
    else:
        labels = f"labels uniformly random in 0..{num_classes - 1}, seeded by (seed, i) (as DiT, U-ViT and ADM)"
    how = (f"{sampled}; {n} samples in float32, in chunks of {o['batch']} images (options.fid.batch; the point's "
           f"batch is not used) (seed {o['seed']}, image i from its own noise seeded by (seed, i), {labels}), "
           f"{stage}; {decoded}; {ckpt}; Inception pool3 features of torch-fidelity's TF-2015-12-05 port, weights "
           f"{o['inception_weights']} (SHA256 {weights_sha}), with torch-fidelity's preprocessing (TF1-style "
           "bilinear resize to 299 px, (x - 128) / 128) as ADM's TensorFlow evaluator does; pytorch-fid (which "
           "made U-ViT's fid_stats_*.npz) resizes with PyTorch's bilinear and differs slightly; "
           f"reference {ref.describe()}, statistics from {stats_from}")
    extra = {"stage": stage, "sampler": spec.name, "sampler_steps": spec.steps, "guidance_s": spec.guidance,
             "guidance_w": spec.guidance + 1, "image_px": feats["image_px"], "n_fake": n,
             "n_real": ref.count, "seed": o["seed"], "checkpoint": facts.get("checkpoint"),
             "checkpoint_sha256": facts.get("checkpoint_sha256"), "inception_weights": o["inception_weights"],
             "inception_sha256": weights_sha, "reference": ref.path, "reference_layout": ref.layout,
             "vae": o["vae"] or None, "upsample_factor": m, "world_size": world,
             "generated_this_run": did["generated"], "resumed_images": did["resumed"], "labels": o["labels"],
             "batch": o["batch"], "random_weights": not facts.get("checkpoint"),
             "comparable_to_published": comparable_to_published(point, o, spec, m, n, facts.get("checkpoint"))}
    rows = [Measurement("fid", scores["fid"], None, "Fréchet Inception distance (dimbench.quality.frechet on "
                        "pool3 features, unbiased covariance); " + how, extra),
            Measurement("inception_score", scores["is_mean"], None, "Inception Score (torch-fidelity's "
                        "isc_features_to_metric, 10 splits, unbiased logits); " + how,
                        {**extra, "std": scores["is_std"]})]
    if real is not None:
        rows += [Measurement("kid", scores["kid_mean"], None, f"Kernel Inception Distance (torch-fidelity's "
                             f"kid_features_to_metric: 100 subsets of {scores['kid_subset_size']}, cubic kernel) "
                             f"against the reference images; " + how, {**extra, "std": scores["kid_std"]}),
                 Measurement("precision", scores["precision"], None, "precision (torch-fidelity's "
                             "prc_features_to_metric, 3 nearest neighbours) against the reference images; " + how,
                             extra),
                 Measurement("recall", scores["recall"], None, "recall (torch-fidelity's prc_features_to_metric, "
                             "3 nearest neighbours) against the reference images; " + how, extra)]
    else:
        why = f"the reference {ref.path} holds statistics only (mu/sigma): KID and precision/recall need its images"
        rows += [Measurement(r, None, None, "", extra, status="skipped", error=why)
                 for r in ("kid", "precision", "recall")]
    spent = feats["sample_s"] + feats["decode_s"]
    rows.append(Measurement("sample_s_per_image", spent / n, None,
                            f"wall clock of sampling + decoding summed over all chunks (every run and rank) / {n} "
                            f"images, batch {o['batch']} (options.fid.batch), float32, {sampled} on {point.device}; "
                            "Inception extraction "
                            f"not included ({feats['extract_s'] / n:.3g} s/image)",
                            {**extra, "sample_s": feats["sample_s"], "decode_s": feats["decode_s"],
                             "extract_s": feats["extract_s"], "per": "GPU-seconds per image when world_size > 1"}))
    grid = ctx.state_dir / "grid.npy"
    if ctx.out_dir is None or not grid.exists():
        rows.append(Measurement("samples_fid", None, None, "", extra, status="skipped",
                                error="no run folder to write images to"))
    else:
        rel = Path(SAMPLES_DIR) / slug(point.key) / "samples_fid.png"
        pixels = torch.from_numpy(np.load(grid, allow_pickle=False)).float() / 127.5 - 1
        shown = save_grid(pixels, Path(ctx.out_dir) / rel, columns=10, rows=4)
        rows.append(Measurement("samples_fid", float(shown), None, f"the first {shown} of the FID samples (" +
                                ("label i mod classes: one class per column when 10 divides them" if
                                 o["labels"] == "balanced" else "random labels") + "); " + how,
                                {**extra, "path": str(rel)}))
    return rows


def _options() -> tuple[Field, ...]:
    from dimbench.fid.inception import EXPECTED_SHA256_PREFIX, SHA256_PREFIX_TEXT, is_sha256_prefix
    from dimbench.training.sampling import SAMPLERS

    return (
        Field("inception_weights", LocalPath("file", "the FID Inception weights file"), "",
              "torch-fidelity's weights-inception-2015-12-05-6726825d.pth (or pytorch-fid's "
              "pt_inception-2015-12-05-6726825d.pth); required, never downloaded"),
        Field("inception_sha256", Text(SHA256_PREFIX_TEXT, rule=is_sha256_prefix), EXPECTED_SHA256_PREFIX,
              "the start (or all) of the weights file's SHA256; a file that does not match is refused"),
        Field("reference", PathPerResolution("file", "a reference statistics .npz"), "",
              "ADM reference batch (arr_0 images, mu, sigma) or U-ViT fid_stats_*.npz (mu, sigma) or `dimbench "
              "fid-stats` output; one for all resolutions or {resolution: file}; required"),
        Field("vae", LocalPath("folder", "a local diffusers AutoencoderKL folder"), "",
              "Stable Diffusion KL-f8 VAE (config.json + weights), loaded with local_files_only; latent models need "
              "it"),
        Field("samples", Integer(2), 50000, "images generated and scored (50,000 for the papers' FID-50K)"),
        Field("batch", Integer(1), 50, "images per sampling chunk (the unit of resume and of the progress)"),
        Field("decode_batch", Integer(1), 8, "latents per VAE decode call"),
        Field("seed", Integer(0), 0, "seed of every image's initial noise (image i: seeded by (seed, i))"),
        Field("labels", Choice(("random", "balanced")), "random", "class labels: random = uniform per image, "
              "seeded by (seed, i) (as DiT, U-ViT and ADM sample; resume stays exact); balanced = i mod classes"),
        Field("sampler", Choice(("", *SAMPLERS)), "", "sampler at the checkpoint's own resolution; empty: the "
              "family's (DiM, U-ViT: DPM-Solver++; DiT: DDPM)"),
        Field("steps", Integer(0), 0, "network evaluations per sample at the checkpoint's own resolution; 0: the "
              "family's (50; DiT 250)"),
        Field("guidance", GuidanceTable(), None, "classifier-free guidance s at the checkpoint's own resolution: "
              "null = the family's own, a number, {resolution: s} or {model: s or {resolution: s}}"),
        Field("upsample_sampler", Choice(SAMPLERS), "dpm_solver", "sampler above the checkpoint's resolution "
              "(dim.md §8: DPM-Solver, noise prediction)"),
        Field("upsample_steps", Integer(1), 50, "network evaluations per sample above the checkpoint's "
              "resolution (dim.md §8: 50)"),
        Field("upsample_guidance", Number(0), 3.0, "guidance s above the checkpoint's resolution (dim.md §8: 3.0)"),
        Field("upsample_from", UpsampleTable(), {},
              "{model: {resolution: the checkpoint resolution it is sampled from}} by training-free upsampling "
              "(dim.md §8; e.g. {dim_h_2: {1024: 512, 1536: 512}}); only the models named are upsampled, a point "
              "whose checkpoint is at another resolution is skipped"),
        Field("until", Number(0), 0.7, "Upsample Guidance acts while t >= this (the noisiest 30 %)"),
        Field("random_weights", Boolean(), False, "score a model without checkpoint on seeded random weights "
              "(a pipeline speed check; its FID means nothing)"),
    )


FID = FidMetric(
    name="fid",
    rows=(
        Row("fid", "FID", "FID", task="evaluate"),
        Row("inception_score", "IS", "Inception Score", task="evaluate"),
        Row("kid", "KID", "Kernel Inception Distance", task="evaluate"),
        Row("precision", "fraction", "precision (Inception features)", task="evaluate"),
        Row("recall", "fraction", "recall (Inception features)", task="evaluate"),
        Row("sample_s_per_image", "s", "seconds per generated image (sampling with guidance + decoding)",
            task="sample"),
        Row("samples_fid", "images", "FID sample grid", task="sample"),
    ),
    fn=fid_metric,
    description="FID-N of a checkpoint (sampled with the paper's settings; upsampled above its resolution), with "
    "IS, KID, precision/recall, seconds per image and a sample grid; local Inception weights, reference .npz, VAE",
    options=_options(),
    timeout=math.inf,
)
