"""``dimbench fid-stats``: FID reference statistics (mu, sigma of Inception pool3 features) of an image folder.

    dimbench fid-stats data/imagenet_val_256 -o stats/my_val_256.npz \
        --inception-weights weights/weights-inception-2015-12-05-6726825d.pth --resolution 256

The folder is read like training data (dimbench.data: flat or class subfolders; center crop, bicubic resize to
--resolution). The .npz holds mu, sigma, count, weights_sha256 and source; the fid metric's `reference` option
reads it. Nothing is downloaded: a missing or wrong weights file is named with the expected checksum (exit 2).
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
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.set_defaults(func=cmd_fid_stats)


def cmd_fid_stats(args: argparse.Namespace) -> int:
    import torch

    from dimbench.data import DataError, load_image_folder
    from dimbench.fid import inception
    from dimbench.fid.reference import write_stats
    from dimbench.quality.frechet import gaussian_stats

    reason = inception.available()
    if reason:
        raise UserError(f"fid-stats is not available: {reason}")
    inception.check_weights_file(args.inception_weights, args.inception_sha256)  # before reading any image
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        data = load_image_folder(args.folder, args.resolution)
    except DataError as exc:
        raise UserError(str(exc)) from None
    if data.x.shape[0] < 2:
        raise UserError(f"{args.folder}: statistics need at least 2 images, found {data.x.shape[0]}")
    net, digest = inception.load_extractor(args.inception_weights, args.inception_sha256, device)
    pool, _ = inception.extract(net, inception.to_uint8(data.x), batch=args.batch)
    mu, sigma = gaussian_stats(pool)
    try:
        write_stats(args.output, mu, sigma, len(pool), digest, data.source)
    except OSError as exc:
        raise UserError(f"{args.output}: cannot write ({exc.strerror or exc})") from None
    console().print(f"{args.output}: mu/sigma of {len(pool)} images ({data.source}); Inception weights "
                    f"{args.inception_weights} (SHA256 {digest})", markup=False)
    return 0
