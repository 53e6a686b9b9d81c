"""The diffusion training loop: one device, or several through ``torchrun`` (DistributedDataParallel).

    >>> trainer = Trainer(model, data, TrainConfig(steps=300, batch=64), state_path=Path("ckpt.pt"))
    >>> result = trainer.run(on_log=print)      # resumes from ckpt.pt when it exists

What one optimizer step does (dim.md §5, baselines.md for DiT):

- draws ``batch`` examples, their diffusion times, noise and label dropout from a generator seeded by
  ``(seed, step)``; a rank takes its share of that global batch and splits it into ``grad_accum`` micro-batches.
  Nothing depends on what came before, so a run resumed at step k draws exactly what an uninterrupted run draws
  at step k, and 2 ranks x batch b see exactly the examples 1 rank x batch 2b sees;
- ε-prediction MSE (plus DiT's learned-variance VLB term when the model outputs 2C channels,
  :func:`models.diffusion.diffusion_loss`), under ``torch.autocast`` when ``precision`` is not float32;
- AdamW with linear warm-up then a constant rate, gradient clipping by global norm, an EMA of the weights
  (with ``ema_warmup`` its decay after k updates is min(ema, (1 + k) / (10 + k)), so that a short run's EMA is
  not dominated by the initial weights: 0.99 would keep 0.99**k of them, 5 % after 300 steps).

Logging: every ``log_every`` steps ``on_log(step, info)`` gets the mean loss of the steps since the last log
(and mse, vb, lr, grad norm, images/s of the window). With held-out data (``heldout``) it also gets, every
``heldout_every`` steps and at the last, ``heldout_loss``: the same loss of the trained (non-EMA) model on a
fixed held-out set, with times and noise drawn once from the seed, so the curve moves only with the model
(evaluated outside the timed window). Checkpoints (model, EMA, optimizer, grad scaler, step)
are written atomically every ``checkpoint_every`` steps (a multiple of ``log_every``) and at the last step, so
a resumed run logs the same windows with the same values as an uninterrupted one. A checkpoint resumes only a
run with the same settings and data (the length and the saving interval may change).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

from dimbench.data import Dataset
from dimbench.files import WriteError, atomic_write
from dimbench.training.distributed import DistributedInfo, distributed_info
from models.checkpoints import inflation_problem
from models.diffusion import diffusion_loss, make_schedule

#: config fields a resumed run may change: how long it runs, how often it saves, how the backward stores activations
#: (the same arithmetic either way) and how often the held-out loss is measured
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "activation_checkpointing", "heldout_every")

#: precision name -> autocast dtype (None: float32, no autocast)
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run. Defaults are DiM's ImageNet recipe (dim.md §5) except the
    run length; a suite or the command line sets what differs."""

    steps: int
    batch: int  # global batch per optimizer step (all ranks, all accumulation micro-batches)
    lr: float = 2e-4
    betas: tuple[float, float] = (0.99, 0.99)
    eps: float = 1e-15
    weight_decay: float = 0.03
    warmup: int = 5000  # steps of linear warm-up from lr/warmup to lr, then constant
    grad_clip: float | None = 1.0  # max global gradient norm; None or 0: no clipping
    ema: float = 0.9999
    label_drop: float = 0.1  # probability a label becomes the null class (classifier-free guidance)
    precision: str = "float32"  # float32 | bfloat16 | float16 (autocast; float16 with a gradient scaler)
    grad_accum: int = 1
    activation_checkpointing: bool = False
    schedule: str = "sd_scaled_linear"
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 100
    ema_warmup: bool = False  # EMA decay min(ema, (1 + k) / (10 + k)) after k updates
    heldout_every: int = 0  # steps between held-out losses (a multiple of log_every; 0: none)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch < 1 or self.grad_accum < 1 or self.log_every < 1:
            raise ValueError("steps, batch, grad_accum and log_every must be >= 1")
        if self.checkpoint_every < 1 or self.checkpoint_every % self.log_every:
            raise ValueError(f"checkpoint_every ({self.checkpoint_every}) must be a multiple of log_every "
                             f"({self.log_every}): a resumed run then logs the same windows")
        if self.heldout_every < 0 or self.heldout_every % self.log_every:
            raise ValueError(f"heldout_every ({self.heldout_every}) must be a multiple of log_every "
                             f"({self.log_every}), or 0")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not 0 <= self.label_drop < 1 or not 0 <= self.ema < 1:
            raise ValueError("label_drop and ema must lie in [0, 1)")

    def describe(self) -> str:
        """The recipe in one line, for method strings."""
        clip = f"clip {self.grad_clip:g}" if self.grad_clip else "no clipping"
        return (f"AdamW lr {self.lr:g} (betas {self.betas[0]:g}/{self.betas[1]:g}, eps {self.eps:g}, weight decay "
                f"{self.weight_decay:g}), warm-up {self.warmup}, {clip}, EMA {self.ema:g}"
                + (" (warm-up: min(ema, (1+k)/(10+k)) after k updates)" if self.ema_warmup else "") + ", label drop "
                f"{self.label_drop:g}, batch {self.batch}" + (f" ({self.grad_accum} accumulated micro-batches)"
                                                             if self.grad_accum > 1 else "")
                + f", {self.precision}, {self.schedule} schedule, seed {self.seed}")


class Diverged(RuntimeError):
    """The loss stopped being a finite number: the run is stopped before it logs or saves the window, so the
    checkpoint on disk is the last one whose curve is finite (a rerun retraces the same steps and stops the same
    way). The message names the step and what usually causes it."""


@dataclasses.dataclass
class TrainResult:
    steps: int  # steps completed (== config.steps at the end)
    resumed_from: int  # step the run started at (0: from scratch)
    logs: list[dict[str, Any]]  # every logged window of the run, resumed ones included (kept in the checkpoint)
    images_per_s: float | None  # median over the run's logged windows (None when none was timed)
    wall_s: float


class Trainer:
    """Train ``model`` on ``data`` (see the module docstring). ``timestep`` is the model family's
    :class:`models.Timestep` (the network's time convention); ``state_path`` the training checkpoint."""

    def __init__(self, model: nn.Module, data: Dataset, config: TrainConfig, *, timestep, device="cpu",
                 state_path: str | os.PathLike | None = None, init_state: dict[str, torch.Tensor] | None = None,
                 meta: dict[str, Any] | None = None, heldout: Dataset | None = None):
        self.config = config
        self.data = data
        self.device = torch.device(device)
        self.dist: DistributedInfo = distributed_info()
        micro = config.batch / (self.dist.world_size * config.grad_accum)
        if micro != int(micro):
            raise ValueError(f"batch {config.batch} does not split into {self.dist.world_size} rank(s) x "
                             f"{config.grad_accum} micro-batch(es)")
        self.micro_batch = int(micro)
        self.schedule = make_schedule(config.schedule)
        self.timestep = timestep
        self.num_classes = int(getattr(model, "num_classes", 0) or 0)
        if data.labels is not None and data.num_classes > self.num_classes:
            raise ValueError(f"the data has {data.num_classes} classes; the model only {self.num_classes}")
        torch.manual_seed(config.seed)  # nothing random should depend on it, but dropout-like layers might
        self.model = model.to(self.device).train()
        if init_state is not None:
            model.load_state_dict(init_state)
        # The EMA copy first: a deep copy of checkpointed blocks would keep calling the live blocks' forwards.
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        if config.activation_checkpointing:
            enable_activation_checkpointing(self.model)
        self.ddp = self._wrap(self.model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, betas=config.betas,
                                           eps=config.eps, weight_decay=config.weight_decay)
        self.autocast_dtype = PRECISIONS[config.precision]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast_dtype == torch.float16)
        self.state_path = Path(state_path) if state_path else None
        self.step = 0
        self.history: list[dict[str, Any]] = []  # every logged window, saved with the checkpoint
        # facts about the run saved with it: how it started (e.g. weak-to-strong) and the data it reads
        self.meta = {"data": f"{data.source} ({len(data)} examples)", **(meta or {})}
        self.heldout = heldout if config.heldout_every else None
        if self.heldout is not None:
            self.meta["heldout"] = f"{heldout.source} ({len(heldout)} examples)"

    # ---- public -------------------------------------------------------------------------------------------

    def run(self, *, on_log: Callable[[int, dict[str, Any]], None] | None = None,
            on_step: Callable[[int, float], None] | None = None) -> TrainResult:
        """Train to ``config.steps`` (resuming from ``state_path`` when it holds a checkpoint). ``on_log`` is
        called on rank 0 only; ``on_step(step, loss)`` after every step on rank 0 (progress displays)."""
        cfg = self.config
        resumed = self.load_state() if self.state_path and self.state_path.exists() else 0
        window = []
        t_start = time.perf_counter()
        t_window = time.perf_counter()
        while self.step < cfg.steps:
            out = self.train_step()
            window.append(out)
            self.step += 1
            if on_step is not None and self.dist.rank == 0:
                on_step(self.step, out["loss"])
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                elapsed = time.perf_counter() - t_window
                info = _window_means(window)
                if not math.isfinite(info["loss"]):
                    raise Diverged(self._diverged(self.step, info["loss"]))
                info["lr"] = self.lr_at(self.step - 1)
                info["images_per_s"] = len(window) * cfg.batch / elapsed if elapsed > 0 else None
                info["steps_in_window"] = len(window)
                window = []
                if self.heldout is not None and (self.step % cfg.heldout_every == 0 or self.step == cfg.steps):
                    info["heldout_loss"] = self.heldout_loss()
                self.history.append({"step": self.step, **info})
                if on_log is not None and self.dist.rank == 0:
                    on_log(self.step, info)
                if self.state_path and (self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps):
                    self.save_state()
                t_window = time.perf_counter()
        timed = [log["images_per_s"] for log in self.history if log.get("images_per_s")]
        return TrainResult(self.step, resumed, list(self.history), float(_median(timed)) if timed else None,
                           time.perf_counter() - t_start)

    def lr_at(self, step: int) -> float:
        """Learning rate of (0-based) optimizer step ``step``: linear warm-up over ``warmup`` steps, then flat."""
        warm = self.config.warmup
        return self.config.lr * (min(1.0, (step + 1) / warm) if warm > 0 else 1.0)

    def train_step(self) -> dict[str, float]:
        """One optimizer step (all micro-batches of this rank); returns the step's mean losses (all ranks)."""
        cfg = self.config
        draw = self._draw(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for i in range(cfg.grad_accum):
            part = {k: (v[i] if v is not None else None) for k, v in draw.items()}
            x0 = part["x0"].to(self.device)
            noise = part["noise"].to(self.device)
            time_ = part["time"].to(self.device)
            y = part["y"].to(self.device) if part["y"] is not None else None
            x_t = self.schedule.add_noise(x0, time_, noise)
            net_t = self.schedule.network_time(time_, self.timestep)
            last = i == cfg.grad_accum - 1
            # DDP all-reduces gradients on every backward unless told not to: only the last micro-batch syncs.
            sync = contextlib.nullcontext() if (last or self.ddp is self.model) else self.ddp.no_sync()
            with sync:
                with self._autocast():
                    out = self.ddp(x_t, net_t, y)
                losses = diffusion_loss(self.schedule, out.float(), x0, x_t, time_, noise)
                self.scaler.scale(losses["loss"] / cfg.grad_accum).backward()
            for k, v in losses.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
        self.scaler.unscale_(self.optimizer)
        grad_norm = None
        if cfg.grad_clip:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._update_ema()
        totals = self.dist.mean(totals)
        if grad_norm is not None:
            totals["grad_norm"] = grad_norm
        return totals

    @torch.no_grad()
    def heldout_loss(self) -> float:
        """The training loss of the current (non-EMA) model on the held-out data: every example once (labels
        kept, no dropout), with times and noise drawn from a generator seeded by the run's seed only, so every
        evaluation sees the same noisy inputs."""
        data = self.heldout
        g = torch.Generator().manual_seed(_step_seed(self.config.seed, -1))
        total, count = 0.0, 0
        was_training = self.model.training
        self.model.eval()
        try:
            for index in torch.arange(len(data)).split(self.micro_batch):
                x0, labels = data.batch(index, generator=g)
                time_ = self.schedule.sample_training_time(len(index), generator=g)
                noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
                x0, noise, time_ = x0.to(self.device), noise.to(self.device), time_.to(self.device)
                y = None
                if self.num_classes > 0:
                    y = (labels if labels is not None else torch.full((len(index),), self.num_classes)).to(self.device)
                x_t = self.schedule.add_noise(x0, time_, noise)
                with self._autocast():
                    out = self.model(x_t, self.schedule.network_time(time_, self.timestep), y)
                loss = diffusion_loss(self.schedule, out.float(), x0, x_t, time_, noise)["loss"]
                total += float(loss) * len(index)
                count += len(index)
        finally:
            self.model.train(was_training)
        return total / count

    # ---- checkpoints --------------------------------------------------------------------------------------

    def save_state(self) -> None:
        """Write the training checkpoint atomically (rank 0; the other ranks wait for it)."""
        if self.dist.rank == 0:
            state = {
                "step": self.step,
                "model": self.model.state_dict(),
                "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "history": _plain(self.history),
                "meta": _plain(self.meta),
                "config": _plain(dataclasses.asdict(self.config)),
                "model_config": _plain(getattr(self.model, "config", {})),
                "model_name": str(getattr(self.model, "model_name", "")),
            }
            save_atomic(state, self.state_path)
        self.dist.barrier()

    def load_state(self) -> int:
        """Restore a checkpoint written by :meth:`save_state`; returns its step."""
        state = load_training_state(self.state_path)
        # Everything but the run's length and how often it saves must match, or the curve would change meaning
        # (and the optimizer's own state would silently bring back the old betas, eps and weight decay).
        for field in dataclasses.fields(self.config):
            key = field.name
            if key in RESUMABLE_CHANGES:
                continue
            # a setting added after the checkpoint was written is absent from it: it ran with the default
            saved = state["config"].get(key, _plain(field.default))
            if saved != _plain(getattr(self.config, key)):
                raise ValueError(f"{self.state_path}: the checkpoint was trained with {key} = "
                                 f"{saved!r}, this run asks for {getattr(self.config, key)!r}; "
                                 "resuming would not continue the same run")
        saved_data = state.get("meta", {}).get("data")
        if saved_data is not None and saved_data != self.meta.get("data"):
            raise ValueError(f"{self.state_path}: the checkpoint was trained on {saved_data!r}, this run reads "
                             f"{self.meta.get('data')!r}")
        model_name = str(getattr(self.model, "model_name", ""))
        if state.get("model_name") and model_name and state["model_name"] != model_name:
            raise ValueError(f"{self.state_path}: the checkpoint holds {state['model_name']}, not {model_name}")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.history = list(state.get("history", []))
        for log in self.history:  # (a checkpoint written before the loss was checked may hold a NaN window)
            loss = log.get("loss") if isinstance(log, dict) else None
            if not isinstance(loss, (int, float)) or not math.isfinite(loss):
                raise Diverged(self._diverged(log.get("step") if isinstance(log, dict) else "?", loss,
                                              f" (in {self.state_path})"))
        return self.step

    def _diverged(self, step: Any, loss: Any, where: str = "") -> str:
        cfg = self.config
        clip = f"clipping at {cfg.grad_clip:g}" if cfg.grad_clip else "no gradient clipping"
        return (f"training diverged: the mean loss of the window ending at step {step} is {loss}{where}, with lr "
                f"{cfg.lr:g}, warm-up {cfg.warmup} and {clip}; lower the learning rate, warm up longer or clip "
                "gradients, and start over (--fresh, or another folder)")

    # ---- internals ----------------------------------------------------------------------------------------

    def _wrap(self, model: nn.Module) -> nn.Module:
        if self.dist.world_size == 1:
            return model

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _draw(self, step: int) -> dict[str, list[torch.Tensor] | None]:
        """This rank's micro-batches of step ``step``: examples, times, noise, labels (with dropout), all from
        a generator seeded by (seed, step), drawn for the global batch and then sliced."""
        cfg = self.config
        g = torch.Generator().manual_seed(_step_seed(cfg.seed, step))
        n = cfg.batch
        index = torch.randint(len(self.data), (n,), generator=g)
        x0, labels = self.data.batch(index, generator=g)
        time_ = self.schedule.sample_training_time(n, generator=g)
        noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        y = None
        if self.num_classes > 0:
            y = labels.clone() if labels is not None else torch.full((n,), self.num_classes, dtype=torch.long)
            drop = torch.rand(n, generator=g) < cfg.label_drop
            y[drop] = self.num_classes  # the null class
        share = n // self.dist.world_size
        lo = self.dist.rank * share

        def split(t: torch.Tensor | None) -> list[torch.Tensor] | None:
            return None if t is None else list(t[lo:lo + share].split(self.micro_batch))

        return {"x0": split(x0), "time": split(time_), "noise": split(noise), "y": split(y)}

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = self.config.ema
        if self.config.ema_warmup:  # self.step updates done before this one
            decay = min(decay, (1 + self.step + 1) / (10 + self.step + 1))
        for e, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
            e.lerp_(p.detach(), 1.0 - decay)
        for e, b in zip(self.ema.buffers(), self.model.buffers(), strict=True):
            e.copy_(b)


def enable_activation_checkpointing(model: nn.Module) -> int:
    """Recompute each repeated block's activations in the backward instead of storing them (the elements of
    every ``nn.ModuleList``: the blocks of DiM, DiT and U-ViT). Returns how many modules were wrapped."""
    wrapped = 0
    for lst in [m for m in model.modules() if isinstance(m, nn.ModuleList)]:
        for block in lst:
            forward = block.forward

            def checkpointed(*args, _forward=forward, **kwargs):
                if not torch.is_grad_enabled():
                    return _forward(*args, **kwargs)
                return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

            block.forward = checkpointed
            wrapped += 1
    return wrapped


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save through :func:`dimbench.files.atomic_write`: a crash or a full disk never leaves half a
    checkpoint (nor its temporary file); WriteError says the cause and that the previous checkpoint is kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(path, lambda f: torch.save(obj, f))
    except WriteError as exc:
        raise WriteError(f"{exc}: the training checkpoint was not saved (the previous one, if any, is kept); free "
                         "some space and run the same command again to resume from it") from None


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    """A training checkpoint (weights_only: a file from elsewhere cannot run code; a zip archive declaring far
    more than its size is refused before inflating it); ValueError when it is not one."""
    bomb = inflation_problem(path)
    if bomb:
        raise ValueError(bomb)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not {"step", "model", "ema", "config"} <= set(state):
        raise ValueError(f"{path}: not a dimbench training checkpoint (expected keys step, model, ema, config)")
    return state


def _step_seed(seed: int, step: int) -> int:
    return (int(seed) * 1_000_003 + int(step)) % (2**63 - 1)


def _window_means(window: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for w in window for k in w}
    return {k: sum(w[k] for w in window if k in w) / sum(1 for w in window if k in w) for k in sorted(keys)}


def _median(values: list[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def _plain(value: Any) -> Any:
    """Config values as plain JSON-like Python (tuples become lists), so weights_only loading accepts them."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
