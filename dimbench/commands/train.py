"""``dimbench train``: train one model outside a suite, on one device or under torchrun.

    dimbench train dim_tiny_4 --resolution 16 --steps 300 --lr 2e-3 --warmup 30 --ema 0.99 --out runs/dim16
    dimbench train dim_tiny_4 --resolution 32 --steps 60 --warmup 10 --ema 0.99 \
        --init-from runs/dim16/checkpoint.pt --out runs/dim32                       # weak-to-strong (dim.md §6)
    torchrun --nproc_per_node 2 -m dimbench.cli train dit_tiny_4 --batch 128 --out runs/ddp   # DDP

OUT/checkpoint.pt is the training checkpoint (the same run resumes from it: run the command again); the loss of
every logged window and the final rows go to OUT/results.jsonl like a suite's rows (``dimbench report OUT``
draws the curve). Under torchrun rank 0 writes; the batch is the global one.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import pickle
import sys
import time
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from dimbench.console import console
from dimbench.errors import UserError
from dimbench.model_options import add_model_option_argument, model_options
from dimbench.points import SweepPoint

#: dim.md §6: the weak-to-strong fine-tune's recipe, the defaults under --init-from
FINETUNE = {"lr": 1e-4, "warmup": 2500, "weight_decay": 0.0, "label_drop": 0.15}


def add_commands(sub) -> None:
    # heavy (torch): imported when the parser is built, not when this module loads
    from dimbench.training.trainer import PRECISIONS, TrainConfig

    d = TrainConfig(steps=1, batch=1)
    p = sub.add_parser("train", help="train a model as a diffusion model (one device, or several under torchrun)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n")[1])
    p.add_argument("model", metavar="MODEL", help="registered model name (dimbench list)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder of the checkpoint and results.jsonl")
    p.add_argument("--data", default="digits", help="digits, or a local folder of images / .npy / .npz latents")
    p.add_argument("--resolution", type=int, default=None, metavar="PX",
                   help="image side in pixels for image data (default: the model's input size); latents must "
                   "match the model's input size (or 8x it in pixels)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=64, help="global batch per optimizer step")
    p.add_argument("--lr", type=float, default=None,
                   help=f"peak learning rate (default {d.lr:g}; {FINETUNE['lr']:g} with --init-from, dim.md §6)")
    p.add_argument("--warmup", type=int, default=None,
                   help=f"warm-up steps (default {d.warmup}; {FINETUNE['warmup']} with --init-from)")
    p.add_argument("--weight-decay", type=float, default=None,
                   help=f"default {d.weight_decay:g}; {FINETUNE['weight_decay']:g} with --init-from")
    p.add_argument("--betas", type=float, nargs=2, default=d.betas, metavar=("B1", "B2"))
    p.add_argument("--adam-eps", type=float, default=d.eps)
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="0: no clipping")
    p.add_argument("--ema", type=float, default=d.ema)
    p.add_argument("--label-drop", type=float, default=None,
                   help=f"default {d.label_drop:g}; {FINETUNE['label_drop']:g} with --init-from")
    p.add_argument("--precision", choices=list(PRECISIONS), default="float32",
                   help="autocast dtype (float16 adds a gradient scaler)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--activation-checkpointing", action="store_true", help="recompute block activations")
    p.add_argument("--schedule", default=None, help="sd_scaled_linear, linear or vpsde (default: the family's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--init-from", metavar="CKPT", default=None,
                   help="weak-to-strong: a dimbench training checkpoint of this model at a lower resolution")
    add_model_option_argument(p, "an option not given takes the model's default (with --init-from: the family's "
                              "fine-tune options, DiM's cyclic pad layout)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (under torchrun: cuda:LOCAL_RANK)")
    p.add_argument("--fresh", action="store_true",
                   help="start over in OUT (its results, record and checkpoint are kept as .bak)")
    p.add_argument("--allow-mixed", action="store_true",
                   help="add to a folder that holds another suite's or command's results, or a training with other "
                   "settings (refused otherwise)")
    p.set_defaults(func=cmd_train)


#: the command-line flag of a train option where it is not --NAME-WITH-DASHES
FLAGS = {"beta1": "--betas", "beta2": "--betas", "adam_eps": "--adam-eps"}
CHECKPOINT = "checkpoint.pt"


def _flag(option: str) -> str:
    return FLAGS.get(option, "--" + option.replace("_", "-"))


def _checked_options(args: argparse.Namespace) -> dict:
    """The command line as the train metric's options, checked by the declarations that check a suite's
    ``options.train`` (one validation path: what `dimbench validate` refuses, this refuses). UserError names every
    problem by its flag, one per line."""
    # heavy (torch, the models): imported when the command runs
    from dimbench.metrics.train import TRAIN, check_train_options

    # see above
    from dimbench.schema import Integer, Problems, Record, cli_message

    given = {"data": args.data, "steps": args.steps, "lr": args.lr, "warmup": args.warmup,
             "weight_decay": args.weight_decay, "beta1": args.betas[0], "beta2": args.betas[1],
             "adam_eps": args.adam_eps, "grad_clip": args.grad_clip, "ema": args.ema, "label_drop": args.label_drop,
             "grad_accum": args.grad_accum, "schedule": args.schedule, "seed": args.seed,
             "log_every": args.log_every, "checkpoint_every": args.checkpoint_every,
             "heldout_every": 0}  # (the command measures no held-out loss)
    problems = Problems()
    fields = [f for f in TRAIN.option_record().fields if f.name != "timeout"]
    options = Record(fields, "options").check({k: v for k, v in given.items() if v is not None}, (), problems)
    Integer(1).check(args.batch, ("batch",), problems)
    if args.resolution is not None:
        Integer(1).check(args.resolution, ("resolution",), problems)
    messages = [m for _, m in problems]
    if not messages:
        messages = [m for _, m in check_train_options(options, [args.batch])]
    if messages:
        raise UserError("\n".join(cli_message(m, _flag, "options.train.") for m in messages))
    return options


def _settings(config, args: argparse.Namespace) -> dict:
    """What the folder's record keeps of this run's settings: everything that decides the curve (a run may only
    change its length and how often it saves, as the checkpoint allows), but the batch and precision, which the
    point key names (rows of another batch are another point's; the checkpoint refuses to continue with them)."""
    # heavy (torch): imported when the command runs
    from dimbench.training.trainer import RESUMABLE_CHANGES, _plain

    recipe = {k: v for k, v in _plain(dataclasses.asdict(config)).items()
              if k not in (*RESUMABLE_CHANGES, "batch", "precision")}
    return {"train": {**recipe, "data": args.data, "init_from": args.init_from,
                      "model_options": dict(args.model_options or {})}}


def cmd_train(args: argparse.Namespace) -> int:
    # heavy (torch, the models): imported when the command runs
    import torch

    import models
    from dimbench.runfolder import CommandRun
    from dimbench.suite import resolve_device
    from dimbench.training import distributed
    from dimbench.training.trainer import TrainConfig

    try:
        info = models.model_info(args.model)
    except KeyError as exc:
        raise UserError(str(exc.args[0])) from None
    fam = models.family(info.family)
    _checked_options(args)
    device_name = resolve_device(args.device, what="--device")
    device_type = "cuda" if device_name.startswith("cuda") else "cpu"
    device = torch.device(device_name)
    if distributed.launched_by_torchrun():
        device = distributed.init_from_env(device_type)
    try:
        recipe = FINETUNE if args.init_from else {"lr": TrainConfig.lr, "warmup": TrainConfig.warmup,
                                                   "weight_decay": TrainConfig.weight_decay,
                                                   "label_drop": TrainConfig.label_drop}
        chosen = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in recipe.items()}
        try:
            config = TrainConfig(
                steps=args.steps, batch=args.batch, lr=chosen["lr"], betas=tuple(args.betas), eps=args.adam_eps,
                weight_decay=chosen["weight_decay"], warmup=chosen["warmup"], grad_clip=args.grad_clip or None,
                ema=args.ema, label_drop=chosen["label_drop"], precision=args.precision, grad_accum=args.grad_accum,
                activation_checkpointing=args.activation_checkpointing,
                schedule=args.schedule or fam.diffusion.schedule, seed=args.seed, log_every=args.log_every,
                checkpoint_every=args.checkpoint_every,
            )
        except ValueError as exc:
            raise UserError(f"dimbench train {args.model}: {exc}") from None
        if chosen["warmup"] > args.steps:
            console(stderr=True).print(f"warning: warm-up ({chosen['warmup']} steps) is longer than the run "
                                       f"({args.steps} steps): the learning rate never reaches {chosen['lr']:g}")
        rank0 = distributed.distributed_info().rank == 0
        # Rank 0 holds the folder (lock, record, rows) for the whole run; the others only read the checkpoint.
        run = CommandRun(Path(args.out), command="train", argv=["dimbench", *getattr(args, "argv", sys.argv[1:])],
                         device=device_name, settings=_settings(config, args), allow_mixed=args.allow_mixed,
                         fresh=args.fresh, also_fresh=(CHECKPOINT,),
                         warn=lambda line: console(stderr=True).print(line, markup=False)) if rank0 else None
        distributed.distributed_info().barrier()  # (--fresh has moved the old checkpoint aside before any rank reads)
        with run or contextlib.nullcontext():
            _train(args, info, fam, config, device, run)
    finally:
        distributed.shutdown()
    return 0


def _train(args: argparse.Namespace, info, fam, config, device, run) -> None:
    """Load the data, build the model, train (resuming from OUT/checkpoint.pt), write the rows through ``run``
    (None on ranks other than 0)."""
    # heavy (torch, the models): imported when the command runs
    from dimbench.data import load_data
    from dimbench.metrics.base import Measurement
    from dimbench.metrics.train import TRAIN, build_for_training
    from dimbench.training.trainer import Diverged, Trainer, load_training_state
    from dimbench.worker import is_oom, make_row

    out = Path(args.out)
    resolution = args.resolution if args.resolution is not None else int(info.defaults["input_size"])
    point = SweepPoint(suite="train", model=args.model, resolution=resolution, input_size=resolution,
                       batch=config.batch, dtype=config.precision, device=device.type, metrics=("train",))
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()

    def write(measurements, *, replace: bool = False) -> None:
        if run is not None:
            run.write([make_row(point, TRAIN, m, started_at=started, duration_s=time.perf_counter() - t0)
                       for m in measurements], replace=replace)

    def failed(status: str, message: str) -> UserError:
        write([Measurement("train_loss_final", None, None, "", {}, status=status, error=message)])
        return UserError(message)

    progress = None
    try:
        data = load_data(args.data, resolution, "train")
        # Rows name the image side in pixels (latents stand for the VAE's factor times their side).
        point = dataclasses.replace(point, resolution=data.pixels, input_size=data.resolution)
        low, what = None, ""
        if args.init_from:
            low, what = _init_model(args.init_from, args.model, load_training_state)
        try:
            model, init_state, start = build_for_training(args.model, data.resolution, channels=data.channels,
                                                          seed=config.seed, device=device,
                                                          options=model_options(args, args.model),
                                                          init_from=low, init_what=what)
            model.model_name = args.model
            trainer = Trainer(model, data, config, timestep=fam.timestep, device=device,
                              state_path=out / CHECKPOINT, init_state=init_state)
        except ValueError as exc:
            raise UserError(f"dimbench train {args.model}: {exc}") from None
        method = f"{config.describe()}; {start}; data {data.source}; mean over each window of {config.log_every} steps"

        def on_log(step, log) -> None:
            write([Measurement("train_loss", float(log["loss"]), None, method,
                               {"step": step, **{k: v for k, v in log.items() if v is not None}})])

        progress = _Progress(config.steps) if run is not None else None
        try:
            result = trainer.run(on_log=on_log, on_step=progress.update if progress else None)
        except Diverged as exc:
            raise failed("error", str(exc)) from None
        except (ValueError, RuntimeError, KeyError, pickle.UnpicklingError) as exc:
            if is_oom(exc):
                raise
            # a checkpoint of another run, model or shape in OUT, or an unreadable one: the user's to sort out
            raise UserError(f"{out / CHECKPOINT}: cannot continue this run: {_first_line(exc)} (another --out, "
                            "or --fresh to start over here)") from None
    except (RuntimeError, MemoryError) as exc:
        if not is_oom(exc):
            raise
        raise failed("oom", f"out of memory training {args.model} at {resolution} px, batch {config.batch} on "
                     f"{device.type} ({_first_line(exc)}): lower --batch or --resolution, or add "
                     "--activation-checkpointing / --grad-accum") from None
    finally:
        if progress:
            progress.close()
    last = [log["loss"] for log in result.logs[-5:]]
    extra = {"steps": result.steps, "resumed_from": result.resumed_from, "stage": start}
    # A run that trained further supersedes the final rows of the run it resumed; one with nothing left to train
    # writes them only if they are missing (killed after its last checkpoint).
    write([Measurement("train_loss_final", sum(last) / len(last), None,
                       f"mean of the last {len(last)} logged windows; {method}", extra),
           Measurement("train_images_per_s", result.images_per_s, None,
                       f"median over the logged windows (wall clock), {device.type} x {trainer.dist.world_size}",
                       extra)], replace=result.steps > result.resumed_from)
    if run is not None:
        how = (f"to step {result.steps} (from {result.resumed_from})" if result.steps > result.resumed_from
               else f"already to step {result.steps}: nothing left to train")
        console().print(f"trained {args.model} {how}: final loss {sum(last) / len(last):.4f} (mean of the last "
                        f"{len(last)} windows), {result.images_per_s or 0:.1f} img/s; checkpoint {out / CHECKPOINT}, "
                        f"rows {out / 'results.jsonl'}")


def _init_model(path: str, model_name: str, reader):
    """The model of a training checkpoint at a lower resolution (its non-EMA weights), and how to name it."""
    # heavy (torch, the models): imported when the command runs
    import torch

    import models

    if not Path(path).is_file():
        raise UserError(f"--init-from {path}: no such file")
    try:
        state = reader(path)
        saved = state.get("model_name")
        if saved and saved != model_name:
            raise ValueError(f"it holds {saved}, not {model_name}")
        with torch.device("cpu"):
            low = models.create_model(model_name, **state["model_config"])
        low.load_state_dict(state["model"])
    except Exception as exc:  # noqa: BLE001 - any unreadable or unfitting file is the user's input, in one line
        raise UserError(f"--init-from {path}: not a usable dimbench training checkpoint of {model_name} "
                        f"({_first_line(exc)})") from None
    return low, f"{path} (non-EMA weights at step {state['step']})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


class _Progress:
    """A rich progress bar with the latest loss (rank 0)."""

    def __init__(self, total: int):
        self._bar = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[loss]}"), TimeRemainingColumn(), console=console(stderr=True),
                             transient=True)
        self._task = self._bar.add_task("train", total=total, loss="")
        self._bar.start()

    def update(self, step: int, loss: float) -> None:
        self._bar.update(self._task, completed=step, loss=f"loss {loss:.4f}")

    def close(self) -> None:
        self._bar.stop()
