"""The "Paper tables" section: each published table (``dimbench/paper/published.yaml``) in the paper's order, the
measured value beside the published one, and the deviation; the analysis of DiM's published GMACs; the
third-party throughput ratios.

Shown when the run wrote ``published_*`` rows (the ``published`` metric, suites/paper_tables.yaml). A published
number is reproduced when the measured value lies within its rounding interval give or take
:data:`REPRODUCED_WITHIN` (see :mod:`dimbench.paper`).
"""

from __future__ import annotations

import math

from dimbench.fid import protocol
from dimbench.metrics.count_variants import VARIANTS
from dimbench.paper import PublishedTable, compare_published, tables

from . import declared
from .data import Results
from .document import Cell, Section, Table, px

REPRODUCED_WITHIN = 0.002  # 0.2 % beyond the published value's rounding interval

#: Why a measure may be missing from a run, said in its cell.
NOT_MEASURED = {
    "throughput": "not measured (needs a CUDA run at batch 64, float32: the suite's cuda section)",
    "fid": "not measured (run the FID pipeline with real weights and reference statistics)",
}


def _fid_rows(results: Results, model: str, resolution: int, release: str | None):
    """The ok fid rows of ``model`` at ``resolution`` that may stand beside the published row of ``release``: rows
    of that release, and rows whose checkpoint is no known release (they could be any)."""
    df = results.rows("fid")
    df = df[(df["base_model"] == model) & (df["resolution"] == resolution) & (df["status"] == "ok")]
    if release is not None:
        df = df[df["extra"].map(lambda e: e.get("release") in (release, None)).astype(bool)]
    return df


def _measured(results: Results, model: str, resolution: int, measure: str, table: PublishedTable,
              release: str | None = None) -> float | None:
    if not results.has(measure):
        return None
    df = results.rows(measure) if measure != "fid" else _fid_rows(results, model, resolution, release)
    # The papers measured eager models: a compiled point's value is not theirs to compare with.
    df = df[(df["base_model"] == model) & (df["resolution"] == resolution) & (df["status"] == "ok")
            & (df["compile"] == "eager")]
    if table.batch is not None:
        df = df[df["batch"] == table.batch]
    if table.dtype:
        df = df[df["dtype"] == table.dtype]
    if table.device:
        df = df[df["device"].astype(str).str.startswith(table.device)]
    if measure == "fid":  # only a row that measured what the paper did, on that release (the fid metric says so)
        df = df[df["extra"].map(lambda e: e.get("comparable_to_published") is True
                                and e.get("release") == release).astype(bool)]
    return float(df["value"].iloc[-1]) if len(df) else None


def _not_comparable(results: Results, model: str, resolution: int, measure: str,
                    release: str | None = None) -> str | None:
    """For an FID measured under other conditions than the paper's: what was measured, and why it is not set beside
    the published number (each check the fid metric found failing; older rows: what they recorded)."""
    if measure != "fid" or not results.has("fid"):
        return None
    df = _fid_rows(results, model, resolution, release)
    if not len(df):
        return None
    value, extra = float(df["value"].iloc[-1]), df["extra"].iloc[-1]
    if extra.get("not_comparable"):
        return f"{value:.2f} measured, not comparable ({'; '.join(extra['not_comparable'])})"
    why = ", ".join(x for x in (
        "random weights" if extra.get("random_weights") else "",
        f"N = {extra['n_fake']:,}" if extra.get("n_fake") not in (None, 50000) else "",
        "other sampler, steps, guidance, labels or dtype than the paper's" if extra.get("n_fake") == 50000
        and not extra.get("random_weights") else "") if x)
    return f"{value:.2f} measured, not comparable ({why or 'conditions not recorded'})"


def _protocol_text(release_id: str | None) -> str:
    """What dimbench runs for a published FID: its release's protocol in words, or why it runs none."""
    release = protocol.table().releases.get(release_id or "")
    if release is None:
        return "no release named (dimbench/paper/published.yaml)"
    known = "SHA-256 recorded" if release.sha256 else "SHA-256 not recorded: options.fid.identify names the file"
    if release.unsupported:
        return f"not run by dimbench: {release.unsupported}"
    proto = protocol.table().protocols[release.protocol]
    ref = protocol.table().references[release.reference]
    return f"{proto.describe(release.guidance)}; reference {ref.file}; checkpoint {release.what} ({known})"


def _deviation(measured: float, published) -> Cell:
    c = compare_published(measured, published)
    if c.beyond_rounding == 0:
        return Cell(f"{c.difference * 100:+.2f} % (within rounding)")
    verdict = "reproduced" if c.beyond_rounding <= REPRODUCED_WITHIN else "NOT reproduced"
    return Cell(f"{c.difference * 100:+.2f} % ({c.beyond_rounding * 100:.2g} % beyond rounding: {verdict})",
                "ok" if verdict == "reproduced" else "error")


def paper_table(results: Results, table: PublishedTable) -> Table:
    with_protocol = "fid" in table.measures  # each published FID says how dimbench measures it
    columns = ["model"] + (["dimbench's protocol"] if with_protocol else [])
    for heading in table.measures.values():
        columns += [f"{heading}: published", "measured", "deviation"]
    body = []
    for row in table.rows:
        release = row.details.get("release")
        cells = [Cell(row.label)] + ([Cell(_protocol_text(release))] if with_protocol else [])
        for measure in table.measures:
            published = row.values.get(measure)
            measured = _measured(results, row.model, row.resolution, measure, table, release)
            cells.append(Cell(_published(published, measure) if published is not None else "—"))
            if published is None:
                cells += [Cell(_value(measured, measure) if measured is not None else "—"), Cell("—")]
            elif measured is None:
                other = _not_comparable(results, row.model, row.resolution, measure, release)
                cells += [Cell(other or NOT_MEASURED.get(measure, "not measured"), "missing"), Cell("—")]
            else:
                cells += [Cell(_value(measured, measure)), _deviation(measured, published)]
        body.append(cells)
    src = table.source
    where = ", ".join(x for x in (f"batch {table.batch}" if table.batch else "", table.dtype or "",
                                  f"on {table.device}" if table.device else "") if x)
    caption = (f"{table.title}. Source: {src.cite()}" + (f" ({src.note})" if src.note else "") + ". "
               f"Published: {table.convention}." + (f" Measured at {where}." if where else "") +
               (" A measured FID stands beside a published one only when the fid metric found the scored "
                "checkpoint to be that release and every item of its protocol matched (comparable_to_published); "
                "otherwise the measured cell says which did not." if with_protocol else ""))
    numeric = [False] + ([False] if with_protocol else []) + [True, True, False] * len(table.measures)
    return Table(caption, columns, body, numeric)


def _value(value: float, measure: str) -> str:
    return f"{value:,.0f}" if measure.startswith("params") else f"{value:.2f}"


def _published(value, measure: str) -> str:
    """As printed: "19.70", "77"; a count given to millions ("86e7") as "860M"."""
    if value.as_tuple().exponent > 0:
        return f"{float(value) / 1e6:,.0f}M"
    return f"{int(value):,}" if measure.startswith("params") else str(value)


def dim_gap(results: Results) -> tuple[Table, list[str]] | None:
    """The published DiM-H/2 GMACs against the count under each hypothesis (rows of the gmacs_variants metric)."""
    dim = next((t for t in tables().values() if t.id == "dim_counts"), None)
    if dim is None or not any(results.has(v, ok=True) for v in VARIANTS):
        return None
    anchors = [(r.model, r.resolution, r.values["gmacs"]) for r in dim.rows if "gmacs" in r.values]
    hypotheses = [("gmacs", "everything counted (dimbench's count of the padded sequence)")]
    hypotheses += list(VARIANTS.items())
    body, scores = [], {}
    for name, text in hypotheses:
        cells, worst = [Cell(text)], 0.0
        for model, res, published in anchors:
            value = _measured(results, model, res, name, dim)
            if value is None:
                cells += [Cell("—", "missing"), Cell("—")]
                worst = math.inf
                continue
            worst = max(worst, compare_published(value, published).beyond_rounding)
            cells += [Cell(f"{value:.2f}"), _deviation(value, published)]
        scores[name] = worst
        body.append(cells)
    best = min(scores, key=scores.get)
    best_text = dict(hypotheses)[best]
    columns = ["hypothesis"]
    for model, res, published in anchors:
        columns += [f"{model} {px(res)}: GMACs", f"vs published {published}"]
    caption = ("DiM-H/2's published GMACs against its count under each hypothesis, measured per named component "
               "on the meta device (the gmacs_variants metric); the closest is the one whose worst distance from "
               "the published rounding interval, over both resolutions, is smallest.")
    paras = [
        f"Where DiM's published counts come from: the closest hypothesis is “{best_text}”, "
        + (f"within {scores[best] * 100:.2g} % of the published rounding interval at both resolutions"
           + (" (reproduced)." if scores[best] <= REPRODUCED_WITHIN else ": none of the hypotheses reproduces the "
              "published counts, so their cause is not established.")
           if math.isfinite(scores[best]) else "(not every resolution was counted)."),
    ]
    if best == "gmacs_mamba_fused" and scores[best] <= REPRODUCED_WITHIN:
        paras.append(
            "The official DiM code runs each Mamba layer through mamba-ssm's fast path: the in-projection is an "
            "ordinary matrix product, but conv1d, x_proj, dt_proj, the selective scan and out_proj run inside one "
            "fused autograd Function (mamba_inner_fn). A counter that traces operators (fvcore, thop) sees the "
            "in-projection and the long-skip Linears and nothing inside that Function, so it misses about a third "
            "of the work: out_proj alone is half as large as the in-projection. The published 210 / 708 GMACs are "
            "that partial count; the architecture's full count is the first row.")
    return Table(caption, columns, body, [False] + [True, True] * len(anchors)), paras


def throughput_ratios(results: Results) -> Table | None:
    """DiM / baseline throughput, published (third-party A100) vs measured, at 256 and 512 px."""
    table = tables().get("third_party_throughput")
    if table is None:
        return None
    # Each published row's family and its role in comparisons come from the model registry (DiM: the subject).
    by_res: dict[int, dict[str, tuple[str, float, float | None]]] = {}
    subjects = {f.name for f in declared.subjects()}
    for row in table.rows:
        fam = declared.family(row.model)
        if fam is None:
            continue  # a model this installation does not register: no family to compare
        measured = _measured(results, row.model, row.resolution, "throughput", table)
        by_res.setdefault(row.resolution, {})[fam.name] = (row.model, float(row.values["throughput"]), measured)
    body = []
    for res, fams in sorted(by_res.items()):
        subject = next((name for name in fams if name in subjects), None)
        if subject is None:
            continue
        _, pub_dim, got_dim = fams[subject]
        for fam, (model, pub, got) in fams.items():
            if fam == subject:
                continue
            published = pub_dim / pub
            if got_dim and got:
                ratio = got_dim / got
                measured = Cell(f"{ratio:.3f}")
                deviation = Cell(f"{(ratio - published) / published * 100:+.1f} %")
            else:
                measured, deviation = Cell("not measured (CUDA, batch 64, float32)", "missing"), Cell("—")
            body.append([Cell(f"DiM-H/2 / {model}"), Cell(px(res)), Cell(f"{published:.3f}"), measured, deviation])
    caption = ("Throughput ratios (DiM-H/2 images per second / the baseline's), published by a third party on an "
               "A100 at batch 64 in float32, and measured by this run under the same batch and dtype. Ratios, not "
               "images per second, carry over between cards.")
    return Table(caption, ["ratio", "resolution", "published", "measured", "deviation"], body,
                 [False, True, True, True, True])


def section_paper_tables(results: Results) -> Section | None:
    if not any(m.startswith("published_") for m in results.metrics()):
        return None
    shown = [t for t in tables().values() if any(_has_point(results, r.model, r.resolution) for r in t.rows)]
    if not shown:
        return None
    paras = [
        "Each table follows the paper's rows; every published number sits beside the value measured by this run "
        "and the deviation (measured − published) / published. A published number is printed to some precision "
        "(“77” stands for 76.5–77.5): it is reproduced when the measured value lies within that rounding interval "
        f"give or take {REPRODUCED_WITHIN * 100:g} %. Published values are data with their sources "
        "(dimbench/paper/published.yaml), never measurements.",
    ]
    out_tables = [paper_table(results, t) for t in shown if t.id != "third_party_throughput"]
    gap = dim_gap(results)
    if gap is not None:
        out_tables.append(gap[0])
        paras += gap[1]
    if "third_party_throughput" in {t.id for t in shown}:
        out_tables.append(paper_table(results, tables()["third_party_throughput"]))
        ratios = throughput_ratios(results)
        if ratios is not None and ratios.rows:
            out_tables.append(ratios)
    return Section("Paper tables", "paper-tables", [], paras, [], out_tables)


def _has_point(results: Results, model: str, resolution: int) -> bool:
    df = results.df
    return bool(((df["base_model"] == model) & (df["resolution"] == resolution)).any())
