"""The ``train`` metric: train the point's model as a diffusion model, as a long task inside the runner.

At a point it trains from scratch on the suite's data at the point's resolution, with the point's batch (the
global batch of one optimizer step) and dtype (float32, or autocast in bfloat16/float16). With the option
``weak_to_strong_from: R`` a point at a resolution above R is a *weak-to-strong* fine-tune instead (dim.md §6):
the model trained at R px (the same model, batch and dtype, earlier in the run) is loaded into the model for the
point's grid (position embedding resized by the family's loader; the family's fine-tune options applied, DiM's
pad layout "cyclic"), its trained weights start both the model and the EMA, and it is fine-tuned with the
``finetune_*`` options.

With ``seeds: n`` (n > 1) a from-scratch point trains n runs, seeds ``seed`` .. ``seed + n - 1`` (initial
weights, batches, noise): the first keeps the checkpoint ``checkpoint.pt``, the others ``checkpoint-seed<S>.pt``
beside it, and ``quality`` scores every one (mean and spread over seeds). A weak-to-strong point fine-tunes the
first seed's model only.

The loss of every ``log_every`` steps is streamed as a ``train_loss`` row (with its step) while training goes
on, and with held-out data (the digits' test split) the loss on it every ``heldout_every`` steps as a
``train_loss_heldout`` row; both for the first seed (one curve per point). The checkpoints (model, EMA,
optimizer, step) live in the metric's state folder and are written at multiples of ``log_every``, so an
interrupted run resumes where its last checkpoint was and writes the same curve. Other metrics at the point
(``quality``, ``upsample``) read the trained EMA weights from there.

Final rows, each the mean over seeds with every seed's value in ``extra.per_seed``: the last logged loss, the
training images per second (each seed's median over its logged windows), the training time (its windows' wall
time: checkpoint writes and held-out losses excluded) and the training FLOPs (3 x the forward FLOPs of one image,
dimbench's meta-device count, x the images the optimizer saw: the backward costs about two forwards).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

import models
from dimbench.data import DIGITS_SPEC, load_data
from dimbench.metrics.base import STATE_DIR, Measurement, Metric, MetricContext, Row, Summary, slug
from dimbench.metrics.common import probe_backends, resolve_device
from dimbench.metrics.flops import count_model_flops
from dimbench.points import SweepPoint
from dimbench.schema import Boolean, Choice, Field, Integer, Number, PerModel, Text, per_model, per_model_problems
from dimbench.training import TrainConfig, Trainer, load_training_state
from models.diffusion import SCHEDULES

CHECKPOINT = "checkpoint.pt"


def train_state_path(out_dir: str | Path, point: SweepPoint, seed: int | None = None) -> Path:
    """Where the ``train`` metric keeps the training checkpoint of ``point`` in the run folder ``out_dir``: the
    first seed's (None), or that of another seed of a multi-seed point."""
    return Path(out_dir) / STATE_DIR / slug(point.key) / "train" / _checkpoint_name(seed)


def _checkpoint_name(seed: int | None) -> str:
    return CHECKPOINT if seed is None else f"checkpoint-seed{seed}.pt"


def load_trained(out_dir: str | Path | None, point: SweepPoint, *, weights: str = "ema",
                 device: torch.device | str = "cpu", seed: int | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model the ``train`` metric finished at ``point`` (its EMA weights unless ``weights="model"``), in
    eval mode, and the checkpoint's facts (step, config, meta; ``meta["seeds"]`` lists every seed trained at the
    point). ``seed``: another seed's run of a multi-seed point (None: the first). RuntimeError when there is none
    or it is unfinished."""
    if out_dir is None:
        raise RuntimeError("needs the run folder (the trained checkpoint is in it): run it in a suite")
    path = train_state_path(out_dir, point, seed)
    if not path.exists():
        raise RuntimeError(f"no trained model for {point.key}: the train metric has not run at this point "
                           f"(expected {path})")
    state = load_training_state(path)
    if int(state["step"]) < int(state["config"]["steps"]):
        raise RuntimeError(f"the training of {point.key} stopped at step {state['step']} of "
                           f"{state['config']['steps']}: run the suite again to finish it")
    with torch.device(device):
        model = models.create_model(point.model, **_build_kwargs(state["model_config"], point))
    model.load_state_dict(state[weights])
    model.model_name = point.model
    return model.eval(), {"step": int(state["step"]), "config": state["config"], "meta": state.get("meta", {})}


def _build_kwargs(saved: dict[str, Any], point: SweepPoint) -> dict[str, Any]:
    kwargs = dict(saved) if saved else {"input_size": point.input_size}
    kwargs["input_size"] = point.input_size
    return kwargs


def train_config(ctx: MetricContext, point: SweepPoint, finetune: bool, seed: int | None = None):
    """The :class:`TrainConfig` of this point from the metric's options (``finetune_*`` when fine-tuning);
    ``seed`` replaces the ``seed`` option (the other runs of a multi-seed point)."""
    o = ctx.options
    pick = (lambda k: o[f"finetune_{k}"]) if finetune else (lambda k: o[k])
    return TrainConfig(
        steps=per_model(pick("steps"), point.model), batch=point.batch, lr=pick("lr"), warmup=pick("warmup"),
        weight_decay=pick("weight_decay"), label_drop=pick("label_drop"), betas=(o["beta1"], o["beta2"]),
        eps=o["adam_eps"], grad_clip=o["grad_clip"] or None, ema=o["ema"], precision=point.dtype,
        grad_accum=o["grad_accum"], activation_checkpointing=o["activation_checkpointing"],
        schedule=o["schedule"] or _family(point).diffusion.schedule, seed=o["seed"] if seed is None else seed,
        log_every=o["log_every"], checkpoint_every=o["checkpoint_every"], ema_warmup=o["ema_warmup"],
        heldout_every=o["heldout_every"] if o["data"] == DIGITS_SPEC else 0,
    )


def _family(point: SweepPoint) -> models.Family:
    fam = models.family_of_model(point.model)
    if fam.diffusion is None:
        raise ValueError(f"{fam.display} declares no diffusion recipe (models.registry.DiffusionRecipe)")
    return fam


def build_for_training(model_name: str, input_size: int, *, channels: int, seed: int, device: torch.device,
                       options: Mapping[str, Any] | None = None, init_from: torch.nn.Module | None = None,
                       init_what: str = "") -> tuple[torch.nn.Module, dict | None, str]:
    """The model to train, its initial state_dict (None: its seeded initialisation) and how it starts, in words.

    ``options``: family options the model is built with. With ``init_from`` (a model trained at a lower
    resolution) this is weak-to-strong (dim.md §6): the family's fine-tune options (DiM: pad layout "cyclic")
    unless ``options`` sets them, and ``init_from``'s weights loaded with the position embedding resized; they
    start both the model and its EMA.
    """
    fam = models.family_of_model(model_name)
    if fam.diffusion is None:
        raise ValueError(f"{fam.display} declares no diffusion recipe (models.registry.DiffusionRecipe)")
    overrides: dict[str, Any] = dict(fam.diffusion.finetune) if init_from is not None else {}
    overrides.update({k: v for k, v in (options or {}).items() if v is not None})  # an explicit choice wins
    overrides["in_channels"] = channels
    if init_from is not None:  # the trained model's own constructor options (classes, channels, sizes)
        overrides = {**same_architecture(init_from), **overrides}
    overrides["input_size"] = input_size
    torch.manual_seed(seed)  # the initial weights follow the seed (the quality metric rebuilds them)
    with torch.device(device):
        model = models.create_model(model_name, **overrides)
    if init_from is None:
        return model, None, "from scratch"
    models.load_resized_state_dict(model, init_from.state_dict())
    changed = ", ".join(f"{k}={v}" for k, v in fam.diffusion.finetune.items())
    how = f"weak-to-strong: fine-tuned from {init_what} (position embedding resized{', ' + changed if changed else ''})"
    return model, model.state_dict(), how


def same_architecture(model: torch.nn.Module) -> dict[str, Any]:
    """The constructor options that rebuild ``model`` (its ``config``)."""
    config = getattr(model, "config", None)
    if not isinstance(config, dict):
        raise RuntimeError(f"{type(model).__name__} does not state its constructor options (.config)")
    return dict(config)


@contextlib.contextmanager
def intra_op_threads(threads: int):
    """torch's intra-op threads for the duration (0: leave them as the runner set them). Tiny models gain little
    from a second thread, and on cores other processes are busy with, OpenMP threads waiting for each other at
    every small op make a training step several times slower: a suite of tiny models may pin one."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_metric(point: SweepPoint, ctx: MetricContext) -> list[Measurement]:
    with intra_op_threads(ctx.options["threads"]):
        return _train_metric(point, ctx)


def _train_metric(point: SweepPoint, ctx: MetricContext) -> list[Measurement]:
    device = resolve_device(point)
    source = ctx.options["weak_to_strong_from"]
    finetune = source is not None and point.resolution > source
    data = load_data(ctx.options["data"], point.input_size, "train")
    heldout = load_data(DIGITS_SPEC, point.input_size, "test") if ctx.options["data"] == DIGITS_SPEC else None
    first = ctx.options["seed"]
    seeds = [first] if finetune else [first + k for k in range(ctx.options["seeds"])]
    low, what = None, ""
    if finetune:
        # dim.md §6: the non-EMA weights of the low-resolution run start both the model and its EMA.
        low, facts = load_trained(ctx.out_dir, point.at_resolution(source), weights="model")
        what = f"the {source} px model (its non-EMA weights at step {facts['step']}, seed {facts['config']['seed']})"
    parallel = min(ctx.options["parallel"], len(seeds))
    if parallel < 2:
        runs = [_train_one(point, ctx, data, heldout, seed, seeds, device, finetune, low, what) for seed in seeds]
        return _final_rows(point, ctx, runs, device)
    # Seeds after the first train in child processes, parallel - 1 at a time, while this one trains the first
    # (and streams its curve): on a CPU the tiny models use one core each far better than two cores one model.
    threads = ctx.options["threads"] or max(1, torch.get_num_threads() // parallel)
    with ProcessPoolExecutor(parallel - 1, mp_context=multiprocessing.get_context("spawn")) as pool:
        others = [pool.submit(_train_seed_in_child, point, dict(ctx.options), ctx.out_dir, seed, seeds, str(device),
                              threads, os.getpid()) for seed in seeds[1:]]
        try:
            # this process too, or its seed's OpenMP threads and the children's contend for the same cores (the
            # first seed at the runner's two threads beside one child: each step 2-3x slower, measured here)
            with intra_op_threads(threads):
                first = _train_one(point, ctx, data, heldout, seeds[0], seeds, device, finetune, low, what,
                                   alone=True)
            runs = [first, *(f.result() for f in others)]
        except BaseException:
            for f in others:
                f.cancel()
            raise
    return _final_rows(point, ctx, runs, device, parallel, threads)


class _ParentGone(RuntimeError):
    pass


def _train_seed_in_child(point: SweepPoint, options: dict[str, Any], out_dir: str | None, seed: int,
                         seeds: list[int], device: str, threads: int, parent: int) -> _Run:
    """One more seed of a from-scratch point, in a child process (see ``parallel``): its own checkpoint, no rows
    streamed; it stops at the next step when the process that started it is gone (a killed worker leaves no
    training behind that would race the resumed one)."""
    torch.set_num_threads(threads)

    def check_parent(info: dict[str, Any]) -> None:
        if os.getppid() != parent and os.getpid() != parent:  # (in the same process it cannot be gone)
            raise _ParentGone(f"the worker that started seed {seed} is gone")

    ctx = MetricContext(TRAIN, point, options, out_dir=out_dir, on_progress=check_parent)
    data = load_data(options["data"], point.input_size, "train")
    heldout = load_data(DIGITS_SPEC, point.input_size, "test") if options["data"] == DIGITS_SPEC else None
    return _train_one(point, ctx, data, heldout, seed, seeds, torch.device(device), False, None, "", alone=True)


@dataclasses.dataclass
class _Run:
    """One seed's finished training: its result, config, how it started, and the method text of its rows."""

    seed: int
    result: Any
    config: Any
    start: str
    method: str
    state_path: Path
    model_config: dict[str, Any]
    kernels: dict[str, Any]


def _train_one(point: SweepPoint, ctx: MetricContext, data, heldout, seed: int, seeds: list[int], device,
               finetune: bool, low, what: str, alone: bool = False) -> _Run:
    """Train (or resume) the run of one seed; the first seed's run streams the loss curves. ``alone``: the other
    seeds train elsewhere at the same time (progress counts this run's steps only)."""
    fam = _family(point)
    config = train_config(ctx, point, finetune, seed=seed)
    model, init_state, start = build_for_training(point.model, point.input_size, channels=data.channels,
                                                  seed=config.seed, device=device, options=point.options,
                                                  init_from=low, init_what=what)
    index = seeds.index(seed)
    state_path = ctx.state_dir / _checkpoint_name(None if index == 0 else seed)
    meta = {"start": start, "weak_to_strong_from": ctx.options["weak_to_strong_from"] if finetune else None,
            "seeds": seeds}
    trainer = Trainer(model, data, config, timestep=fam.timestep, device=device, state_path=state_path,
                      init_state=init_state, meta=meta, heldout=heldout)
    of = f" (the first of {len(seeds)} seeds: {', '.join(map(str, seeds))})" if len(seeds) > 1 else ""
    method = (f"{config.describe()}{of}; {start}; data {data.source}; loss = ε-MSE"
              + (" + learned-variance VLB" if _learns_sigma(model, data.channels) else "")
              + f"; mean over each window of {config.log_every} steps")
    heldout_method = (f"the same loss of the trained (non-EMA) model on {heldout.source} (every example, times and "
                      f"noise drawn once from the seed), every {config.heldout_every} steps; {config.describe()}{of}"
                      if heldout is not None else "")

    def on_log(step: int, info: dict[str, Any]) -> None:
        if index:
            return  # one curve per point: the first seed's
        extra = {"step": step, **{k: v for k, v in info.items() if v is not None}}
        rows = [Measurement("train_loss", float(info["loss"]), None, method, extra)]
        if info.get("heldout_loss") is not None:
            rows.append(Measurement("train_loss_heldout", float(info["heldout_loss"]), None, heldout_method,
                                    {"step": step}))
        ctx.emit(*rows)

    def on_step(step: int, loss: float) -> None:
        done, total = (step, config.steps) if alone else (index * config.steps + step, len(seeds) * config.steps)
        ctx.progress(done, total, loss=round(loss, 4), seed=seed)

    result = trainer.run(on_log=on_log, on_step=on_step)
    return _Run(seed, result, config, start, method, state_path, same_architecture(model),
                kernels_of(model, point.input_size, device) if index == 0 else {})


def _window_seconds(logs: list[dict[str, Any]], batch: int) -> float | None:
    """Wall time of the logged training windows (checkpoint writes and held-out losses are outside them)."""
    timed = [log for log in logs if log.get("images_per_s")]
    if len(timed) != len(logs):
        return None
    return sum(log["steps_in_window"] * batch / log["images_per_s"] for log in timed)


def _one_image(model: torch.nn.Module, size: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(x, t, y) of one image for ``model`` at ``size`` px (class 0 when it is class-conditional)."""
    x = torch.zeros(1, model.in_channels, size, size, device=device)
    t = torch.full((1,), 500.0, device=device)
    y = torch.zeros(1, dtype=torch.long, device=device) if getattr(model, "num_classes", 0) else None
    return x, t, y


def forward_flops_per_image(model_name: str, model_config: dict[str, Any]) -> float:
    """dimbench's count of one forward pass of one image (FLOPs, 2 per multiply-add; meta device)."""
    with torch.device("meta"):
        model = models.create_model(model_name, **model_config).eval()
    return float(count_model_flops(model, *_one_image(model, model_config["input_size"], "meta")).flops)


def kernels_of(model: torch.nn.Module, size: int, device) -> dict[str, Any]:
    """The kernels the model runs here (scan backend and why, attention, GLA): one forward of one image, after
    training (the same process resolved the backends the training steps used)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            found = probe_backends(lambda: model(*_one_image(model, size, device)))
    finally:
        model.train(was_training)
    return {k: v for k, v in found.items() if k != "custom_ops" and v is not None}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _final_rows(point: SweepPoint, ctx: MetricContext, runs: list[_Run], device, parallel: int = 1,
                threads: int | None = None) -> list[Measurement]:
    """The final rows: means over the seeds' runs, every seed's value in ``extra.per_seed``. ``threads``: the
    torch threads each seed trained with (None: this process's now)."""
    threads = threads or torch.get_num_threads()
    first = runs[0]
    seeds = [r.seed for r in runs]
    of = f"mean over {len(runs)} seeds ({', '.join(map(str, seeds))}); " if len(runs) > 1 else ""
    at_once = f", {parallel} seeds trained at once (one process each)" if parallel > 1 else ""
    common = {"steps": first.result.steps, "resumed_from": first.result.resumed_from, "stage": first.start,
              "seeds": seeds, "checkpoint": str(first.state_path.relative_to(ctx.out_dir)) if ctx.out_dir
              else str(first.state_path)}

    def row(name: str, values: list[float | None], method: str, why_missing: str, **more) -> Measurement:
        if any(v is None for v in values):
            return Measurement(name, None, None, "", common, status="skipped", error=why_missing)
        extra = {**common, **more, "per_seed": dict(zip(map(str, seeds), values, strict=True))}
        return Measurement(name, _mean(values), None, of + method, extra)

    finals = []
    for r in runs:
        last = [log["loss"] for log in r.result.logs[-5:]]  # the checkpoint keeps the curve, resumed or not
        finals.append(float(sum(last) / len(last)))
    batch = first.config.batch
    flops = forward_flops_per_image(point.model, first.model_config)
    images = first.result.steps * batch
    scan = first.kernels.get("scan_backend")
    kernels = f"; selective scan: the {scan} backend ({first.kernels['scan_backend_why']})" if scan else ""
    return [
        row("train_loss_final", finals, f"mean of the last logged windows (up to 5); {first.method}", ""),
        row("train_images_per_s", [r.result.images_per_s for r in runs],
            f"training images per second: median over the logged windows (wall clock, checkpoint writes and "
            f"held-out losses excluded), {device.type}, torch threads {threads}{at_once}{kernels}",
            "no window was timed in this invocation", **first.kernels),
        row("train_time_s", [_window_seconds(r.result.logs, batch) for r in runs],
            f"wall time of the {first.result.steps} training steps (the logged windows: checkpoint writes and "
            f"held-out losses excluded), {device.type}, torch threads {threads}{at_once}{kernels}",
            "a window of the run was not timed (a checkpoint from before this was recorded)", **first.kernels),
        row("train_tflop", [3 * flops * images / 1e12] * len(runs),
            f"training FLOPs = 3 x forward FLOPs of one image ({flops / 1e9:.4g} GFLOP, meta-device "
            f"FlopCounterMode, 2 per multiply-add, the scan's registered formula) x {first.result.steps} steps x "
            f"batch {batch}; 3 x: the backward counted as two forwards", "", forward_gflops_per_image=flops / 1e9,
            images=images),
    ]


def _learns_sigma(model: torch.nn.Module, channels: int) -> bool:
    return int(getattr(model, "out_channels", channels) or channels) == 2 * channels


_OPTIONS = (
    Field("data", Text(), "digits", "training data: `digits` (scikit-learn's bundled 8x8 digits, resized) or a local "
          "path (a folder of images, .npy / .npz latents)"),
    Field("steps", PerModel(Integer(1)), 300, "optimizer steps (one number, or one per model: a family that learns "
          "faster per step, or costs more per step, need not train as long; the rows state each model's)"),
    Field("lr", Number(0), 2e-4, "peak learning rate (AdamW)"),
    Field("warmup", Integer(0), 5000, "steps of linear learning-rate warm-up"),
    Field("weight_decay", Number(at_least=0), 0.03, "AdamW weight decay"),
    Field("beta1", Number(at_least=0, below=1), 0.99, "AdamW beta1"),
    Field("beta2", Number(at_least=0, below=1), 0.99, "AdamW beta2"),
    Field("adam_eps", Number(at_least=0), 1e-15, "AdamW epsilon"),
    Field("grad_clip", Number(at_least=0), 1.0, "max global gradient norm (0: no clipping)"),
    Field("ema", Number(at_least=0, below=1), 0.9999, "EMA decay of the weights the samplers use"),
    Field("label_drop", Number(at_least=0, below=1), 0.1, "probability a label is replaced by the null class (for "
          "guidance)"),
    Field("grad_accum", Integer(1), 1, "micro-batches accumulated per optimizer step (batch = the point's)"),
    Field("activation_checkpointing", Boolean(), False, "recompute each block's activations in the backward"),
    Field("schedule", Choice(("", *SCHEDULES)), "", "noise schedule; empty: the family's own (DiM, U-ViT: "
          "sd_scaled_linear; DiT: linear)"),
    Field("seed", Integer(0), 0, "seed of the initial weights, batches, times, noise and label dropout"),
    Field("seeds", Integer(1), 1, "runs from scratch with seeds seed, seed+1, ... (quality scores each: mean and "
          "spread); weak-to-strong fine-tunes the first only"),
    Field("ema_warmup", Boolean(), False, "EMA decay min(ema, (1 + k) / (10 + k)) after k updates (short runs)"),
    Field("heldout_every", Integer(0), 100, "steps between held-out losses (digits: the test split; a multiple of "
          "log_every; 0: none)"),
    Field("log_every", Integer(1), 10, "steps per logged train_loss row (the mean over them)"),
    Field("checkpoint_every", Integer(1), 100, "steps between checkpoints (a multiple of log_every)"),
    Field("threads", Integer(0), 0, "torch intra-op threads while training (0: as the runner set them)"),
    Field("parallel", Integer(1), 1, "seeds trained at once, each in its own process (the first in the worker, "
          "streaming its curve); a CPU with spare cores trains tiny models faster so"),
    Field("weak_to_strong_from", Integer(1, none="no weak-to-strong: every point trains from scratch"), None,
          "resolution (px) whose trained model starts every point at a higher resolution (weak-to-strong)"),
    Field("finetune_steps", PerModel(Integer(1)), 100, "weak-to-strong: fine-tuning steps (one number, or one per "
          "model, as `steps`)"),
    Field("finetune_lr", Number(0), 1e-4, "weak-to-strong: learning rate"),
    Field("finetune_warmup", Integer(0), 2500, "weak-to-strong: warm-up steps"),
    Field("finetune_weight_decay", Number(at_least=0), 0.0, "weak-to-strong: weight decay"),
    Field("finetune_label_drop", Number(at_least=0, below=1), 0.15, "weak-to-strong: label drop probability"),
)


def check_train_options(options: dict[str, Any], batches: tuple[int, ...] | list[int] = ()) -> list[tuple[str, str]]:
    """(option, message) for each problem the options have together, that no single key's type can see: what the
    trainer would stop on (TrainConfig, Trainer), found when the suite is validated or the command line read.
    ``batches``: the batch sizes the options will train with (the suite's, or ``--batch``)."""
    problems = []
    log_every, every = options["log_every"], options["checkpoint_every"]
    if every % log_every:
        problems.append(("checkpoint_every", f"key 'options.train.checkpoint_every': expected a multiple of log_every "
                         f"({log_every}), so that a resumed run logs the same windows, got {every}"))
    heldout = options["heldout_every"]
    if options["data"] == DIGITS_SPEC and heldout % log_every:  # (other data has no held-out split: never measured)
        problems.append(("heldout_every", f"key 'options.train.heldout_every': expected a multiple of log_every "
                         f"({log_every}) or 0, so that a held-out loss falls on a logged step, got {heldout}"))
    accum = options["grad_accum"]
    split = [b for b in dict.fromkeys(batches) if b % accum]
    if split:
        problems.append(("grad_accum", f"key 'options.train.grad_accum': expected a divisor of every batch size "
                         f"({', '.join(map(str, dict.fromkeys(batches)))}), got {accum}: batch {split[0]} does not "
                         f"split into {accum} micro-batches"))
    data = options["data"]
    if data != "digits" and not Path(os.path.expanduser(data)).exists():
        problems.append(("data", f"key 'options.train.data': expected 'digits' or an existing local path (a folder of "
                         f"images, .npy / .npz latents), got {data!r}: no such file or folder"))
    return problems


@dataclasses.dataclass(frozen=True)
class TrainMetric(Metric):
    """The train metric, whose options are also checked together (:func:`check_train_options`) by the suite's
    validation, as ``dimbench train`` checks its command line."""

    def check_options(self, options: Mapping[str, Any], model_names: Sequence[str], resolutions: Sequence[int],
                      batches: Sequence[int] = ()) -> list[tuple[str, str]]:
        return ([problem for field in _OPTIONS if isinstance(field.type, PerModel)
                 for problem in per_model_problems(options[field.name], f"options.train.{field.name}", model_names)]
                + check_train_options(options, batches))


TRAIN = TrainMetric(
    name="train",
    rows=(
        Row("train_loss", "loss", "training loss", task="train", series=True),
        Row("train_loss_final", "loss", "final training loss", task="train",
            summary=Summary("train loss\n(last windows)", "{:.4f}")),
        Row("train_images_per_s", "img/s", "training throughput (whole loop)", task="train",
            summary=Summary("train img/s\n(loop median)", "{:.1f}")),
        Row("train_loss_heldout", "loss", "held-out loss", task="train", series=True),
        Row("train_time_s", "s", "training time (loop)", task="train"),
        Row("train_tflop", "TFLOP", "training FLOPs (3 x forward x images)", task="train"),
    ),
    fn=train_metric,
    description="trains the model as a diffusion model (AdamW, warm-up, clipping, EMA, label dropout); streams "
    "the loss curve; weak-to-strong fine-tuning from a lower resolution with weak_to_strong_from",
    options=_OPTIONS,
    timeout=math.inf,
)
