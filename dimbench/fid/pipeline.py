"""Sample, decode, extract: the long part of FID, in durable chunks.

Images are made in chunks of ``batch`` consecutive indices (chunk k = indices k·batch ... k·batch + batch − 1).
Image i starts from noise drawn from its own generator, seeded from (seed, i), and has class label drawn
uniformly at random from a generator seeded from (seed, i, 2) (``labels="random"``, as DiT, U-ViT and ADM sample)
or i mod num_classes (``labels="balanced"``: every class equally often); the samplers dimbench scores FID with
(DPM-Solver(++), DDIM with η = 0) draw no other noise, so image i is the same whichever run, rank or chunk makes
it. (DDPM's per-step noise comes from a generator seeded from (seed, first index of the chunk): the same as long
as ``batch`` is.)

Sampling and decoding run under the job's precision plan (:mod:`dimbench.fid.precision`: the network under
autocast where the protocol says so; Inception always in float32). With ``patch_crops`` k > 0 and images of at
least 299 px, each image's k random 299-px crops (:mod:`dimbench.fid.patches`) are scored too (patch-FID).

Each finished chunk's Inception features (pool3, unbiased logits, and the crops' pool3), its indices and its
wall times go to
``STATE/chunk_<k>.npz`` (written atomically, :func:`dimbench.files.atomic_write`), so a killed run resumes at the
first chunk not on disk and never re-generates an image already scored. ``STATE/job.json`` records what the chunks were
made with; chunks of other settings (another checkpoint, sampler, seed, batch) are discarded. A chunk is done only
when its ``indices`` are exactly k·batch ... min(count, (k+1)·batch) − 1 of this run: a chunk left by a run with
another ``samples`` is redone (overwritten), and chunks beyond this run's count are not read. Temporary files
(``.chunk_<k>.npz.<pid>.<hex>.tmp``) left by a killed write are removed when the state is prepared.

Under torchrun each rank makes the chunks k with k mod world_size == rank; rank 0 reads them all after a barrier
(one node: the state folder is shared).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dimbench.fid import inception
from dimbench.fid.patches import CROP, random_crops
from dimbench.fid.precision import forward, numerics
from dimbench.fid.seeds import image_seed
from dimbench.files import atomic_write
from dimbench.training.sampling import guidance_for
from models import diffusion

#: Testing aid: after this many chunks written by a process, it kills itself (SIGKILL), as a crash or a
#: preempted job would stop; the resume test uses it.
KILL_ENV = "DIMBENCH_FID_KILL_AFTER_CHUNKS"
GRID_IMAGES = 40


@dataclasses.dataclass
class SampleJob:
    model: torch.nn.Module
    schedule: Any
    timestep: Any
    spec: Any  # dimbench.training.sampling.SamplerSpec
    shape: tuple[int, int, int]  # (C, H, W) of what the model generates (latents or pixels)
    num_classes: int
    count: int
    batch: int
    seed: int
    device: torch.device
    decode: Callable[[torch.Tensor], torch.Tensor]  # model output -> images in [-1, 1]
    extractor: Any
    lowres_model: torch.nn.Module | None = None
    upsample: int | None = None
    until: float = 0.7
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)  # what job.json records
    labels: str = "random"  # "random" (uniform, seeded per image) or "balanced" (i mod num_classes)
    precision: Any = None  # dimbench.fid.precision.Plan for sampling and decoding; None: as the model is
    resize: str = "tf1"  # the Inception resize (dimbench.fid.protocol.RESIZES)
    patch_crops: int = 0  # random 299-px crops scored per image (patch-FID); 0: none




def initial_noise(seed: int, indices, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(image_seed(seed, i)))
                        for i in indices])


LABEL_MODES = ("random", "balanced")


def class_labels(seed: int, indices, num_classes: int, mode: str = "random") -> list[int]:
    """Image i's class: uniform from a generator seeded by (seed, i, 2) ("random"), or i mod num_classes
    ("balanced"). Either depends on (seed, i) only, so a resumed or multi-rank run gives each image its label."""
    if mode == "balanced":
        return [i % num_classes for i in indices]
    if mode != "random":
        raise ValueError(f"labels must be one of {', '.join(LABEL_MODES)}, got {mode!r}")
    return [int(np.random.default_rng(image_seed(seed, i, 2)).integers(num_classes)) for i in indices]


@torch.no_grad()
def sample_chunk(job: SampleJob, indices: list[int]) -> torch.Tensor:
    """The model's outputs (latents or pixels, float32, CPU) for image indices ``indices``."""
    model, spec = job.model, job.spec

    def net(m):  # the network as the protocol runs it (autocast, outputs back to float32)
        return forward(m, job.precision, job.device) if job.precision is not None else m

    spec.sampler.check_schedule(job.schedule)
    x_T = initial_noise(job.seed, indices, job.shape).to(job.device)
    labels = (torch.tensor(class_labels(job.seed, indices, job.num_classes, job.labels), device=job.device)
              if job.num_classes else None)
    guidance = guidance_for(model, spec, job.shape[0], labels is not None)
    null = job.num_classes if guidance else None
    eps = diffusion.model_eps(net(model), job.schedule, job.timestep, y=labels, guidance=guidance, null_class=null,
                              with_variance=spec.sampler.learned_variance and not job.upsample)
    if job.upsample:
        low = diffusion.model_eps(net(job.lowres_model), job.schedule, job.timestep, y=labels, guidance=guidance,
                                  null_class=null)
        eps = diffusion.upsample_guidance(eps, low, job.schedule, int(job.upsample), until=job.until)
    g = torch.Generator(device="cpu").manual_seed(image_seed(job.seed, indices[0], 1))
    return spec.run(eps, job.schedule, x_T, g).float().cpu()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def chunk_path(state: Path, k: int) -> Path:
    return state / f"chunk_{k:06d}.npz"


def chunk_indices(k: int, count: int, batch: int) -> list[int]:
    """The image indices chunk k holds in a run of ``count`` images in chunks of ``batch``."""
    return list(range(k * batch, min(count, (k + 1) * batch)))


def chunk_done(state: Path, k: int, count: int, batch: int) -> bool:
    """True when chunk k is on disk, readable, and holds exactly the indices it should in this run (a chunk of a
    run with another ``samples`` or ``batch`` holds others: it is redone)."""
    p = chunk_path(state, k)
    if not p.exists():
        return False
    try:
        with np.load(p, allow_pickle=False) as z:
            return z["indices"].tolist() == chunk_indices(k, count, batch)
    except Exception:  # noqa: BLE001 - a damaged chunk is redone
        return False


def _save_npz(path: Path, **arrays) -> None:
    # atomic_write's temporary name (".chunk_k.npz.PID.HEX.tmp") never matches the chunk glob (chunk_*.npz), and
    # prepare_state removes one left by a killed write
    atomic_write(path, lambda f: np.savez(f, **arrays))


def prepare_state(state: Path, settings: dict[str, Any]) -> bool:
    """Keep the chunks in ``state`` only if they were made with ``settings``; True when some were discarded."""
    state.mkdir(parents=True, exist_ok=True)
    manifest = state / "job.json"
    text = json.dumps(settings, sort_keys=True, default=str)
    for p in list(state.glob(".tmp-*")) + list(state.glob("*.tmp*")):  # left by a write that was killed
        p.unlink(missing_ok=True)
    if manifest.exists() and manifest.read_text() == text:
        return False
    stale = list(state.glob("chunk_*.npz")) + list(state.glob("grid.npy"))
    for p in stale:
        p.unlink()
    atomic_write(manifest, text)
    return bool(stale)


def run(job: SampleJob, state: Path, *, rank: int = 0, world: int = 1,
        progress: Callable[[int, int, dict], None] | None = None) -> dict[str, Any]:
    """Make and score this rank's missing chunks. Returns what this process did: generated, resumed (images
    found on disk for its chunks), times."""
    chunks = -(-job.count // job.batch)
    mine = [k for k in range(chunks) if k % world == rank]
    done = {k for k in mine if chunk_done(state, k, job.count, job.batch)}
    resumed = sum(len(chunk_indices(k, job.count, job.batch)) for k in done)
    kill_after = int(os.environ.get(KILL_ENV, "0") or 0)
    generated, written = 0, 0
    total_mine = sum(min(job.batch, job.count - k * job.batch) for k in mine)
    for k in mine:
        if k in done:
            continue
        indices = chunk_indices(k, job.count, job.batch)  # a chunk of other indices is overwritten
        _sync(job.device)
        t0 = time.perf_counter()
        with numerics(job.precision) if job.precision is not None else contextlib.nullcontext():
            raw = sample_chunk(job, indices)
            _sync(job.device)
            t1 = time.perf_counter()
            images = job.decode(raw)
            _sync(job.device)
        t2 = time.perf_counter()
        pixels = inception.to_uint8(images)
        pool, logits = inception.extract(job.extractor, pixels, resize=job.resize)
        patches = {}
        if job.patch_crops and min(pixels.shape[-2:]) >= CROP:
            crops = random_crops(pixels, job.seed, indices, job.patch_crops)
            patches["patch_pool"] = inception.extract(job.extractor, crops, resize=job.resize)[0].astype(np.float32)
        t3 = time.perf_counter()
        if k == 0:
            np.save(state / "grid.npy", pixels[:GRID_IMAGES].numpy())
        _save_npz(chunk_path(state, k), pool=pool.astype(np.float32), logits=logits.astype(np.float32),
                  indices=np.asarray(indices, np.int64), sample_s=np.float64(t1 - t0), decode_s=np.float64(t2 - t1),
                  extract_s=np.float64(t3 - t2), image_px=np.int64(pixels.shape[-1]), **patches)
        generated += len(indices)
        written += 1
        if progress is not None:
            progress(resumed + generated, total_mine, {"chunk": k, "img_per_s": len(indices) / max(t3 - t0, 1e-9)})
        if kill_after and written >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    return {"generated": generated, "resumed": resumed, "chunks": chunks}


def gather(state: Path, count: int, batch: int) -> dict[str, Any]:
    """Every chunk's features and times, in index order (rank 0, after all ranks finished)."""
    chunks = -(-count // batch)
    pools, logits, indices, patch_pools = [], [], [], []
    sample_s = decode_s = extract_s = 0.0
    image_px = None
    for k in range(chunks):
        p = chunk_path(state, k)
        if not p.exists():
            raise RuntimeError(f"chunk {k} of {chunks} is missing in {state} (a rank did not finish)")
        with np.load(p, allow_pickle=False) as z:
            if z["indices"].tolist() != chunk_indices(k, count, batch):
                raise RuntimeError(f"chunk {k} in {state} holds images {z['indices'].tolist()[:3]}..., not those of "
                                   f"a run of {count} in chunks of {batch} (a rank did not finish)")
            indices.append(z["indices"])
            pools.append(z["pool"])
            if "patch_pool" in z.files:
                patch_pools.append(z["patch_pool"])
            logits.append(z["logits"])
            sample_s += float(z["sample_s"])
            decode_s += float(z["decode_s"])
            extract_s += float(z["extract_s"])
            image_px = int(z["image_px"])
    return {"pool": np.concatenate(pools), "logits": np.concatenate(logits), "indices": np.concatenate(indices),
            "patch_pool": np.concatenate(patch_pools) if len(patch_pools) == chunks else None,
            "sample_s": sample_s, "decode_s": decode_s, "extract_s": extract_s, "image_px": image_px}
