"""The report's "Against DiT-XL/2" section: every model / DiT-XL/2 per declared ratio row, with crossovers, and
the published throughput ratios beside the measured ones."""

from __future__ import annotations

import pytest
from report_fixtures import _row, write_results

from dimbench.report import data
from dimbench.report.reference_ratio import reference_lines, section_reference_ratio

GMACS = {"dit_xl_2": [100.0, 400.0, 2000.0], "dico_xl": [80.0, 340.0, 1200.0], "sana_xl_2_cc": [120.0, 430.0, 1500.0]}
RES = [256, 512, 1024]


@pytest.fixture()
def results(tmp_path):
    rows = [_row(m, r, "gmacs", g, "GMAC", "meta count", "count", device="cpu", dtype="float32")
            for m, values in GMACS.items() for r, g in zip(RES, values, strict=True)]
    # One timed point each at 256 px in the DiCo paper's setting: DiCo-XL 2.5x DiT-XL/2's images per second.
    for model, ips in (("dit_xl_2", 80.0), ("dico_xl", 200.0)):
        rows.append(_row(model, 256, "throughput", ips, "img/s", "cuda events", "forward", batch=64,
                         dtype="float32"))
    return data.load(write_results(tmp_path / "run", rows))


def test_every_model_is_divided_by_dit_xl_2_with_its_crossover(results):
    lines = {(ln.subject, ln.metric): ln for ln in reference_lines(results)}
    assert {s for s, _ in lines} == {"dico_xl", "sana_xl_2_cc"}
    dico, sana = lines[("dico_xl", "gmacs")], lines[("sana_xl_2_cc", "gmacs")]
    assert dico.ratio == pytest.approx([0.8, 0.85, 0.6]) and dico.cross == []
    assert sana.ratio == pytest.approx([1.2, 1.075, 0.75]) and len(sana.cross) == 1
    x, direction = sana.cross[0]
    assert 512 < x < 1024 and direction == "below"


def test_section_draws_the_ratios_and_names_the_adaptation(results):
    section = section_reference_ratio(results)
    assert section.heading == "Against DiT-XL/2"
    panels = [p for f in section.figures for p in f.panels]
    assert {s.label for p in panels for s in p.series} == {"dico_xl", "sana_xl_2_cc"}
    assert all(p.hline == 1.0 for p in panels) and any(p.vlines for p in panels)
    ratio_rows = [[c.text for c in r] for r in section.tables[0].rows]
    sana = next(r for r in ratio_rows if r[0].startswith("sana_xl_2_cc"))
    assert sana[0] == "sana_xl_2_cc (adaptation)" and "cheaper above" in sana[-1]
    assert any("ADAPTATION" in p for p in section.paragraphs)
    published = [[c.text for c in r] for r in section.tables[1].rows]
    dico = next(r for r in published if r[0].startswith("DiCo-XL") and r[1] == "256 px")
    assert dico[2] == f"{208.47 / 76.90:.2f}×" and dico[3] == "2.50×"  # published vs this run's ratio
