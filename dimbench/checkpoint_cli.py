"""``dimbench checkpoint convert|inspect``: the checkpoint commands, for ``dimbench.cli`` to mount.

    dimbench checkpoint convert IN OUT --model NAME [--input-size N] [--model-option NAME=VALUE] [--format F]
    dimbench checkpoint inspect PATH [--json]

``convert`` loads any supported checkpoint (official DiT / U-ViT / DiM or dimbench's own; see
:mod:`models.checkpoints`) into the registered model NAME and writes it in dimbench's format, with its position
embedding resized when ``--input-size`` differs from the checkpoint's. ``inspect`` prints what a file holds.

Each command is a function returning an exit status: 0 on success, 2 (with a one-line message on stderr, no
traceback) for a mistake the user can fix (missing or wrong file, unknown model, format or option value,
checkpoint that does not fit).

The parser names no choices: formats and option values are declared by the model families (docs/models.md §5)
and checked by the loader, whose error lists the valid ones; building the parser (every ``dimbench`` call, even
``--help``) must not import torch and timm.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from dimbench.errors import EXIT_USAGE
from dimbench.files import atomic_write, folder_lock
from dimbench.model_options import add_model_option_argument

EXIT_OK = 0


def _fail(command: str, message: str, stderr: TextIO | None) -> int:
    print(f"dimbench checkpoint {command}: error: {' '.join(str(message).split())}", file=stderr or sys.stderr)
    return EXIT_USAGE


def convert(
    source: str,
    dest: str,
    *,
    model: str,
    input_size: int | None = None,
    options: Mapping[str, Any] | None = None,
    format: str = "auto",
    force: bool = False,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Load ``source`` as ``model`` (resized to ``input_size``, with the family ``options`` given) and save it to
    ``dest`` in dimbench's format."""
    # heavy (torch, the models): imported when the command runs
    from models.checkpoints import CheckpointError, load_checkpoint, save_checkpoint

    if os.path.abspath(source) == os.path.abspath(dest):
        return _fail("convert", f"{dest}: the output must differ from the input", stderr)
    if os.path.isdir(dest):
        return _fail("convert", f"{dest}: is a folder (OUT names the checkpoint file to write)", stderr)
    taken = f"{dest}: already exists (pass --force to overwrite)"
    if os.path.exists(dest) and not force:
        return _fail("convert", taken, stderr)
    if input_size is not None and input_size <= 0:
        return _fail("convert", f"--input-size must be a positive integer, got {input_size}", stderr)
    try:
        net = load_checkpoint(model, source, input_size=input_size, format=format, options=options)
        # Checked again under the lock, with the write: two converts to one OUT never both pass the check.
        with folder_lock(dest, what=dest):
            if os.path.exists(dest) and not force:
                return _fail("convert", taken, stderr)
            atomic_write(dest, lambda f: save_checkpoint(net, f))  # a full disk: WriteError names OUT
    except (CheckpointError, OSError) as e:  # (WriteError, a UserError, is an OSError)
        return _fail("convert", str(e), stderr)
    info = net.checkpoint_info
    params = sum(p.numel() for p in net.parameters())
    line = (
        f"wrote {dest}: dimbench checkpoint of {model} from {source} ({info['format']}"
        + (f", {info['note']}" if info.get("note") else "")
        + f"); input_size {net.input_size}, {params:,} parameters (counted on the loaded model)"
    )
    for option, value in info.get("options", {}).items():
        line += f", {_label(option)} {value} ({info[option + '_reason']})"
    print(line, file=stdout or sys.stdout)
    return EXIT_OK


# Labels of the keys every description has (models.checkpoints.inspect_checkpoint), in display order.
_LABELS = {
    "path": "file", "format": "format", "family": "family", "architecture": "architecture", "model": "model",
    "width": "width", "depth": "depth", "patch": "patch", "grid": "token grid (side)",
    "input_size": "input size (grid x patch)", "in_channels": "input channels", "classes": "classes (real)",
    "class_rows": "class-table rows", "params": "parameters (tensor elements in the file)",
}


def _label(key: str) -> str:
    return key.replace("_", " ")


def _format_info(info: dict[str, Any], extras: dict[str, str]) -> str:
    """The description as aligned lines: common keys, then the family's extras (labelled by the family),
    its options and the note; the saved config is left to --json."""
    labels = {**_LABELS, **extras}
    keys = [k for k in _LABELS if k in info] + [k for k in info if k not in _LABELS and k not in ("config", "note")]
    lines = []
    for key in keys + (["note"] if "note" in info else []):
        value = info[key]
        if key == "params":
            value = f"{value:,}"
        elif key == "classes" and value is None:
            value = "unknown (the class table may or may not end with a null row)"
        label = "weights used" if key == "note" else labels.get(key, _label(key))
        lines.append(f"{label:>42}: {value}")
    return "\n".join(lines)


def inspect(path: str, *, as_json: bool = False, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Print what the checkpoint at ``path`` holds (see :func:`models.checkpoints.inspect_checkpoint`)."""
    # heavy (torch, the models): imported when the command runs
    from models import family
    from models.checkpoints import CheckpointError, inspect_checkpoint

    try:
        info = inspect_checkpoint(path)
    except (CheckpointError, OSError) as e:
        return _fail("inspect", str(e), stderr)
    extras = dict(family(info["family"]).checkpoints.labels)
    print(json.dumps(info, indent=2) if as_json else _format_info(info, extras), file=stdout or sys.stdout)
    return EXIT_OK


def _convert_command(args: argparse.Namespace) -> int:
    return convert(
        args.input, args.output, model=args.model, input_size=args.input_size, options=args.model_options,
        format=args.format, force=args.force,
    )


def _inspect_command(args: argparse.Namespace) -> int:
    return inspect(args.path, as_json=args.json)


def add_checkpoint_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``checkpoint convert`` and ``checkpoint inspect`` to a CLI's subparsers.

    Each leaf parser sets ``func``: call ``args.func(args)`` and exit with the status it returns.
    """
    parser = subparsers.add_parser(
        "checkpoint", help="convert or inspect model checkpoints",
        description="Convert official DiT / U-ViT / DiM checkpoints into dimbench's format, or inspect a file.",
    )
    commands = parser.add_subparsers(dest="checkpoint_command", metavar="{convert,inspect}", required=True)

    conv = commands.add_parser(
        "convert", help="load a checkpoint into a registered model and save it in dimbench's format",
        description="Load IN (official DiT .pt, U-ViT or DiM nnet*.pth, or a dimbench file) as model NAME and write "
        "OUT in dimbench's format. The position embedding is resized when --input-size differs from the "
        "checkpoint's.",
    )
    conv.add_argument("input", metavar="IN", help="checkpoint to read")
    conv.add_argument("output", metavar="OUT", help="dimbench checkpoint to write")
    conv.add_argument("--model", required=True, metavar="NAME", help="registered model name (dimbench list)")
    conv.add_argument("--input-size", type=int, default=None, metavar="N",
                      help="input side the model is built for (latent side for latent models); "
                      "default: the checkpoint's")
    add_model_option_argument(conv, "an option not given is chosen by the family from the checkpoint and "
                              "--input-size (DiM's pad layout: docs/models.md §4.3)")
    conv.add_argument("--format", default="auto", metavar="F",
                      help="checkpoint format (default: auto, detected; `dimbench checkpoint inspect IN` shows a "
                      "file's format; a wrong name is answered with the list of formats)")
    conv.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    conv.set_defaults(func=_convert_command)

    insp = commands.add_parser("inspect", help="print what a checkpoint holds",
                               description="Print format, architecture, sizes and parameter count of a checkpoint.")
    insp.add_argument("path", metavar="PATH", help="checkpoint to read")
    insp.add_argument("--json", action="store_true", help="print the result as JSON")
    insp.set_defaults(func=_inspect_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m dimbench.checkpoint_cli convert|inspect ...``), the same commands."""
    parser = argparse.ArgumentParser(prog="dimbench")
    add_checkpoint_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["checkpoint", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
