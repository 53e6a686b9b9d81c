"""The analyses behind the headline: growth exponents, and where the ratio of DiM to DiT (and to U-ViT) crosses 1.

Who is compared with whom is the model registry's: each model of the subject family (role ``"subject"``: DiM)
with each model of a baseline family (role ``"baseline"``: DiT, then U-ViT); models of other or unregistered
families are not compared. What is compared are the rows that declare a ``ratio`` (lower-is-better measures:
GMACs, times, memory), in registration order, under the measure name and colour they declare; predicted rows
are drawn dotted with hollow markers, as in the memory plot.

Ratios are taken per image (:meth:`~dimbench.report.data.Results.values`) under one facet, so a suite whose
batch shrinks as the resolution grows still gives one ratio curve over every resolution; at each resolution both
models ran the same batch, so the ratio per image equals the ratio per pass. Memory (not divisible by the batch)
is compared only where both models ran the same batch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from dimbench.metrics import Row
from models import Family

from . import declared
from .data import Facet, Results, batch_tag
from .document import px


def growth_exponent(res: Sequence[float], values: Sequence[float]) -> tuple[float | None, float | None]:
    """Exponent of value vs number of tokens (tokens ∝ resolution²): least-squares slope over all points,
    and the local slope between the two largest resolutions (where the asymptotic term shows)."""
    pts = sorted((r, v) for r, v in zip(res, values, strict=True) if r > 0 and v > 0)
    if len(pts) < 2:
        return None, None
    lt = np.log(np.array([r for r, _ in pts], dtype=float) ** 2)
    lv = np.log(np.array([v for _, v in pts], dtype=float))
    fit = float(np.polyfit(lt, lv, 1)[0])
    local = float((lv[-1] - lv[-2]) / (lt[-1] - lt[-2]))
    return fit, local


def crossings(res: Sequence[float], ratio: Sequence[float]) -> list[tuple[float, str]]:
    """Where ratio crosses 1, interpolated linearly in (log resolution, log ratio); with the direction:
    "below" = the ratio drops below 1 going up in resolution (DiM becomes cheaper), "above" = the reverse."""
    pts = sorted((r, q) for r, q in zip(res, ratio, strict=True) if r > 0 and q > 0)
    out: list[tuple[float, str]] = []
    for (r0, q0), (r1, q1) in zip(pts, pts[1:], strict=False):  # neighbours
        l0, l1 = math.log(q0), math.log(q1)
        if l0 == 0 or l0 * l1 >= 0:
            continue
        t = l0 / (l0 - l1)
        x = math.exp(math.log(r0) + t * (math.log(r1) - math.log(r0)))
        out.append((x, "below" if l1 < 0 else "above"))
    return out


def ratio_text(q: float) -> str:
    return f"{q:.3g}×"


@dataclasses.dataclass
class RatioLine:
    """Subject model's value / baseline model's value over the resolutions both measured under one facet."""

    subject: str
    other: str
    row: Row  # the declaration of the compared row: its ratio measure and colour, whether it is predicted
    facet: Facet
    res: list[int]
    ratio: list[float]
    batches: list[str]  # the batch at each resolution ("b32"; "b8/b4" where the two models differ)
    cross: list[tuple[float, str]]

    @property
    def metric(self) -> str:
        return self.row.name

    @property
    def measure(self) -> str:
        return self.row.ratio.measure

    @property
    def colour(self) -> str:
        return self.row.ratio.colour

    @property
    def predicted(self) -> bool:
        return self.row.predicted

    @property
    def family(self) -> Family:
        """The baseline's family."""
        return declared.family(self.other)

    @property
    def subject_name(self) -> str:
        """The subject's family as the text names it ("DiM")."""
        return declared.family(self.subject).display

    @property
    def setting(self) -> str:
        """Device and dtype ("counted" for counts that hold for any device and dtype)."""
        return ", ".join(p for p in (self.facet.device, self.facet.dtype) if p) or "counted"

    def whole_batch(self) -> bool:
        """Whether the values are of the whole batch although the batch varies (memory): then each end of the
        span names its batch."""
        return self.facet.batch is None and not self.row.per_pass

    def span(self, at: bool = True) -> str:
        """``2.62× at 256 px → 0.869× at 1,536 px`` (without the resolutions when ``at`` is False)."""
        def end(i: int) -> str:
            b = f" ({self.batches[i]})" if self.whole_batch() else ""
            return ratio_text(self.ratio[i]) + (f" at {px(self.res[i])}" if at else "") + b

        if len(self.res) == 1:
            return end(0) + ("" if at else f" at {px(self.res[0])}") + " only"
        return f"{end(0)} → {end(-1)}"

    def verdict(self, short: bool = False) -> str:
        """Where the ratio crosses 1 (``short``: without how it was found and which way), or that it does not."""
        if len(self.res) < 2:
            return ""
        if self.cross:
            return " and ".join(f"crossover ≈ {px(x)}" + ("" if short else f" (log-interpolated; {self.subject_name} "
                                f"{'cheaper' if d == 'below' else 'dearer'} above)") for x, d in self.cross)
        if all(q < 1 for q in self.ratio):
            return f"{self.subject_name} cheaper at every resolution, no crossover in range"
        if all(q > 1 for q in self.ratio):
            return "no crossover in range"
        return "level at some resolution, no crossover in range"

    def batch_text(self) -> str:
        tags = list(dict.fromkeys(self.batches))
        if self.facet.batch is not None:
            return str(self.facet.batch)
        return " → ".join(t.removeprefix("b") for t in (self.batches[0], self.batches[-1])) if len(tags) > 1 \
            else tags[0].removeprefix("b")


def ratio_lines(results: Results) -> list[RatioLine]:
    """Subject / baseline for every subject model and baseline model (DiT's, then U-ViT's), declared ratio row
    and facet with common resolutions (computed once per loaded folder: the summary and the ratio section share
    them)."""
    if "ratio_lines" not in results.memo:
        results.memo["ratio_lines"] = _ratio_lines(results)
    return results.memo["ratio_lines"]


def _ratio_lines(results: Results) -> list[RatioLine]:
    subjects = [m for m in results.models if declared.has_role(m, "subject")]
    others = [m for fam in declared.baselines() for m in results.models if declared.family(m) is fam]
    out: list[RatioLine] = []
    for row in declared.ratio_rows():
        metric = row.name
        if not results.has(metric, ok=True):
            continue
        for facet in results.facets([metric]):
            vals = results.values(metric, facet)
            bat = results.batches([metric], facet)
            for a in subjects:
                for b in others:
                    common = sorted(set(vals.get(a, {})) & set(vals.get(b, {})))
                    common = [r for r in common if vals[a][r] > 0 and vals[b][r] > 0]
                    if facet.batch is None and not row.per_pass:
                        common = [r for r in common if bat[a][r] == bat[b][r]]  # whole-batch values: same batch
                    if not common:
                        continue
                    q = [vals[a][r] / vals[b][r] for r in common]
                    tags = [batch_tag({bat[a][r], bat[b][r]}) for r in common]
                    out.append(RatioLine(a, b, row, facet, common, q, tags, crossings(common, q)))
    return out
