"""The errors dimbench shows its user, and the exit statuses of its commands.

A leaf: it imports nothing of dimbench, so any layer may raise these without depending on the command line.
Library code raises a :class:`UserError` (or a subclass naming what could not be used) for a mistake the user can
fix; the command-line front ends print ``str(error)`` as one line per problem on stderr and exit with
:data:`EXIT_USAGE`, never with a traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_REGRESSION = 1  # `dimbench gate`: the run is worse than its baseline
EXIT_USAGE = 2  # a user's mistake (bad suite, bad argument, missing file): the status argparse uses
EXIT_INCOMPLETE = 1  # `dimbench run --launcher ...`: the array ended with points not measured (rerun: resubmit)
EXIT_INTERRUPTED = 130  # the shell's convention for a run stopped by Ctrl-C (128 + SIGINT)


class UserError(Exception):
    """A mistake the user can fix. ``str(error)`` is the whole message; several lines allowed (one per problem)."""


class SuiteError(UserError):
    """A suite that cannot run; ``errors`` holds one ``FILE:LINE: ...`` message per problem."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("\n".join(errors))


class ResultsError(UserError, ValueError):
    """A results or environment file that cannot be read (the message names the file and line)."""


class WriteError(UserError, OSError):
    """A file could not be written (full disk, no permission, a folder that is a file...); the message names it.
    The file is as it was before: the new content went to a temporary file, which is removed."""


class ResultsWriteError(WriteError):
    """Rows could not be appended (disk full, read-only, ...): the file was cut back to its last complete row."""


class ReportError(UserError):
    """The results folder cannot make a report (missing, empty, unreadable); the message names the path."""


class BaselineError(UserError, ValueError):
    """An unreadable, malformed or mismatched baseline, or results a baseline cannot be made of."""


class DataError(UserError):
    """The user's data cannot be used as given; the message names the file and what was expected."""
