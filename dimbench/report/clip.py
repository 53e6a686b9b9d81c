"""Capping the strings of user-handed files when they are loaded.

One huge string (a 10 MB traceback in a row's ``error``, a method or an ``extra`` value) used to stall the
report: the PDF measures and wraps, glyph by glyph, every string it draws, which took minutes for a single
10 MB field, and the HTML embedded it whole. Every string taken from the rows and from environment.json is
therefore cut to :data:`MAX_CHARS` on loading; a cut string keeps its start and says how long it was, and the
report's notes say how many were cut.
"""

from __future__ import annotations

from typing import Any

MAX_CHARS = 2000  # a long traceback's last lines fit; nothing a reader needs in a table cell is longer


def marker(length: int) -> str:
    """What replaces the rest of a string of ``length`` characters."""
    return f" … [truncated, {length:,} characters]"


class Clipper:
    """Caps strings (and dict keys) inside JSON-like values, counting what it cut."""

    def __init__(self, limit: int = MAX_CHARS):
        self.limit = limit
        self.cut = 0
        self.longest = 0

    def text(self, s: str) -> str:
        if len(s) <= self.limit:
            return s
        self.cut += 1
        self.longest = max(self.longest, len(s))
        return s[: self.limit] + marker(len(s))

    def value(self, v: Any) -> Any:
        """``v`` with every string in it capped (dicts, lists and tuples are rebuilt; other values kept)."""
        if isinstance(v, str):
            return self.text(v)
        if isinstance(v, dict):
            return {self.text(str(k)): self.value(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [self.value(x) for x in v]
        return v

    def notes(self, where: str) -> list[str]:
        """The note for the report (none when nothing was cut)."""
        if not self.cut:
            return []
        return [f"{self.cut} text field(s) of {where} longer than {self.limit:,} characters (the longest had "
                f"{self.longest:,}) were cut to their first {self.limit:,} characters and marked “… [truncated, "
                "N characters]”, so that the report stays readable and quick to build."]
