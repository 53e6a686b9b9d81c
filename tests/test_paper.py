"""Paper tables: the published numbers as data, the counts that reproduce them, and DiM's gap explained.

Counts are meta-device (free); the end-to-end test runs a small paper-tables suite through the runner and reads
the report's "Paper tables" section.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

import models
from dimbench.metrics import METRICS
from dimbench.paper import compare_published, half_unit, published_at, tables
from dimbench.points import SweepPoint
from dimbench.report import content, data
from dimbench.report.paper import NOT_MEASURED


def _point(model: str, resolution: int, metrics=("flops",)) -> SweepPoint:
    info = models.model_info(model)
    side = resolution // 8 if info.latent else resolution
    return SweepPoint("t", model, resolution, side, 1, "float32", "cpu", tuple(metrics))


def _measure(model: str, resolution: int, measure: str) -> float:
    metric = {"gmacs": "flops", "params": "params"}[measure]
    return next(m.value for m in METRICS[metric].measure(_point(model, resolution)) if m.metric == measure)


def test_published_data_names_registered_models_and_sources():
    registered = set(models.list_models())
    assert {"dit_table4", "uvit_gflops", "dim_counts", "official_params", "third_party_throughput",
            "fid"} <= set(tables())
    for table in tables().values():
        assert table.source.paper and table.source.table and table.convention
        for row in table.rows:
            assert row.model in registered, (table.id, row.model)
            assert set(row.values) <= set(table.measures)
    assert tables()["third_party_throughput"].batch == 64 and tables()["third_party_throughput"].device == "cuda"
    assert tables()["fid"].batch is None  # FID rows come from sampling runs of any batch
    assert [r.model for r in tables()["dit_table4"].rows][:3] == ["dit_s_8", "dit_s_4", "dit_s_2"]  # paper order


def test_rounding_interval_of_a_printed_number():
    assert half_unit(Decimal("19.70")) == Decimal("0.005") and half_unit(Decimal("77")) == Decimal("0.5")
    assert half_unit(Decimal("86e7")) == Decimal("5e6")
    inside = compare_published(76.6, Decimal("77"))
    assert inside.beyond_rounding == 0 and inside.difference == pytest.approx(-0.4 / 77)
    outside = compare_published(76.4, Decimal("77"))
    assert outside.beyond_rounding == pytest.approx(0.1 / 77)


@pytest.mark.slow
@pytest.mark.parametrize("table_id", ["dit_table4", "uvit_gflops", "official_params"])
def test_dit_and_uvit_counts_reproduce_the_published_tables_within_0p2_percent(table_id):
    table = tables()[table_id]
    for row in table.rows:
        for measure, published in row.values.items():
            measured = _measure(row.model, row.resolution, measure)
            gap = compare_published(measured, published).beyond_rounding
            assert gap <= 0.002, (row.label, measure, measured, str(published))


@pytest.mark.slow
def test_dim_gap_is_the_count_without_mambas_fused_inner_function():
    """DiM-H/2's cited 210 / 708 GMACs: the full count is ~48 % higher; the count without conv1d, x_proj, dt_proj,
    scan and out_proj (what mamba-ssm's fused mamba_inner_fn runs) lands on both, and no other hypothesis does."""
    for resolution, published in ((256, Decimal("210")), (512, Decimal("708"))):
        rows = {m.metric: m.value for m in METRICS["gmacs_variants"].measure(_point("dim_h_2", resolution))}
        full = _measure("dim_h_2", resolution, "gmacs")
        assert compare_published(full, published).difference == pytest.approx(0.48, abs=0.01)
        gaps = {name: compare_published(v, published).beyond_rounding for name, v in rows.items()}
        assert gaps["gmacs_mamba_fused"] < 0.002, rows
        assert all(g > 0.02 for name, g in gaps.items() if name != "gmacs_mamba_fused"), gaps
        assert rows["gmacs_no_scan"] < full and rows["gmacs_no_dwconv"] < rows["gmacs_no_scan"]
    skipped = METRICS["gmacs_variants"]
    with pytest.raises(Exception, match="DiM only"):
        skipped.measure(_point("dit_xl_2", 256))


def test_published_rows_carry_value_source_and_precision():
    rows = {m.metric: m for m in METRICS["published"].measure(_point("dit_xl_2", 256, ("published",)))}
    gm = rows["published_gmacs"]
    assert gm.value == 118.64 and gm.extra["printed"] == "118.64" and gm.extra["half_unit"] == 0.005
    assert "Table 4" in gm.method and gm.extra["table_id"] == "dit_table4"
    assert rows["published_throughput"].extra["applies_to"] == {"batch": 64, "dtype": "float32", "device": "cuda"}
    none = {m.metric: m for m in METRICS["published"].measure(_point("dit_s_2", 512, ("published",)))}
    assert none["published_gmacs"].status == "skipped" and "nothing published" in none["published_gmacs"].error
    assert published_at("dim_h_2", 512)


SUITE = """\
name: paper_small
models: [dit_xl_2, uvit_h_2, dim_h_2]
resolutions: [256, 512]
metrics: [params, flops, published, gmacs_variants]
limits:
  gmacs_variants: {models: [dim_h_2]}
device: cpu
"""


@pytest.mark.slow
def test_paper_tables_suite_end_to_end_report(tmp_path):
    from conftest import run_cli

    suite = tmp_path / "paper_small.yaml"
    suite.write_text(SUITE)
    proc = run_cli("run", str(suite), "--out", str(tmp_path / "out"), "--no-report")
    assert proc.returncode == 0, proc.stderr
    section = {s.heading: s for s in content.build(data.load(tmp_path / "out")).sections}["Paper tables"]
    by_caption = {t.caption.split(".")[0]: t for t in section.tables}
    dit = [[c.text for c in r] for r in by_caption["DiT, Table 4: forward-pass Gflops of the DiT configurations"].rows]
    xl = next(r for r in dit if r[0] == "DiT-XL/2")
    assert xl[1:3] == ["118.64", "118.62"] and xl[3].endswith("beyond rounding: reproduced)"), xl
    small = next(r for r in dit if r[0] == "DiT-S/8")
    assert small[2:] == ["not measured", "—"]  # not in this small suite: said, not left blank
    dim = [[c.text for c in r] for r in by_caption["DiM: parameters and GFLOPs as cited"].rows]
    assert dim[0][4:6] == ["210", "311.14"] and "NOT reproduced" in dim[0][6]
    assert any("mamba_inner_fn" in p for p in section.paragraphs)
    fid = [[c.text for c in r] for r in by_caption["Published FID-50K on ImageNet (class-conditional, with guidance)"]
           .rows]
    assert all(r[3].startswith("not measured") for r in fid) and len(fid) == 9  # column 1: dimbench's protocol


def test_published_values_must_be_quoted_to_keep_their_precision():
    from dimbench.paper import PublishedDataError, _parse

    table = {"tables": {"t": {"title": "T", "source": {"paper": "P", "table": "1"}, "measures": {"gmacs": "G"},
                              "rows": [{"label": "x", "model": "dit_s_2", "resolution": 256, "gmacs": 19.70}]}}}
    with pytest.raises(PublishedDataError, match=r"tables.t.rows\[0\].gmacs: expected the value as printed"):
        _parse(table)
    table["tables"]["t"]["rows"][0]["gmacs"] = "19.70"
    assert _parse(table)["t"].rows[0].values["gmacs"] == Decimal("19.70")


def test_throughput_ratios_use_eager_batch_64_float32_cuda_rows_only(tmp_path):
    import report_fixtures as rf

    rows = []
    for model, imgs in (("dim_h_2", 30.0), ("dit_xl_2", 80.0)):
        rows.append(rf._row(model, 256, "throughput", imgs, "img/s", "cuda events", "forward", batch=64,
                            dtype="float32", device="cuda"))
        # A compiled run of the same point (faster) must not be compared with the papers' eager numbers.
        speedup = 3 if model == "dim_h_2" else 2
        compiled = rf._row(model, 256, "throughput", imgs * speedup, "img/s", "cuda events", "forward", batch=64,
                           dtype="float32", device="cuda", extra={"compile": "default"})
        rows.append(dict(compiled, point_key=compiled["point_key"] + "|compile=default"))
    rows.append(rf._row("dim_h_2", 256, "published_throughput", 25.06, "img/s", "published", "forward",
                        extra={"table_id": "third_party_throughput"}))
    rf.write_results(tmp_path, rows)
    section = {s.heading: s for s in content.build(data.load(tmp_path)).sections}["Paper tables"]
    ratios = next(t for t in section.tables if t.caption.startswith("Throughput ratios"))
    dit = next([c.text for c in r] for r in ratios.rows if r[0].text == "DiM-H/2 / dit_xl_2" and r[1].text == "256 px")
    published = 25.06 / 76.90
    assert dit[2:] == [f"{published:.3f}", f"{30 / 80:.3f}", f"{(30 / 80 - published) / published * 100:+.1f} %"]
    uvit = next([c.text for c in r] for r in ratios.rows if r[0].text == "DiM-H/2 / uvit_h_2")
    assert uvit[3].startswith("not measured")


def test_fid_rows_are_set_beside_published_values_only_when_comparable(tmp_path):
    """Each published FID shows the protocol dimbench runs for it; a measured FID stands beside the published
    value of its own release only when comparable, otherwise its cell says each check that failed."""
    import report_fixtures as rf

    def fid(model, res, value, **extra):
        row = rf._row(model, res, "fid", value, "FID", "fid", "sample", dtype="float32", batch=1, extra=extra)
        return dict(row, point_key=row["point_key"] + f"|ckpt={model}.pt")

    reasons = ["precision: float32 ran, the protocol's is fp16", "samples: 1000 ran, the protocol's is 50000"]
    rows = [fid("dim_h_2", 256, 2.5, comparable_to_published=True, n_fake=50000, release="dim_h_2_256_625k"),
            fid("uvit_h_2", 256, 3.1, comparable_to_published=False, n_fake=1000, release=None,
                not_comparable=reasons),
            fid("dit_xl_2", 256, 40.0, comparable_to_published=False, n_fake=1000, random_weights=True),
            rf._row("dim_h_2", 256, "published_fid", 2.21, "FID", "published", "evaluate",
                    extra={"table_id": "fid"})]
    rf.write_results(tmp_path, rows)
    section = {s.heading: s for s in content.build(data.load(tmp_path)).sections}["Paper tables"]
    table = next(t for t in section.tables if t.caption.startswith("Published FID-50K"))
    assert table.columns[:3] == ["model", "dimbench's protocol", "FID-50K: published"]
    cells = {r[0].text: [c.text for c in r] for r in table.rows}
    assert cells["DiM-H/2 (256 px, 625K steps)"][2:4] == ["2.21", "2.50"]
    assert cells["DiM-H/2 (256 px, released 425K steps)"][2:] == ["2.40", NOT_MEASURED["fid"], "—"]  # other release
    assert cells["U-ViT-H/2 (256 px)"][3] == f"3.10 measured, not comparable ({'; '.join(reasons)})"
    assert cells["DiT-XL/2 (256 px, cfg 1.5)"][3:] == ["40.00 measured, not comparable (random weights, N = 1,000)",
                                                      "—"]  # a row written before the checks were recorded
    dim = cells["DiM-H/2 (256 px, released 425K steps)"][1]
    for words in ("DPM-Solver++", "50 steps", "s = 0.4", "time_uniform grid, intermediate points at grid points",
                  "network bf16, VAE decode fp16", "Inception resize torch", "fid_stats_imagenet256_guided_diffusion",
                  "425K steps"):
        assert words in dim, (words, dim)
    dit = cells["DiT-XL/2 (512 px, cfg 1.5)"][1]
    assert "DDPM ancestral, 250 steps" in dit and "on the first 3 channels" in dit and "network tf32" in dit
    assert "Inception resize tf1" in dit and "VIRTUAL_imagenet512.npz" in dit
    assert cells["U-ViT-L/2 (256 px)"][1].startswith("not run by dimbench: U-ViT-L's published FID comes from")
