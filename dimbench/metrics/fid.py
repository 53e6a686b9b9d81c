"""The ``fid`` metric: FID (and Inception Score, KID, precision/recall) of a checkpoint at a point's resolution.

For a point (model, resolution, the suite's ``checkpoint:``) it samples ``samples`` images (50,000 for the paper
number) following the evaluation protocol of the model's family (dimbench/fid/protocols.yaml, read from each
paper's official code: sampler and steps, the published guidance scale for the model and resolution, labels,
numeric precision of the network and the VAE decode, Inception resize), each overridable by an option, or, at a
multiple of the checkpoint's own resolution (1024 / 1536 px from the 512 model) and only for the models
``upsample_from`` names (DiM in suites/fid_imagenet.yaml), by training-free upsampling with Upsample Guidance
(dim.md §8: DPM-Solver 50 steps, noise prediction, s = 3.0); decodes latents with the local Stable Diffusion VAE
(diffusers, scale 0.18215); extracts the TF-2015-12-05 Inception features (torch-fidelity's port) from the local
weights file; scores against the reference statistics (ADM / U-ViT .npz; per model when the option is a table).
A row is ``comparable_to_published`` only when :func:`dimbench.fid.protocol.judge` finds the checkpoint a known
release and every item of its protocol matched; otherwise ``not_comparable`` lists what differed. Above the
published resolutions KID (against reference images) and a labelled patch-FID (random 299-px crops at native
resolution against crops of ``reference_images``) help judge what FID at 299 px cannot. A long task: progress,
the features saved per chunk in ``ctx.state_dir`` (a killed run resumes without re-generating scored images),
the seconds per image of the whole sampling run, and a grid of the first samples (``samples_fid``).

Every path is checked when the suite is read (:meth:`FidMetric.check_options`, called by the suite's
validation): each missing, unreadable or wrong one is named, exit 2, before any point runs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import models
from dimbench.errors import UserError
from dimbench.fid import inception, pipeline, precision, protocol
from dimbench.fid.folder import folder_features, image_files
from dimbench.fid.inception import EXPECTED_SHA256_PREFIX, SHA256_PREFIX_TEXT, is_sha256_prefix
from dimbench.fid.options import (
    GuidanceTable,
    IdentifyTable,
    LocalPath,
    PathPerResolution,
    UpsampleTable,
    files_of,
    guidance_for,
    is_per_model,
    reference_for,
    upsample_source,
)
from dimbench.fid.protocol import PRECISIONS, RESIZE_TEXT, RESIZES
from dimbench.fid.reference import check_reference_file, read_reference
from dimbench.fid.scores import NEIGHBORHOOD, PRC_BATCH, all_scores, fid
from dimbench.fid.vae import SCALE, decode, load_vae
from dimbench.files import atomic_write
from dimbench.metrics.base import Measurement, Metric, MetricContext, Row, SkipMetric, slug
from dimbench.metrics.common import model_kwargs, resolve_device
from dimbench.points import SweepPoint
from dimbench.quality.frechet import gaussian_stats
from dimbench.schema import Boolean, Choice, Field, Integer, Number, Text
from dimbench.training.distributed import distributed_info
from dimbench.training.sampling import SamplerSpec, sampler_for, sampler_or_family, save_grid
from models.diffusion import dpm_solver_sample, make_schedule, sampler_names

SAMPLES_DIR = "samples"
UNAVAILABLE = "not available: torch-fidelity does not import"
PROTOCOL = "protocol"  # option value: follow the family's protocol


@functools.lru_cache(maxsize=16)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    return inception.sha256_of(path)


def file_sha256(path: str) -> str:
    """SHA-256 of a file, hashed once per (path, size, mtime) in this process (reference files are shared by
    every point of a suite)."""
    st = os.stat(path)
    return _cached_sha256(os.path.abspath(path), st.st_size, st.st_mtime_ns)


@dataclasses.dataclass(frozen=True)
class FidMetric(Metric):
    """A Metric whose paths the suite's validation checks as a whole (required ones given, the weights' hash)."""

    def check_options(self, options: Mapping[str, Any], model_names: Sequence[str], resolutions: Sequence[int],
                      batches: Sequence[int] = ()) -> list[tuple[str, str]]:
        """(option, message) for each problem of the resolved options: what a run would stop on. Each reference
        file is opened (keys, shapes); a {resolution: file} mapping must cover every one of ``resolutions`` and a
        {model: ...} mapping must name every model (a resolution it does not cover is skipped with the reason)."""
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
                             "(ADM reference batch or U-ViT fid_stats_*.npz), {resolution: file} or {model: file "
                             "or {resolution: file}}, got nothing"))
        else:
            reference = options["reference"]
            for file in dict.fromkeys(f for f in files_of(reference) if os.path.exists(f)):
                message = check_reference_file(file)  # a missing file is the path type's message already
                if message:
                    problems.append(("reference", f"key 'options.fid.reference': {message}"))
            if is_per_model(reference):
                missing = [m for m in dict.fromkeys(model_names) if m not in reference]
                what = "models"
            else:
                missing = [r for r in (resolutions or ()) if isinstance(reference, dict) and r not in reference]
                what = "resolutions"
            if missing:
                given = model_names if what == "models" else resolutions
                problems.append(("reference", f"key 'options.fid.reference': names no file for "
                                 f"{', '.join(map(str, missing))}" + (" px" if what == "resolutions" else "") +
                                 f" (the suite's {what}: {', '.join(map(str, dict.fromkeys(given)))})"))
        latent = [m for m in model_names if m in models.list_models() and models.model_info(m).latent]
        if latent and not options.get("vae"):
            problems.append(("vae", f"key 'options.fid.vae': expected the local VAE folder (diffusers "
                             f"AutoencoderKL, Stable Diffusion KL-f8) that {', '.join(latent)} decode(s) with, got "
                             "nothing"))
        return problems


def _load_models(point: SweepPoint, o: dict, device: torch.device):
    """(model at the point's size, the model at its own size when upsampling else None, factor, facts)."""
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
    native_px = models.model_info(point.model).resolution(native)
    if point.input_size != native:
        source = upsample_source(o["upsample_from"], point.model, point.resolution)
        if source != native_px or point.input_size % native:
            raise SkipMetric(f"the checkpoint is a {native_px} px model; options.fid.upsample_from gives "
                             f"{point.model} at {point.resolution} px " +
                             (f"from {source} px checkpoints" if source else "no source resolution (training-free "
                              "upsampling runs only for the models it names)") + ": not scored here")
    facts = {"checkpoint": point.checkpoint, "checkpoint_sha256": file_sha256(point.checkpoint)}
    own = models.load_checkpoint(point.model, point.checkpoint, options=point.options, map_location=device)
    if point.input_size == native:
        return own, None, None, facts
    m = point.input_size // native
    finetune = {**(fam.diffusion.finetune if fam.diffusion else {}), **point.options}  # the point's choice wins
    high = models.load_checkpoint(point.model, point.checkpoint, input_size=point.input_size, map_location=device,
                                  **finetune)
    # dim.md §8: the low-resolution pass uses the resized table resized back, as the official code does.
    models.load_resized_state_dict(own, high.state_dict())
    return high.eval(), own.eval(), m, {**facts, "trained_input_size": native, **finetune}


def _decoder(o: dict, model: torch.nn.Module, device: torch.device, plan):
    """(decode function, description, the VAE's precision plan or None for a pixel model)."""
    channels = int(model.in_channels)
    if o["vae"]:
        vae = load_vae(o["vae"], device)
        latent_channels = int(vae.config.latent_channels)
        if channels == latent_channels:
            return (lambda z: decode(vae, z, batch=max(1, o["decode_batch"]), autocast=plan.autocast),
                    f"latents decoded by the VAE {o['vae']} (AutoencoderKL, z / {SCALE}) in {plan.note}", plan)
    if channels not in (1, 3):
        raise ValueError(f"{channels}-channel outputs are latents: give options.fid.vae (a local diffusers "
                         "AutoencoderKL folder) to decode them")
    return (lambda x: x.float().clamp(-1, 1)), "pixel model: outputs are the images", None


def _cache_path(ctx: MetricContext, key: str) -> Path:
    base = Path(ctx.out_dir) / "state" / "fid_reference" if ctx.out_dir else ctx.state_dir
    return base / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"


def _cached(ctx: MetricContext, key: str, compute) -> dict[str, np.ndarray]:
    """Arrays computed once per key in the run's state (reference features are shared by every point)."""
    cache = _cache_path(ctx, key)
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    arrays = {k: v for k, v in compute().items() if v is not None}
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(cache, lambda f: np.savez(f, **arrays))
    return arrays


def _real_features(ctx: MetricContext, ref, extractor, weights_sha: str, resize: str) -> np.ndarray:
    """pool3 features of an ADM reference batch's images, cached per (file, weights, resize) in the run's state."""
    stat = os.stat(ref.path)
    key = f"{os.path.abspath(ref.path)}|{stat.st_size}|{stat.st_mtime_ns}|{weights_sha}|{resize}"

    def compute():
        images = torch.from_numpy(np.ascontiguousarray(ref.images)).permute(0, 3, 1, 2)
        return {"pool": inception.extract(extractor, images, resize=resize)[0]}

    return _cached(ctx, key, compute)["pool"]


def _folder_features(ctx: MetricContext, folder: str, image_px: int, extractor, weights_sha: str, resize: str,
                     crops: int, seed: int) -> dict[str, np.ndarray]:
    """{"pool": features of the folder's images at image_px, "patch_pool": of their crops (when crops)}, cached
    per (listing, resolution, weights, resize, crops, seed)."""
    files = image_files(folder)
    listing = hashlib.sha1("\n".join(f"{f}|{f.stat().st_size}|{f.stat().st_mtime_ns}" for f in files).encode())
    key = f"folder|{listing.hexdigest()}|{image_px}|{weights_sha}|{resize}|{crops}|{seed}"

    def compute():
        pool, patch_pool = folder_features(files, image_px, extractor, resize=resize, crops=crops, seed=seed)
        return {"pool": pool, "patch_pool": patch_pool}

    return _cached(ctx, key, compute)


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a point runs with, each knob resolved from its option or the family's protocol."""

    spec: Any  # SamplerSpec
    stage: str
    resize: str
    precision: Any  # dimbench.fid.precision.Plan of the network
    vae_precision: str
    protocol: Any  # dimbench.fid.protocol.Protocol or None


def _settings(point: SweepPoint, o: dict, m: int | None, facts: dict, device: torch.device) -> Settings:
    fam = models.family_of_model(point.model)
    proto = protocol.for_model(point.model)
    if m:
        spec = SamplerSpec(o["upsample_sampler"], int(o["upsample_steps"]), float(o["upsample_guidance"]))
        stage = (f"training-free upsampling x{m} from the checkpoint's {facts['trained_input_size']}-side model "
                 f"(position embedding resized), Upsample Guidance while t >= {o['until']:g}")
    else:
        guidance = guidance_for(o["guidance"], point.model, point.resolution)
        if guidance is None:
            guidance = protocol.published_guidance(point.model, point.resolution)
        spec = sampler_for(fam, o["sampler"] or (proto.sampler if proto else None),
                           o["steps"] or (proto.steps if proto else None), guidance)
        stage = "at the checkpoint's own resolution" if point.checkpoint else "random weights (pipeline check)"

    def pick(name: str, default: str) -> str:
        return o[name] if o[name] != PROTOCOL else (getattr(proto, name) if proto else default)

    return Settings(spec, stage, pick("inception_resize", "tf1"), precision.plan(pick("precision", "float32"), device),
                    pick("vae_precision", "float32"), proto)


def fid_metric(point: SweepPoint, ctx: MetricContext) -> list[Measurement]:
    reason = inception.available()
    if reason:
        raise SkipMetric(f"{UNAVAILABLE} ({reason})")
    if point.dtype != "float32":
        raise SkipMetric(f"FID keeps float32 weights (the papers' reduced precision is autocast: options.fid."
                         f"precision): this point's dtype is {point.dtype} (give the fid metric dtypes: [float32])")
    o = ctx.options
    problems = FID.check_options(o, [point.model], [point.resolution])
    if problems:
        raise UserError("; ".join(m for _, m in problems))
    ref_path = reference_for(o["reference"], point.resolution, point.model)
    if ref_path is None:
        raise SkipMetric(f"options.fid.reference names no file for {point.model} at {point.resolution} px")
    device = resolve_device(point)
    fam = models.family_of_model(point.model)
    model, low, m, facts = _load_models(point, o, device)
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    recipe = fam.diffusion
    run = _settings(point, o, m, facts, device)
    decode, decoded, vae_plan = _decoder(o, model, device, precision.plan(run.vae_precision, device))
    extractor, weights_sha = inception.load_extractor(o["inception_weights"], o["inception_sha256"], device)
    shape = (int(model.in_channels), point.input_size, point.input_size)
    subset = recipe.guided_channels if recipe else None
    channels = subset if subset is not None and shape[0] > subset else None  # DiT: 3 of its 4 latent channels
    crops = int(o["patch_crops"]) if o["reference_images"] else 0
    settings = {"model": point.model, "point": point.key, **facts, "sampler": run.spec.name,
                "steps": run.spec.steps, "guidance": run.spec.guidance, "seed": o["seed"], "batch": o["batch"],
                "shape": shape, "vae": o["vae"], "inception_sha256": weights_sha, "upsample": m,
                "until": o["until"] if m else None, "labels": o["labels"], "inception_resize": run.resize,
                "precision": run.precision.ran, "vae_precision": vae_plan.ran if vae_plan else None,
                "patch_crops": crops}
    job = pipeline.SampleJob(model=model, schedule=make_schedule(recipe.schedule), timestep=fam.timestep,
                             spec=run.spec, shape=shape, num_classes=num_classes, count=o["samples"],
                             batch=o["batch"], seed=o["seed"], device=device, decode=decode, extractor=extractor,
                             lowres_model=low, upsample=m, until=o["until"], settings=settings, labels=o["labels"],
                             precision=run.precision, resize=run.resize, patch_crops=crops)
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
    scored = _Scored(point=point, o=o, run=run, vae_plan=vae_plan, sampled=run.spec.describe(channels if num_classes
                     else None), guided_channels=channels if num_classes and run.spec.guidance else None,
                     decoded=decoded, facts=facts, weights_sha=weights_sha, ref_path=ref_path, did=did,
                     world=dist.world_size, extractor=extractor, num_classes=num_classes, m=m, device=device)
    return _rows(ctx, scored)


@dataclasses.dataclass
class _Scored:
    """Everything a point's rows say, gathered once sampling finished."""

    point: SweepPoint
    o: dict
    run: Settings
    vae_plan: Any
    sampled: str
    guided_channels: int | None
    decoded: str
    facts: dict
    weights_sha: str
    ref_path: str
    did: dict
    world: int
    extractor: Any
    num_classes: int
    m: int | None
    device: torch.device


def _verdict(s: _Scored, n: int, ref):
    """dimbench.fid.protocol.judge on what ran, and the extra keys it gives every row."""
    # _run_sampler calls DPM-Solver with its default grid: record that default, whatever it becomes.
    dpm_grid = inspect.signature(dpm_solver_sample).parameters["skip"].default
    skip = dpm_grid if s.run.spec.name in ("dpm_solver", "dpm_solver++") else None
    ref_sha = file_sha256(ref.path)
    ran = protocol.Ran(model=s.point.model, resolution=s.point.resolution, upsampled=bool(s.m),
                       checkpoint_sha256=s.facts.get("checkpoint_sha256"), sampler=s.run.spec.name,
                       steps=s.run.spec.steps, skip=skip, guidance=s.run.spec.guidance,
                       guided_channels=s.guided_channels, labels=s.o["labels"], samples=n,
                       inception_resize=s.run.resize, reference_sha256=ref_sha, reference_resize=ref.inception_resize,
                       precision=s.run.precision.ran, vae_precision=s.vae_plan.ran if s.vae_plan else None)
    v = protocol.judge(ran, s.o["identify"])
    published = protocol.published_fid(v.release.id) if v.release else None
    return v, {"release": v.release.id if v.release else None, "release_identified_by": v.release_identified_by or None,
               "published_fid": str(published) if published is not None else None,
               "protocol": s.run.protocol.id if s.run.protocol else None, "reference_sha256": ref_sha,
               "reference_id": v.reference.id if v.reference else None,
               "comparable_to_published": v.comparable, "not_comparable": list(v.failed)}


def _real(ctx: MetricContext, s: _Scored, ref, image_px: int) -> tuple[np.ndarray | None, str, dict]:
    """(real pool3 features for KID and precision/recall, where they come from, the reference folder's arrays):
    the reference file's images (ADM), else the images of ``reference_images`` at the samples' size."""
    folder = {}
    if s.o["reference_images"]:
        folder = _folder_features(ctx, s.o["reference_images"], image_px, s.extractor, s.weights_sha, s.run.resize,
                                  int(s.o["patch_crops"]) if image_px >= 299 else 0, int(s.o["seed"]))
    if ref.images is not None:
        return (_real_features(ctx, ref, s.extractor, s.weights_sha, s.run.resize),
                f"the {len(ref.images)} images of {ref.path}", folder)
    if folder:
        return (folder["pool"], f"the {len(folder['pool'])} images of {s.o['reference_images']} (center crop, "
                f"bicubic resize to {image_px} px)", folder)
    return None, "", folder


def _rows(ctx: MetricContext, s: _Scored) -> list[Measurement]:
    o, point = s.o, s.point
    feats = pipeline.gather(ctx.state_dir, o["samples"], o["batch"])
    ref = read_reference(s.ref_path)
    real, real_from, folder = _real(ctx, s, ref, feats["image_px"])
    if ref.mu is not None:
        mu, sigma, stats_from = ref.mu, ref.sigma, "the file's mu/sigma"
    else:
        mu, sigma = gaussian_stats(real)
        stats_from = f"pool3 statistics of its {len(real)} images (computed here)"
    n = int(feats["pool"].shape[0])
    scores = all_scores(feats["pool"], feats["logits"], mu, sigma, real, device=s.device)
    verdict, judged = _verdict(s, n, ref)
    facts = s.facts
    ckpt = (f"checkpoint {facts['checkpoint']} (SHA256 {facts['checkpoint_sha256']})" if facts.get("checkpoint")
            else "random weights (no checkpoint: a pipeline check, not a quality number)")
    if not s.num_classes:
        labels = "unconditional"
    elif o["labels"] == "balanced":
        labels = (f"balanced labels i mod {s.num_classes} (DiT, U-ViT and ADM sample uniformly random labels "
                  "instead)")
    else:
        labels = f"labels uniformly random in 0..{s.num_classes - 1}, seeded by (seed, i) (as DiT, U-ViT and ADM)"
    run = s.run
    protocol = (f"the {run.protocol.id} protocol (dimbench/fid/protocols.yaml) unless an option set them"
                if run.protocol else "the options (no published protocol for this family)")
    comparable = ("comparable with the published FID-50K " + judged["published_fid"] + f" of {verdict.release.id}"
                  if verdict.comparable else "not comparable with a published FID-50K: " +
                  "; ".join(verdict.failed))
    how = (f"{s.sampled}; {n} samples, network in {run.precision.note}, in chunks of {o['batch']} images "
           f"(options.fid.batch; the point's batch is not used) (seed {o['seed']}, image i from its own noise "
           f"seeded by (seed, i), {labels}), {run.stage}; {s.decoded}; {ckpt}; Inception pool3 features of "
           f"torch-fidelity's TF-2015-12-05 port in float32 (TF32 off), weights {o['inception_weights']} (SHA256 "
           f"{s.weights_sha}), Inception resize {run.resize}: {RESIZE_TEXT[run.resize]}; reference "
           f"{ref.describe()}, statistics from {stats_from}; settings from {protocol}; {comparable}")
    extra = {"stage": run.stage, "sampler": run.spec.name, "sampler_steps": run.spec.steps,
             "guidance_s": run.spec.guidance, "guidance_w": run.spec.guidance + 1, "image_px": feats["image_px"],
             "n_fake": n, "n_real": ref.count, "seed": o["seed"], "checkpoint": facts.get("checkpoint"),
             "checkpoint_sha256": facts.get("checkpoint_sha256"), "inception_weights": o["inception_weights"],
             "inception_sha256": s.weights_sha, "reference": ref.path, "reference_layout": ref.layout,
             "vae": o["vae"] or None, "upsample_factor": s.m, "world_size": s.world,
             "generated_this_run": s.did["generated"], "resumed_images": s.did["resumed"], "labels": o["labels"],
             "batch": o["batch"], "random_weights": not facts.get("checkpoint"), "inception_resize": run.resize,
             "precision": run.precision.asked, "precision_ran": run.precision.ran,
             "vae_precision": s.vae_plan.asked if s.vae_plan else None,
             "vae_precision_ran": s.vae_plan.ran if s.vae_plan else None, **judged}
    rows = [Measurement("fid", scores["fid"], None, "Fréchet Inception distance (dimbench.quality.frechet on "
                        "pool3 features, unbiased covariance); " + how, extra),
            Measurement("inception_score", scores["is_mean"], None, "Inception Score (torch-fidelity's "
                        "isc_features_to_metric, 10 splits, unbiased logits); " + how,
                        {**extra, "std": scores["is_std"]})]
    if real is not None and "precision" not in scores:
        why = (f"precision/recall need more than {NEIGHBORHOOD} images in each set ({n} samples, "
               f"{len(real)} real)")
        rows += [Measurement(r, None, None, "", extra, status="skipped", error=why) for r in ("precision", "recall")]
    if real is not None:
        against = f"against {real_from}; "
        rows += [Measurement("kid", scores["kid_mean"], None, f"Kernel Inception Distance (torch-fidelity's "
                             f"kid_features_to_metric: 100 subsets of {scores['kid_subset_size']}, cubic kernel) "
                             + against + how, {**extra, "std": scores["kid_std"], "real_from": real_from})]
    if real is not None and "precision" in scores:
        rows += [Measurement("precision", scores["precision"], None, "precision (torch-fidelity's "
                             f"prc_features_to_metric, 3 nearest neighbours, memory-saving path in blocks of "
                             f"{PRC_BATCH} rows on {s.device}) " + against + how, {**extra, "real_from": real_from}),
                 Measurement("recall", scores["recall"], None, "recall (torch-fidelity's prc_features_to_metric, "
                             f"3 nearest neighbours, memory-saving path on {s.device}) " + against + how,
                             {**extra, "real_from": real_from})]
    else:
        why = (f"the reference {ref.path} holds statistics only (mu/sigma) and no reference_images folder is given: "
               "KID and precision/recall need real images")
        rows += [Measurement(r, None, None, "", extra, status="skipped", error=why)
                 for r in ("kid", "precision", "recall")]
    rows.append(_patch_row(s, feats, folder, how, extra, fid))
    spent = feats["sample_s"] + feats["decode_s"]
    rows.append(Measurement("sample_s_per_image", spent / n, None,
                            f"wall clock of sampling + decoding summed over all chunks (every run and rank) / {n} "
                            f"images, batch {o['batch']} (options.fid.batch), network in {run.precision.note}, "
                            f"{s.sampled} on {point.device}; Inception extraction "
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


def _patch_row(s: _Scored, feats: dict, folder: dict, how: str, extra: dict, fid) -> Measurement:
    """patch-FID: Fréchet distance between the pool3 features of random 299-px crops of the samples at their
    native resolution and of the reference folder's images at the same size (never called FID)."""
    o, px = s.o, feats["image_px"]
    crops = int(o["patch_crops"])
    if not o["reference_images"] or not crops:
        why = "no reference_images folder given (patch-FID compares crops of samples with crops of real images)"
    elif px < 299:
        why = f"the samples are {px} px, smaller than Inception's 299 px crop"
    elif feats["patch_pool"] is None or "patch_pool" not in folder:
        why = "crop features missing from the state (a chunk made without crops)"
    else:
        fake, real = feats["patch_pool"], folder["patch_pool"]
        mu, sigma = gaussian_stats(real)
        return Measurement("patch_fid", fid(fake, mu, sigma), None,
                           f"patch-FID (not FID, and not comparable with any published FID): Fréchet distance of "
                           f"pool3 features of {crops} random {299}-px crop(s) per image at the samples' native "
                           f"{px} px ({len(fake)} crops; image i's offsets seeded by (seed, i, 3)) against as many "
                           f"crops of each of the {len(real) // crops} images of {o['reference_images']} (center "
                           f"crop, bicubic resize to {px} px); " + how,
                           {**extra, "patch_crops": crops, "n_fake_crops": len(fake), "n_real_crops": len(real),
                            "reference_images": o["reference_images"]})
    return Measurement("patch_fid", None, None, "", extra, status="skipped", error=why)


def _options() -> tuple[Field, ...]:
    return (
        Field("inception_weights", LocalPath("file", "the FID Inception weights file"), "",
              "torch-fidelity's weights-inception-2015-12-05-6726825d.pth (or pytorch-fid's "
              "pt_inception-2015-12-05-6726825d.pth); required, never downloaded"),
        Field("inception_sha256", Text(SHA256_PREFIX_TEXT, rule=is_sha256_prefix), EXPECTED_SHA256_PREFIX,
              "the start (or all) of the weights file's SHA256; a file that does not match is refused"),
        Field("inception_resize", Choice((PROTOCOL, *RESIZES)), PROTOCOL, "how images reach Inception's 299 px: "
              "tf1 = torch-fidelity's TF1-style bilinear (ADM's evaluator, DiT's FID), torch = pytorch-fid's "
              "F.interpolate (U-ViT's and DiM's FID); protocol = the family's paper's"),
        Field("reference", PathPerResolution("file", "a reference statistics .npz"), "",
              "ADM reference batch (arr_0 images, mu, sigma) or U-ViT fid_stats_*.npz (mu, sigma) or `dimbench "
              "fid-stats` output; one for all, {resolution: file}, or per model {model: file or {resolution: "
              "file}} (each family against its paper's statistics); required"),
        Field("identify", IdentifyTable(), {}, "{SHA-256: release or reference id of dimbench/fid/protocols.yaml}: "
              "declares which released checkpoint or reference file a file is where the package records no hash "
              "for it (recorded in the rows as the suite's declaration)"),
        Field("reference_images", LocalPath("folder", "a folder of real images"), "",
              "real images (flat or class subfolders) for KID and precision/recall when the reference holds "
              "statistics only, and for patch-FID; read at the samples' size (center crop, bicubic resize)"),
        Field("patch_crops", Integer(0), 1, "random 299-px crops per image for patch-FID (samples of at least 299 "
              "px, with reference_images); 0: no patch-FID"),
        Field("vae", LocalPath("folder", "a local diffusers AutoencoderKL folder"), "",
              "Stable Diffusion KL-f8 VAE (config.json + weights), loaded with local_files_only; latent models need "
              "it"),
        Field("precision", Choice((PROTOCOL, *PRECISIONS)), PROTOCOL, "the network's numerics while sampling "
              "(CUDA; the CPU runs float32 and says so): float32 (TF32 off), tf32, bf16 or fp16 autocast on "
              "float32 weights; protocol = the paper's (DiM bf16, U-ViT fp16, DiT tf32)"),
        Field("vae_precision", Choice((PROTOCOL, *PRECISIONS)), PROTOCOL, "the VAE decode's numerics (CUDA); "
              "protocol = the paper's (DiM and U-ViT fp16 autocast, DiT tf32)"),
        Field("samples", Integer(2), 50000, "images generated and scored (50,000 for the papers' FID-50K)"),
        Field("batch", Integer(1), 50, "images per sampling chunk (the unit of resume and of the progress)"),
        Field("decode_batch", Integer(1), 8, "latents per VAE decode call"),
        Field("seed", Integer(0), 0, "seed of every image's initial noise (image i: seeded by (seed, i))"),
        Field("labels", Choice(("random", "balanced")), "random", "class labels: random = uniform per image, "
              "seeded by (seed, i) (as DiT, U-ViT and ADM sample; resume stays exact); balanced = i mod classes"),
        Field("sampler", Choice(sampler_or_family), "", "sampler at the checkpoint's own resolution; empty: the "
              "family's protocol's (DiM, U-ViT: DPM-Solver++; DiT: DDPM)"),
        Field("steps", Integer(0), 0, "network evaluations per sample at the checkpoint's own resolution; 0: the "
              "protocol's (50; DiT 250)"),
        Field("guidance", GuidanceTable(), None, "classifier-free guidance s at the checkpoint's own resolution: "
              "null = the published scale for the model and resolution (dimbench/fid/protocols.yaml), else the "
              "family's own; a number, {resolution: s} or {model: s or {resolution: s}}"),
        Field("upsample_sampler", Choice(sampler_names), "dpm_solver", "sampler above the checkpoint's resolution "
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
        Row("patch_fid", "FID", "patch-FID (random 299-px crops at native resolution; not FID)", task="evaluate"),
        Row("sample_s_per_image", "s", "seconds per generated image (sampling with guidance + decoding)",
            task="sample"),
        Row("samples_fid", "images", "FID sample grid", task="sample"),
    ),
    fn=fid_metric,
    description="FID-N of a checkpoint (sampled with its paper's protocol; upsampled above its resolution), with "
    "IS, KID, precision/recall, patch-FID, seconds per image and a sample grid; local Inception weights, reference "
    ".npz, VAE; comparable_to_published says whether it stands beside the published number",
    options=_options(),
    timeout=math.inf,
)
