"""Family options on the command line: ``--model-option NAME=VALUE``, repeatable, for any constructor option the
model's family declares (``models.Family.options``; ``dimbench list`` shows each family's, with its values).

Parsing the flag needs no model registry (the parsers are built without importing torch); the values are checked
against the model's family when the command runs, and a wrong one is a one-line usage error naming the flag.
"""

from __future__ import annotations

import argparse
from typing import Any

from dimbench.errors import UserError

FLAG = "--model-option"


class _Collect(argparse.Action):
    """``NAME=VALUE`` into a dict; the same name twice with different values is a usage error."""

    def __call__(self, parser, namespace, value, option_string=None):
        name, sep, text = str(value).partition("=")
        name = name.strip()
        if not sep or not name or not text:
            parser.error(f"{option_string} {value}: expected NAME=VALUE, an option of the model's family "
                         "(`dimbench list` shows each family's options)")
        given = dict(getattr(namespace, self.dest, None) or {})
        if given.get(name, text) != text:
            parser.error(f"{option_string} {name}: given twice ({given[name]!r} and {text!r})")
        given[name] = text
        setattr(namespace, self.dest, given)


def add_model_option_argument(parser: argparse.ArgumentParser, default: str) -> None:
    """Add ``--model-option NAME=VALUE`` to a command; ``default`` says what an option not given is."""
    parser.add_argument(FLAG, dest="model_options", action=_Collect, default={}, metavar="NAME=VALUE",
                        help="a constructor option of the model's family, repeatable (`dimbench list` shows each "
                        f"family's options and their values; a wrong one is answered with them); {default}")


def model_options(args: argparse.Namespace, model: str) -> dict[str, Any]:
    """The options given to a command, checked against ``model``'s family (a UserError naming the flag)."""
    import models  # heavy (torch): the parsers that add this flag must build without it

    given = dict(getattr(args, "model_options", None) or {})
    for name, value in given.items():
        problem = models.option_problem(model, name, value)
        if problem:
            raise UserError(f"{FLAG} {name}={value}: {problem}")
    return given
