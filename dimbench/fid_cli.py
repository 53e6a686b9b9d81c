"""``dimbench fid-stats``: FID reference statistics of an image folder; ``dimbench fid``: the fid metric on one
model outside a suite, on one device or on several GPUs under torchrun.

    dimbench fid-stats data/imagenet_val_256 -o stats/my_val_256.npz \
        --inception-weights weights/weights-inception-2015-12-05-6726825d.pth --resolution 256

    torchrun --nproc_per_node 8 -m dimbench.cli fid dim_h_2 --resolution 256 \
        --checkpoint fid_files/dim/imagenet256_H_DiM/nnet_ema.pth --guidance 0.4 --out runs/fid_dim256 \
        --inception-weights fid_files/weights-inception-2015-12-05-6726825d.pth \
        --reference fid_files/fid_stats_imagenet256_guided_diffusion.npz --vae fid_files/sd-vae-ft-ema

fid-stats streams the folder (flat or class subfolders; center crop, bicubic resize to --resolution, as
dimbench.data reads images), --batch images at a time, keeping only their Inception features, and writes mu,
sigma, count, weights_sha256 and source; the fid metric's `reference` option reads it. `dimbench fid` writes
OUT/results.jsonl (rank 0) and keeps its chunks in OUT/state/ (run the same command again to resume); each
torchrun rank samples its own chunks. Nothing is downloaded: a missing or wrong file is named (with the expected
checksum for the weights), exit 2, before any sampling.
"""

from __future__ import annotations

import argparse

from dimbench.console import UserError, console


def add_fid_commands(sub) -> None:
    from dimbench.fid.inception import EXPECTED_SHA256_PREFIX

    p = sub.add_parser("fid-stats", help="FID reference statistics (mu, sigma) of an image folder, from local "
                       "Inception weights", formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=__doc__.split("\n\n")[1])
    p.add_argument("folder", metavar="IMAGE_FOLDER", help="images, flat or in class subfolders")
    p.add_argument("-o", "--output", required=True, metavar="FILE.npz")
    p.add_argument("--inception-weights", required=True, metavar="PATH",
                   help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth (or pytorch-fid's "
                   "pt_inception-2015-12-05-6726825d.pth)")
    p.add_argument("--inception-sha256", default=EXPECTED_SHA256_PREFIX, metavar="HEX",
                   help=f"start of the weights file's SHA256 (default {EXPECTED_SHA256_PREFIX})")
    p.add_argument("--resolution", type=int, default=256, metavar="PX", help="image side after crop and resize")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_fid_stats)

    p = sub.add_parser("fid", help="FID of one checkpoint at one resolution (the fid metric; also under torchrun)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n")[2])
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--resolution", type=int, required=True, metavar="PX")
    p.add_argument("--checkpoint", default=None, metavar="PATH", help="weights file (official or dimbench format)")
    p.add_argument("--pad-layout", default=None, help="DiM's pad layout (default: the checkpoint's choice)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (under torchrun: cuda:LOCAL_RANK)")
    for name in ("inception-weights", "inception-sha256", "reference", "vae", "sampler", "upsample-sampler"):
        p.add_argument(f"--{name}", default=None)
    for name in ("samples", "batch", "decode-batch", "seed", "steps", "upsample-steps"):
        p.add_argument(f"--{name}", type=int, default=None)
    for name in ("guidance", "upsample-guidance", "until"):
        p.add_argument(f"--{name}", type=float, default=None)
    p.add_argument("--upsample-from", type=int, default=None, metavar="PX",
                   help="the checkpoint's resolution when --resolution is a multiple of it (training-free upsampling)")
    p.add_argument("--labels", choices=("random", "balanced"), default=None,
                   help="class labels: random (uniform, seeded per image; default, as the papers) or balanced")
    p.add_argument("--random-weights", action="store_true")
    p.add_argument("--fresh", action="store_true",
                   help="start over in OUT (its results, record and sampled chunks are kept as .bak)")
    p.add_argument("--allow-mixed", action="store_true",
                   help="add to a folder that holds another suite's or command's results, or FID rows of other "
                   "settings (refused otherwise)")
    p.set_defaults(func=cmd_fid)


def _image_files(folder: str) -> list:
    """The image files of a folder, flat or in class subfolders at any depth (hidden names skipped), sorted."""
    from pathlib import Path

    from dimbench.data import IMAGE_SUFFIXES

    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"{folder}: " + ("not a folder" if root.exists() else "no such folder") +
                        " (expected a folder of images, flat or in class subfolders)")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if len(files) < 2:
        raise UserError(f"{folder}: statistics need at least 2 images ({'/'.join(IMAGE_SUFFIXES)}), found "
                        f"{len(files)}")
    return files


def cmd_fid_stats(args: argparse.Namespace) -> int:
    """Streams the folder: ``--batch`` images are read, resized and passed through Inception at a time, and only
    their pool3 features (2048 float32 per image: 400 MB for 50,000) are kept, never the images themselves."""
    import numpy as np
    import torch

    from dimbench.data import DataError, read_image_uint8
    from dimbench.fid import inception
    from dimbench.fid.reference import write_stats
    from dimbench.quality.frechet import gaussian_stats
    from dimbench.suite import resolve_device

    device = resolve_device(args.device, what="--device")
    for name, value in (("--batch", args.batch), ("--resolution", args.resolution)):
        if value < 1:
            raise UserError(f"{name}: expected a whole number >= 1, got {value}")
    if not inception.is_sha256_prefix(args.inception_sha256):
        raise UserError(f"--inception-sha256: expected {inception.SHA256_PREFIX_TEXT}, got {args.inception_sha256!r}")
    reason = inception.available()
    if reason:
        raise UserError(f"fid-stats is not available: {reason}")
    inception.check_weights_file(args.inception_weights, args.inception_sha256)  # before reading any image
    files = _image_files(args.folder)
    net, digest = inception.load_extractor(args.inception_weights, args.inception_sha256, device)
    pools = []
    for start in range(0, len(files), args.batch):
        try:
            pixels = np.stack([read_image_uint8(f, args.resolution, 3) for f in files[start:start + args.batch]])
        except DataError as exc:
            raise UserError(str(exc)) from None
        pool, _ = inception.extract(net, torch.from_numpy(pixels).permute(0, 3, 1, 2), batch=args.batch)
        pools.append(pool)
    pool = np.concatenate(pools)
    mu, sigma = gaussian_stats(pool)
    source = (f"image folder {args.folder} ({len(files)} images), center crop + bicubic resize to "
              f"{args.resolution}x{args.resolution} px, RGB uint8 (16-bit images rounded to 8 bits)")
    try:
        write_stats(args.output, mu, sigma, len(pool), digest, source)
    except UserError:  # (a WriteError names the file and the cause itself)
        raise
    except OSError as exc:  # the folder cannot be made
        raise UserError(f"{args.output}: cannot write ({exc.strerror or exc})") from None
    console().print(f"{args.output}: mu/sigma of {len(pool)} images ({source}); Inception weights "
                    f"{args.inception_weights} (SHA256 {digest})", markup=False)
    return 0


def cmd_fid(args: argparse.Namespace) -> int:
    import contextlib
    import datetime
    import json
    import sys
    import time
    from pathlib import Path

    import models
    from dimbench import results
    from dimbench.metrics.base import MetricContext, SkipMetric
    from dimbench.metrics.fid import FID
    from dimbench.points import SweepPoint
    from dimbench.runfolder import CommandRun, is_complete
    from dimbench.schema import Problems, Record, cli_message
    from dimbench.suite import input_size_for, resolve_device
    from dimbench.training import distributed
    from dimbench.worker import make_row
    from models.checkpoints import CheckpointError

    if args.model not in models.list_models():
        raise UserError(f"{args.model}: not a registered model (dimbench list)")
    device = resolve_device(args.device, what="--device")
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise UserError(f"--checkpoint {args.checkpoint}: no such file")
    given = {k: getattr(args, k) for k in ("inception_weights", "inception_sha256", "reference", "vae", "sampler",
                                           "upsample_sampler", "samples", "batch", "decode_batch", "seed", "steps",
                                           "upsample_steps", "guidance", "upsample_guidance", "until", "labels")
             if getattr(args, k) is not None}
    if args.upsample_from:
        given["upsample_from"] = {args.model: {args.resolution: args.upsample_from}}
    given["random_weights"] = bool(args.random_weights)
    fields = [f for f in FID.option_record().fields if f.name != "timeout"]
    problems = Problems()
    options = Record(fields, "options").check(given, (), problems)
    messages = [m for _, m in problems]
    if not messages:
        messages = [m for _, m in FID.check_options(options, [args.model], [args.resolution])]
    if messages:  # each named by its flag: "--samples: expected ..."
        raise UserError("\n".join(cli_message(m, lambda o: "--" + o.replace("_", "-"), "options.fid.")
                                  for m in messages))
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    if distributed.launched_by_torchrun():
        distributed.init_from_env(device_type)  # sets this rank's GPU; the point names the device type only
    try:
        point = SweepPoint(suite="fid", model=args.model, resolution=args.resolution,
                           input_size=input_size_for(args.model, args.resolution), batch=1, dtype="float32",
                           device=device_type if distributed.launched_by_torchrun() else device, metrics=("fid",),
                           checkpoint=str(Path(args.checkpoint).resolve()) if args.checkpoint else None,
                           pad_layout=args.pad_layout)
        out = Path(args.out)
        rank0 = distributed.distributed_info().rank == 0
        settings = {"fid": json.loads(json.dumps({k: v for k, v in options.items() if k != "timeout"}, default=str))}
        # Rank 0 holds the folder (lock, record, rows) for the whole run, as the suite runner does.
        run = CommandRun(out, command="fid", argv=["dimbench", *getattr(args, "argv", sys.argv[1:])], device=device,
                         settings=settings, allow_mixed=args.allow_mixed, fresh=args.fresh,
                         warn=lambda line: console(stderr=True).print(line, markup=False)) if rank0 else None
        distributed.distributed_info().barrier()  # (--fresh has moved the old state aside before any rank reads)
        with run or contextlib.nullcontext():
            # Every rank decides from the disk, so that none waits for a rank that stopped.
            final = run.folder.final if run is not None else results.final_statuses(results.read_rows(out))
            if is_complete(final, point.key, FID.final_rows):
                if rank0:
                    console().print(f"fid {args.model} at {args.resolution} px: already scored in "
                                    f"{out / results.RESULTS_FILE} (--fresh to score again)", markup=False)
                return 0
            started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            t0 = time.perf_counter()
            ctx = MetricContext(FID, point, options, out_dir=str(out),
                                on_progress=(lambda info: console(stderr=True).print(
                                    f"fid: {info['step']}/{info['total']} images", markup=False)) if rank0 else None)
            try:
                rows = ctx.collect(FID.fn(point, ctx))
            except SkipMetric as exc:
                raise UserError(f"fid {args.model} at {args.resolution} px: not scored: {exc}") from None
            except CheckpointError as exc:  # truncated, not a checkpoint, unsafe, or of another model
                raise UserError(f"--checkpoint {args.checkpoint}: {exc}") from None
            if run is not None:
                run.write([make_row(point, FID, m, started_at=started, duration_s=time.perf_counter() - t0)
                           for m in rows])
                for m in rows:
                    shown = f"{m.value:.4g}" if m.value is not None else f"{m.status}: {m.error}"
                    console().print(f"{m.metric}: {shown}", markup=False)
                console().print(f"rows: {out / results.RESULTS_FILE}", markup=False)
    finally:
        distributed.shutdown()
    return 0
