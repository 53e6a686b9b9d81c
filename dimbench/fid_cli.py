"""``dimbench fid-stats``: FID reference statistics of an image folder; ``dimbench fid``: the fid metric on one
model outside a suite, on one device or on several GPUs under torchrun.

    dimbench fid-stats data/imagenet_val_256 -o stats/my_val_256.npz \
        --inception-weights weights/weights-inception-2015-12-05-6726825d.pth --resolution 256

    torchrun --nproc_per_node 8 -m dimbench.cli fid dim_h_2 --resolution 256 \
        --checkpoint fid_files/dim/imagenet256_H_DiM/nnet_ema.pth --guidance 0.4 --out runs/fid_dim256 \
        --inception-weights fid_files/weights-inception-2015-12-05-6726825d.pth \
        --reference fid_files/fid_stats_imagenet256_guided_diffusion.npz --vae fid_files/sd-vae-ft-ema

    dimbench fid-stats --compare fid_files/fid_stats_imagenet256_guided_diffusion.npz stats/my_val_256.npz

fid-stats streams the folder (flat or class subfolders; center crop, bicubic resize to --resolution, as
dimbench.data reads images), --batch images at a time, keeping only their Inception features (resized to 299 px
as --inception-resize says: tf1 = torch-fidelity / ADM's evaluator, torch = pytorch-fid / U-ViT's and DiM's
statistics), and writes mu, sigma, count, weights_sha256, source and inception_resize; the fid metric's
`reference` option reads it. --compare A B prints the Fréchet distance between two statistics files and whether
their mu and sigma are identical. `dimbench fid` writes
OUT/results.jsonl (rank 0) and keeps its chunks in OUT/state/ (run the same command again to resume); each
torchrun rank samples its own chunks. Nothing is downloaded: a missing or wrong file is named (with the expected
checksum for the weights), exit 2, before any sampling.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import sys
import time
from pathlib import Path

from dimbench import results
from dimbench.console import console
from dimbench.errors import UserError
from dimbench.fid.reference import write_stats
from dimbench.model_options import add_model_option_argument, model_options
from dimbench.points import SweepPoint
from dimbench.schema import Problems, Record


def add_fid_commands(sub) -> None:
    # heavy (torch): imported when the parser is built, not when this module loads
    from dimbench.fid.inception import EXPECTED_SHA256_PREFIX
    from dimbench.fid.protocol import RESIZES

    p = sub.add_parser("fid-stats", help="FID reference statistics (mu, sigma) of an image folder, from local "
                       "Inception weights; or --compare two statistics files",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="\n\n".join(__doc__.split("\n\n")[i] for i in (1, 3)))
    p.add_argument("folder", nargs="?", metavar="IMAGE_FOLDER", help="images, flat or in class subfolders")
    p.add_argument("-o", "--output", metavar="FILE.npz")
    p.add_argument("--compare", nargs=2, metavar=("A.npz", "B.npz"),
                   help="compare two statistics files (Fréchet distance, identical mu/sigma) instead")
    p.add_argument("--inception-weights", metavar="PATH",
                   help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth (or pytorch-fid's "
                   "pt_inception-2015-12-05-6726825d.pth)")
    p.add_argument("--inception-resize", choices=RESIZES, default="tf1",
                   help="tf1: torch-fidelity's TF1-style bilinear (ADM's evaluator; default); torch: pytorch-fid's "
                   "F.interpolate (U-ViT's and DiM's statistics)")
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
    add_model_option_argument(p, "an option not given is chosen by the family from the checkpoint (DiM's pad "
                              "layout: docs/models.md §4.3)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (under torchrun: cuda:LOCAL_RANK)")
    for name in ("inception-weights", "inception-sha256", "reference", "vae", "sampler", "upsample-sampler",
                 "inception-resize", "precision", "vae-precision", "reference-images"):
        p.add_argument(f"--{name}", default=None)
    for name in ("samples", "batch", "decode-batch", "seed", "steps", "upsample-steps", "patch-crops"):
        p.add_argument(f"--{name}", type=int, default=None)
    for name in ("guidance", "upsample-guidance", "until"):
        p.add_argument(f"--{name}", type=float, default=None)
    p.add_argument("--upsample-from", type=int, default=None, metavar="PX",
                   help="the checkpoint's resolution when --resolution is a multiple of it (training-free upsampling)")
    p.add_argument("--labels", choices=("random", "balanced"), default=None,
                   help="class labels: random (uniform, seeded per image; default, as the papers) or balanced")
    p.add_argument("--identify", action="append", default=None, metavar="SHA256=ID",
                   help="declare that the file with this SHA-256 is a release or reference of "
                   "dimbench/fid/protocols.yaml (repeatable)")
    p.add_argument("--random-weights", action="store_true")
    p.add_argument("--fresh", action="store_true",
                   help="start over in OUT (its results, record and sampled chunks are kept as .bak)")
    p.add_argument("--allow-mixed", action="store_true",
                   help="add to a folder that holds another suite's or command's results, or FID rows of other "
                   "settings (refused otherwise)")
    p.set_defaults(func=cmd_fid)


def cmd_fid_stats(args: argparse.Namespace) -> int:
    """Streams the folder: ``--batch`` images are read, resized and passed through Inception at a time, and only
    their pool3 features (2048 float32 per image: 400 MB for 50,000) are kept, never the images themselves."""
    if args.compare:
        return _compare_stats(args)
    for name, value in (("IMAGE_FOLDER", args.folder), ("--output", args.output),
                        ("--inception-weights", args.inception_weights)):
        if not value:
            raise UserError(f"fid-stats: {name} is required (or give --compare A.npz B.npz)")
    # heavy (torch, the models): imported when the command runs
    from dimbench.fid import inception
    from dimbench.fid.folder import folder_features, image_files
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
    files = image_files(args.folder)
    net, digest = inception.load_extractor(args.inception_weights, args.inception_sha256, device)
    pool, _ = folder_features(files, args.resolution, net, resize=args.inception_resize, batch=args.batch)
    mu, sigma = gaussian_stats(pool)
    source = (f"image folder {args.folder} ({len(files)} images), center crop + bicubic resize to "
              f"{args.resolution}x{args.resolution} px, RGB uint8 (16-bit images rounded to 8 bits), Inception "
              f"resize {args.inception_resize}")
    try:
        write_stats(args.output, mu, sigma, len(pool), digest, source, args.inception_resize)
    except UserError:  # (a WriteError names the file and the cause itself)
        raise
    except OSError as exc:  # the folder cannot be made
        raise UserError(f"{args.output}: cannot write ({exc.strerror or exc})") from None
    console().print(f"{args.output}: mu/sigma of {len(pool)} images ({source}); Inception weights "
                    f"{args.inception_weights} (SHA256 {digest})", markup=False)
    return 0


def _compare_stats(args: argparse.Namespace) -> int:
    """``fid-stats --compare A B``: how far two statistics files are apart (exit 2 naming a bad file)."""
    # heavy (torch, the models): imported when the command runs
    from dimbench.fid.reference import compare, read_reference

    if args.folder or args.output:
        raise UserError("fid-stats --compare A.npz B.npz reads two statistics files; it takes no IMAGE_FOLDER and "
                        "no --output")
    a, b = (read_reference(path) for path in args.compare)
    c = compare(a, b)
    out = console()
    for ref in (a, b):
        made = f", Inception resize {ref.inception_resize}" if ref.inception_resize else ""
        count = f"{ref.count} images" if ref.count is not None else "image count not recorded"
        out.print(f"{ref.describe()}, {count}{made}", markup=False)
    out.print(f"Fréchet distance between them: {c.frechet_distance:.6g}", markup=False)
    out.print(f"mu identical: {'yes' if c.mu_identical else 'no'} (max |difference| {c.mu_max_abs_diff:.3g}); "
              f"sigma identical: {'yes' if c.sigma_identical else 'no'} (max |difference| "
              f"{c.sigma_max_abs_diff:.3g})", markup=False)
    return 0


def cmd_fid(args: argparse.Namespace) -> int:
    # heavy (torch, the models): imported when the command runs
    import models
    from dimbench.metrics.base import MetricContext, SkipMetric
    from dimbench.metrics.fid import FID
    from dimbench.runfolder import CommandRun, is_complete
    from dimbench.schema import cli_message
    from dimbench.suite import resolve_device
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
                                           "upsample_steps", "guidance", "upsample_guidance", "until", "labels",
                                           "inception_resize", "precision", "vae_precision", "reference_images",
                                           "patch_crops")
             if getattr(args, k) is not None}
    if args.identify:
        pairs = [item.partition("=") for item in args.identify]
        bad = [item for item, (_, eq, fid) in zip(args.identify, pairs, strict=True) if not eq or not fid]
        if bad:
            raise UserError(f"--identify {bad[0]}: expected SHA256=ID (a release or reference id)")
        given["identify"] = {sha: fid for sha, _, fid in pairs}
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
        info = models.model_info(args.model)
        point = SweepPoint(suite="fid", model=args.model, resolution=args.resolution,
                           input_size=info.input_size(args.resolution), batch=1, dtype="float32",
                           device=device_type if distributed.launched_by_torchrun() else device, metrics=("fid",),
                           checkpoint=str(Path(args.checkpoint).resolve()) if args.checkpoint else None,
                           options=model_options(args, args.model))
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
