"""The analyses behind the headline: growth exponents and where the DiM / DiT ratio crosses 1."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from .data import Facet, Results
from .document import px
from .plots import family_of

# Lower-is-better measures compared as a DiM / DiT ratio, with their colour in the ratio plot; predicted values
# are drawn dotted with hollow markers, as in the memory plot.
RATIO_MEASURES = [  # (metric, measure, colour, predicted)
    ("gmacs", "GMACs", "#1d2733", False),
    ("latency_ms", "forward latency", "#d1521f", False),
    ("train_step_ms", "training-step time", "#8a5fb5", False),
    ("mem_allocated_gib", "allocator peak memory", "#2e8b3a", False),
    ("mem_predicted_gib", "predicted peak memory", "#2e8b3a", True),
]


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


@dataclasses.dataclass
class RatioLine:
    dim: str
    dit: str
    metric: str
    measure: str
    colour: str
    predicted: bool
    facet: Facet
    res: list[int]
    ratio: list[float]
    cross: list[tuple[float, str]]

    def trend(self) -> str:
        lo, hi = self.res[0], self.res[-1]
        return f"DiM/DiT {self.ratio[0]:.2f} at {lo} px → {self.ratio[-1]:.2f} at {hi} px"

    def sentence(self) -> str:
        """One line for the DiM vs DiT section: where (if anywhere) DiM overtakes DiT on this measure."""
        where = self.facet.label()
        lo, hi = self.res[0], self.res[-1]
        span = f"{lo}–{hi} px" if lo != hi else f"{lo} px"
        if self.cross:
            parts = [f"{self.dim} {'overtakes' if d == 'below' else 'falls behind'} {self.dit} above ≈ {px(x)}"
                     for x, d in self.cross]
            return (f"{self.measure} ({where}): " + "; ".join(parts)
                    + f" (ratio crosses 1, interpolated in log space; {self.trend()}).")
        if all(q < 1 for q in self.ratio):
            verdict = f"{self.dim} is ahead of {self.dit} at every resolution measured ({span})"
        elif all(q > 1 for q in self.ratio):
            verdict = f"{self.dim} is behind {self.dit} at every resolution measured ({span}); no crossover in range"
        else:
            verdict = f"{self.dim} and {self.dit} are level within the range measured ({span})"
        return f"{self.measure} ({where}): {verdict} ({self.trend()})."


def ratio_lines(results: Results) -> list[RatioLine]:
    """DiM / DiT for every (DiM model, DiT model) pair, lower-is-better measure and facet with common points."""
    dims = [m for m in results.models if family_of(m) == "dim"]
    dits = [m for m in results.models if family_of(m) == "dit"]
    out: list[RatioLine] = []
    for metric, measure, colour, predicted in RATIO_MEASURES:
        if not results.has(metric, ok=True):
            continue
        for facet in results.facets([metric]):
            vals = results.values(metric, facet)
            for a in dims:
                for b in dits:
                    common = sorted(set(vals.get(a, {})) & set(vals.get(b, {})))
                    common = [r for r in common if vals[a][r] > 0 and vals[b][r] > 0]
                    if not common:
                        continue
                    q = [vals[a][r] / vals[b][r] for r in common]
                    out.append(RatioLine(a, b, metric, measure, colour, predicted, facet, common, q,
                                         crossings(common, q)))
    return out
