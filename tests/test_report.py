"""Reports: HTML and PDF from one content model, plots with failures marked, escaping, real renderers.

The full report of a realistic folder (3 models x 4 resolutions, one OOM and one error point) is built once per
module; the other tests use small folders. The browser and poppler checks run the real tools and are skipped,
with the reason, only where those tools are not installed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import report_fixtures as rf  # noqa: E402
from matplotlib.figure import Figure as MplFigure  # noqa: E402

import models  # noqa: E402
from dimbench.errors import UserError  # noqa: E402
from dimbench.metrics import Metric, Ratio, Row, register_metric, unregister_metric  # noqa: E402
from dimbench.report import ReportError, analysis, build_report, content, data, document, pdf  # noqa: E402
from dimbench.report.clip import MAX_CHARS  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PDFTOPPM, PDFINFO, PDFTOTEXT = shutil.which("pdftoppm"), shutil.which("pdfinfo"), shutil.which("pdftotext")
needs_poppler = pytest.mark.skipif(not (PDFTOPPM and PDFINFO and PDFTOTEXT),
                                   reason="poppler-utils (pdfinfo, pdftoppm, pdftotext) not installed")


class _Doc(HTMLParser):
    """Collects what the checks need: tags, attributes, text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.script_tags = 0

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self.script_tags += 1

    def handle_data(self, d):
        self.text.append(d)


def parse(html_text: str) -> _Doc:
    doc = _Doc()
    doc.feed(html_text)
    doc.close()
    return doc


def _pdf_pages(path: Path) -> int:
    out = subprocess.run([PDFINFO, str(path)], capture_output=True, text=True, check=True).stdout
    return int(next(line.split()[-1] for line in out.splitlines() if line.startswith("Pages:")))


def _pdf_text(path: Path) -> str:
    return subprocess.run([PDFTOTEXT, "-layout", str(path), "-"], capture_output=True, text=True, check=True).stdout


def _no_model(**_):
    raise AssertionError("the report never builds a model")


@contextlib.contextmanager
def registered_model(name: str, family: str):
    """A model name registered in a family for the duration (the report asks the registry, not the name)."""
    models.register_model(name, family=family, official="test", input_size=32, in_channels=4, num_classes=1000,
                          patch_size=2)(_no_model)
    try:
        yield
    finally:
        models.registry.unregister_model(name)


def _assert_not_blank(png: Path) -> None:
    img = mpimg.imread(png)
    rgb = img[..., :3].astype(float)
    assert rgb.std() > 0.05, f"{png} looks blank (pixel std {rgb.std():.4f})"
    assert (rgb < 0.5).mean() > 0.002, f"{png} has (almost) no dark pixels: no text or lines drawn"


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The realistic folder, its loaded results and content, and the built report files."""
    d = rf.write_results(tmp_path_factory.mktemp("results"), rf.realistic_rows())
    out = d / "out"
    html_path, pdf_path = build_report(d, out_dir=out)
    results = data.load(d)
    report = content.build(results)
    return {"dir": d, "html": html_path, "pdf": pdf_path, "results": results, "report": report,
            "text": html_path.read_text(encoding="utf-8")}


# ---- HTML -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_html_is_one_self_contained_file_with_every_plot(full):
    doc = parse(full["text"])
    n_figures = sum(len(s.figures) for s in full["report"].sections)
    # ratio, GMACs, forward speed, memory, efficiency: one facet each in this folder
    assert n_figures == 5
    imgs = [a for t, a in doc.tags if t == "img"]
    assert len(imgs) == n_figures
    for a in imgs:
        assert a["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(a["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # Nothing may refer to the network or to other files: every src/href is inline data or an anchor.
    for tag, attrs in doc.tags:
        for key in ("src", "href"):
            if key in attrs:
                assert attrs[key].startswith(("data:", "#")), (tag, attrs[key][:60])
    assert any(t == "style" for t, _ in doc.tags)
    assert doc.script_tags == 0
    assert "@media print" in full["text"]


@pytest.mark.slow
def test_html_shows_every_model_resolution_and_section(full):
    text = " ".join(parse(full["text"]).text)
    for m in rf.MODELS:
        assert m in text
    for r in rf.RESOLUTIONS:
        assert f"{r:,} px" in text or f"{r} px" in text
    for heading in ("Summary", "DiM vs DiT", "Compute (GMACs)", "Speed: forward pass", "Memory",
                    "Hardware efficiency", "Failed and skipped points", "Full results", "Method notes",
                    "Environment"):
        assert heading in text
    assert "NVIDIA H100 80GB HBM3" in text  # the environment reached the summary and the table


@pytest.mark.slow
def test_summary_names_the_gmacs_crossover(full):
    # Independently of the report's code: DiM/DiT GMACs ratio is a straight line in log-log between the two
    # resolutions around parity, so the crossover is where that line meets ratio 1.
    q0 = rf.gmacs("dim_h_2", 1024) / rf.gmacs("dit_xl_2", 1024)
    q1 = rf.gmacs("dim_h_2", 2048) / rf.gmacs("dit_xl_2", 2048)
    assert q0 > 1 > q1
    x = 1024 * 2 ** (math.log(q0) / (math.log(q0) - math.log(q1)))
    summary = full["report"].sections[0]
    assert summary.heading == "Summary"
    lines = {h.split(":")[0]: h for h in summary.highlights}
    q256 = rf.gmacs("dim_h_2", 256) / rf.gmacs("dit_xl_2", 256)
    assert lines["GMACs per image"].startswith(
        f"GMACs per image: dim_h_2 / dit_xl_2 = {q256:.3g}× at 256 px → {q1:.3g}× at 2,048 px, crossover ≈ "
        f"{x:,.0f} px (log-interpolated; DiM cheaper above)")
    assert "dim_h_2 / uvit_h_2 = " in lines["GMACs per image"]  # U-ViT, compared on the same line
    # dit_xl_2 ran out of memory at 2048 px, so its forward times stop at 1024 px
    assert "at 1,024 px, no crossover in range" in lines["forward time per image (cuda, bfloat16)"]
    assert any(h.startswith("dit_xl_2 ran out of memory at 2048 px") for h in summary.highlights)
    assert any("mamba_ssm backend" in h for h in summary.highlights)  # the scan backend DiM's times ran with


@pytest.mark.slow
def test_failed_points_are_listed_with_messages(full):
    sec = next(s for s in full["report"].sections if s.heading == "Failed and skipped points")
    failed, skipped = sec.tables
    rows = [[c.text for c in r] for r in failed.rows]
    assert len(rows) == 2  # one line per failed point, its five metrics joined
    oom = [r for r in rows if r[0] == "dit_xl_2" and r[5] == "OOM"]
    err = [r for r in rows if r[0] == "uvit_h_2" and r[5] == "error"]
    assert len(oom) == 1 and "out of memory" in oom[0][-1] and "latency_ms" in oom[0][6]
    assert len(err) == 1 and err[0][-1] == rf.ERROR_MESSAGE
    # NVML memory skipped at all 12 points, for one reason: one grouped line
    (skip,) = [[c.text for c in r] for r in skipped.rows]
    assert skip[0] == "mem_device_gib" and skip[1].startswith("12: ") and skip[2] == "nvidia-ml-py is not installed"
    assert rf.ERROR_MESSAGE in full["text"]
    assert 'class="num oom"' in full["text"]  # OOM cells flagged in the full tables


@pytest.mark.slow
def test_oom_and_error_points_are_drawn_as_marked_x(full):
    speed = next(s for s in full["report"].sections if s.heading == "Speed: forward pass")
    (fig,) = speed.figures
    latency = fig.panels[0]
    marks = {(f.label, f.x, f.status) for f in latency.fails}
    assert marks == {("dit_xl_2", 2048, "oom"), ("uvit_h_2", 2048, "error")}
    # ... and drawn: an X marker and an annotation per failure, on the real axes.
    mfig = MplFigure()
    fig.draw(mfig)
    ax = mfig.axes[0]
    xs = [ln for ln in ax.lines if ln.get_marker() == "X"]
    assert sorted(float(ln.get_xdata()[0]) for ln in xs) == [2048.0, 2048.0]
    notes = {t.get_text() for t in ax.texts}
    assert {"OOM dit_xl_2", "ERROR uvit_h_2"} <= notes
    # the failing models have no plotted value at 2048
    for line in ax.lines:
        if line.get_label() in ("dit_xl_2", "uvit_h_2"):
            assert 2048 not in list(line.get_xdata())


@pytest.mark.slow
def test_memory_plot_distinguishes_measured_and_predicted(full):
    mem = next(s for s in full["report"].sections if s.heading == "Memory")
    (panel,) = mem.figures[0].panels
    styles = {(s.linestyle, s.hollow) for s in panel.series}
    assert styles == {("-", False), (":", True)}
    assert any("predicted" in lab for lab, _, _ in panel.style_legend)
    assert any("measured" in lab for lab, _, _ in panel.style_legend)


@pytest.mark.slow
def test_gmacs_exponent_is_reported_per_model(full):
    sec = next(s for s in full["report"].sections if s.heading == "Compute (GMACs)")
    (table,) = sec.tables
    local = {r[0].text: float(r[5].text) for r in table.rows}
    # DiM is linear in tokens; the attention models' local exponent is well above 1 at 1024 -> 2048 px.
    assert abs(local["dim_h_2"] - 1.0) < 1e-3
    assert local["dit_xl_2"] > 1.4 and local["uvit_h_2"] > 1.4
    assert "tends to 2" in sec.figures[0].caption


# ---- PDF ------------------------------------------------------------------------------------------------


@pytest.mark.slow
@needs_poppler
def test_pdf_pages_and_text_match_the_content(full):
    pages = pdf.layout(full["report"])
    assert _pdf_pages(full["pdf"]) == len(pages) >= 3
    placed = [b for p in pages for _, b in p.blocks if isinstance(b, pdf.FigureBlock)]
    assert len(placed) == sum(len(s.figures) for s in full["report"].sections)
    text = _pdf_text(full["pdf"])
    for m in rf.MODELS:
        assert m in text
    for heading in ("Summary", "Failed and skipped points", "Method notes", "Environment"):
        assert heading in text
    assert "OOM" in text and "illegal" in text  # the error message (wrapped in its table cell)
    assert f"page {len(pages)} of {len(pages)}" in text


@pytest.mark.slow
@needs_poppler
def test_pdf_first_page_is_not_blank(full, tmp_path):
    subprocess.run([PDFTOPPM, "-png", "-r", "50", "-f", "1", "-l", "1", str(full["pdf"]), str(tmp_path / "p")],
                   check=True, timeout=60)
    (png,) = tmp_path.glob("p*.png")
    _assert_not_blank(png)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (CI installs Debian's chromium)")
def test_browser_renders_the_html(full, tmp_path):
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,1600",
           full["html"].resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.exists(), f"chromium wrote no screenshot (rc {proc.returncode}): {proc.stderr[-2000:]}"
    _assert_not_blank(shot)


# ---- untrusted strings ----------------------------------------------------------------------------------

EVIL_MODEL = 'dim_<script>alert("m")</script>\'x'
EVIL_ERROR = 'boom <script>alert("e")</script> & \'quotes\' "$x$" <img src=http://x>'


def test_every_embedded_string_is_escaped(tmp_path):
    rows = [r for r in rf.realistic_rows(models=[EVIL_MODEL, "dit_xl_2"], resolutions=[256, 512],
                                         oom=("none", 0), error=(EVIL_MODEL, 512), error_message=EVIL_ERROR)
            if r["metric"] in ("gmacs", "latency_ms", "mem_device_gib")]  # fewer plots: a faster test
    for r in rows:
        if r["model"] == EVIL_MODEL:
            r["method"] = 'timer "<em>bold</em>"'
            r["suite"] = "<u>suite</u>"
    env = dict(rf.ENVIRONMENT, gpu_name="<script>alert('env')</script>")
    d = rf.write_results(tmp_path / "evil", rows, environment=env)
    with registered_model(EVIL_MODEL, "dim"):  # a DiM model, so that its name reaches the comparison too
        html_path, pdf_path = build_report(d)
    text = html_path.read_text(encoding="utf-8")
    doc = parse(text)
    assert doc.script_tags == 0 and "<script" not in text.lower()
    assert not any(t in ("em", "u") for t, _ in doc.tags)  # no markup from the rows survived
    assert all(not a.get("src", "data:").startswith("http") for _, a in doc.tags)
    visible = "".join(doc.text)
    assert EVIL_MODEL in visible and EVIL_ERROR in visible  # shown literally, after unescaping
    assert "&lt;script&gt;alert(&quot;e&quot;)&lt;/script&gt;" in text
    assert "DiM vs DiT" in visible and f"{EVIL_MODEL} / dit_xl_2" in visible
    # the PDF draws the same strings as plain text ("$x$" must not turn into mathtext)
    if PDFTOTEXT:
        assert "$x$" in _pdf_text(pdf_path)


def test_a_very_long_field_is_truncated_and_the_report_says_so(tmp_path):
    """A 10 MB error, method and extra value (and environment field) used to stall the PDF for minutes: each is
    cut on loading, marked, and counted in the summary's notes."""
    huge = "Traceback line " * (10_000_000 // 15)
    rows = [r for r in rf.realistic_rows(models=["dim_h_2", "dit_xl_2"], resolutions=[256, 512])
            if r["metric"] in ("gmacs", "latency_ms")]
    rows[0]["method"] = huge
    rows[1].update(status="error", value=None, error=huge)
    rows[2]["extra"] = {"scan_backend": huge, huge: 1}
    env = dict(rf.ENVIRONMENT, command=huge)
    d = rf.write_results(tmp_path / "huge", rows, environment=env)
    html_path, pdf_path = build_report(d)
    text = " ".join(parse(html_path.read_text(encoding="utf-8")).text)
    marker = f"… [truncated, {len(huge):,} characters]"
    assert marker in text and huge[:MAX_CHARS] in text
    assert len(html_path.read_text(encoding="utf-8")) < 2_000_000  # not the 10 MB strings
    assert f"4 text field(s) of the results longer than {MAX_CHARS:,} characters" in text
    assert f"1 text field(s) of environment.json longer than {MAX_CHARS:,} characters" in text
    if PDFTOTEXT:
        assert "truncated" in _pdf_text(pdf_path)


# ---- declarations: rows and model families are the registries' --------------------------------------------


def _toy_metric(point, ctx):
    return []


TOY = Metric(
    name="toy",
    rows=(
        Row("toy_ms", "ms", "toy latency", per_pass=True, per_image_label="toy time per image",
            ratio=Ratio("toy time per image", "#123456")),
        Row("toy_predicted_ms", "ms", "predicted toy latency", predicted=True,
            ratio=Ratio("predicted toy time", "#654321")),
        Row("toy_count", "widgets", "toy widgets"),
    ),
    fn=_toy_metric,
    description="a metric a test registers for a while",
)


@pytest.fixture
def toy_metric():
    register_metric(TOY)
    try:
        yield TOY
    finally:
        unregister_metric(TOY.name)


def test_a_registered_metric_is_labelled_divided_and_compared_as_declared(tmp_path, toy_metric):
    """A metric the report has never heard of (a plugin's, here a test's) appears under its declared label,
    per image where the batch varies, and as a declared ratio measure, with no edit to the report."""
    rows = rf.varying_batch_rows()
    toy = []
    for r in rows:
        if r["metric"] == "latency_ms" and r["dtype"] == "bfloat16":
            per_image = r["value"] / r["batch"]
            toy += [dict(r, metric="toy_ms", method="toy timer", extra={}),
                    dict(r, metric="toy_predicted_ms", value=per_image, method="toy model", extra={}),
                    dict(r, metric="toy_count", value=3.0, unit="", method="toy counter", extra={})]
    res = data.load(rf.write_results(tmp_path / "toy", rows + toy))
    varies = data.Facet("forward", "cuda", "bfloat16", None)
    # per pass, so divided by the batch: the per-image times of the latency it was copied from
    got = res.values("toy_ms", varies)
    for model, per in rf.PER_IMAGE.items():
        assert [got[model][r] for r in rf.VARYING_BATCH] == pytest.approx(per["ms"])
    assert document.label("toy_ms", varies) == "toy time per image" and document.label("toy_ms") == "toy latency"
    assert document.label("toy_count", varies) == "toy widgets"  # not per pass: as measured
    assert res.unit("toy_count") == "widgets"  # no unit recorded: the declared one
    rep = content.build(res)
    by = {s.heading: s for s in rep.sections}
    captions = [t.caption for t in by["Full results"].tables]
    assert any(c.startswith("toy latency [ms] — cuda, bfloat16, batch varies with resolution") and
               "one pass over the whole batch" in c for c in captions)
    assert any(c.startswith("toy widgets [widgets]") for c in captions)
    notes = {r[0].text for r in by["Method notes"].tables[0].rows}
    assert {"toy latency (toy_ms)", "predicted toy latency (toy_predicted_ms)", "toy widgets (toy_count)"} <= notes
    # compared as declared: measure, colour, predicted; after the built-in measures (registration order)
    lines = analysis.ratio_lines(res)
    toy_lines = [ln for ln in lines if ln.metric == "toy_ms"]
    assert {ln.measure for ln in toy_lines} == {"toy time per image"} and toy_lines[0].colour == "#123456"
    latency = {ln.other: ln.ratio for ln in lines if ln.metric == "latency_ms" and ln.facet == varies}
    assert len(toy_lines) == len(latency) == 2
    for ln in toy_lines:
        assert ln.ratio == pytest.approx(latency[ln.other])
    assert [ln.metric for ln in lines].index("toy_ms") > [ln.metric for ln in lines].index("mem_allocated_gib")
    assert all(ln.predicted for ln in lines if ln.metric == "toy_predicted_ms")
    headline = rep.sections[0].highlights
    assert any(h.startswith("toy time per image (cuda, bfloat16): dim_h_2 / dit_xl_2 = ") for h in headline)
    # a predicted measure beside a measured one of the same unit (ms) stays out of the headline, as predicted
    # memory beside the allocator's; it is still in the ratio table
    assert not any(h.startswith("predicted toy time") for h in headline)
    ratio_rows = [[c.text for c in r] for r in by["DiM vs DiT and U-ViT"].tables[0].rows]
    assert any(r[1] == "predicted toy time" for r in ratio_rows)


def test_a_model_of_an_unregistered_family_is_grey_and_not_compared(tmp_path):
    """Families are the registry's, never the name's prefix: an unregistered "dim_..." model (results of another
    version) is listed last, drawn grey and compared with nothing; a plugin's baseline family is compared."""
    rows = [r for r in rf.realistic_rows(models=["uvit_h_2", "dim_custom_9", "dit_xl_2", "dim_h_2"],
                                         resolutions=[256, 512, 1024], oom=(), error=())
            if r["metric"] in ("gmacs", "latency_ms")]
    rows += [dict(r, model="toynet_b_2", point_key=r["point_key"].replace("dit_xl_2", "toynet_b_2"))
             for r in rows if r["model"] == "dit_xl_2"]
    toyfam = models.Family("toyfam", "ToyNet", "a family a test registers", models.Timestep(0, 999, True, "index"),
                           role="baseline", order=5)
    models.register_family(toyfam)
    try:
        with registered_model("toynet_b_2", "toyfam"):
            res = data.load(rf.write_results(tmp_path / "other", rows))
            assert res.models == ["dim_h_2", "dit_xl_2", "uvit_h_2", "toynet_b_2", "dim_custom_9"]
            styles = document.styles_for(res)
            assert (styles["dim_h_2"].colour, styles["dim_h_2"].marker) == ("#1f5fa8", "o")
            assert (styles["dit_xl_2"].colour, styles["dit_xl_2"].marker) == ("#d1521f", "s")
            assert (styles["uvit_h_2"].colour, styles["uvit_h_2"].marker) == ("#2e8b3a", "^")
            assert (styles["dim_custom_9"].colour, styles["dim_custom_9"].marker) == ("#555555", "D")
            assert styles["toynet_b_2"].marker not in ("o", "s", "^", "D")
            lines = analysis.ratio_lines(res)
            assert {(ln.subject, ln.other) for ln in lines} == {
                ("dim_h_2", "dit_xl_2"), ("dim_h_2", "uvit_h_2"), ("dim_h_2", "toynet_b_2")}
            rep = content.build(res)
    finally:
        models.registry.unregister_family("toyfam")
    by = {s.heading: s for s in rep.sections}
    ratio = by["DiM vs DiT, U-ViT and ToyNet"]
    assert [p.title for p in ratio.figures[0].panels] == ["DiM / DiT", "DiM / U-ViT", "DiM / ToyNet"]
    said = rep.sections[0].highlights
    assert not any("dim_custom_9 /" in h or "/ dim_custom_9" in h for h in said)
    # its rows record a scan backend: the note names it by its own name, not as DiM
    assert any(h.startswith("The timed rows of DiM and dim_custom_9 record the selective scan") for h in said)
    # still measured and shown: in the plots (grey) and the full tables
    speed = by["Speed: forward pass"].figures[0].panels[0]
    assert next(s for s in speed.series if s.label == "dim_custom_9").colour == "#555555"
    assert all(r[0].text != "dim_custom_9" or len(r) == 4 for t in by["Full results"].tables for r in t.rows)
    assert any(r[0].text == "dim_custom_9" for r in by["Full results"].tables[0].rows)


def test_the_environment_is_read_as_dimbench_writes_it():
    """gpu_name, driver, cpu, versions, git: {commit, dirty} (dimbench.environment.collect); keys it never writes
    (device_name, git_commit) are not read."""
    assert content.describe_device(rf.ENVIRONMENT, ["cuda"]) == "NVIDIA H100 80GB HBM3, driver 570.86"
    assert content.describe_device({"device_name": "some GPU"}, ["cuda"]) == ""
    assert content._git(rf.ENVIRONMENT) == ("0123456789abcdef0123", False)
    assert content._git({"git_commit": "abc"}) == ("", False)


# ---- folders that are partial, broken or missing --------------------------------------------------------


def test_missing_or_empty_folder_raises_with_the_path(tmp_path):
    assert issubclass(ReportError, UserError)  # the command line prints it as one line, exit status 2
    missing = tmp_path / "nope"
    with pytest.raises(ReportError, match="nope"):
        build_report(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReportError, match="no results.jsonl in .*empty"):
        build_report(empty)
    (empty / "results.jsonl").write_text("", encoding="utf-8")  # created, then the run died
    with pytest.raises(ReportError, match="holds no result rows"):
        build_report(empty)


def test_damaged_line_inside_the_file_is_a_clear_error(tmp_path):
    rows = rf.realistic_rows(models=["dim_h_2"], resolutions=[256])
    d = rf.write_results(tmp_path / "damaged", rows)
    lines = (d / "results.jsonl").read_text(encoding="utf-8").splitlines()
    lines[1] = lines[1][:20]
    (d / "results.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ReportError, match=r"results\.jsonl.*:2"):
        build_report(d)


def test_partial_folder_with_torn_line_and_no_dit(tmp_path):
    """An interrupted CPU run: one DiM model, counts only, last line cut off, no environment."""
    rows = [r for r in rf.realistic_rows(models=["dim_h_2", "uvit_h_2"], resolutions=[256, 512])
            if r["metric"] in ("params", "gmacs")]
    d = rf.write_results(tmp_path / "partial", rows, environment=None, torn_tail='{"suite": "smo')
    html_path, pdf_path = build_report(d, out_dir=tmp_path / "out")
    assert html_path.parent == tmp_path / "out" and pdf_path.exists()
    rep = content.build(data.load(d))
    headings = [s.heading for s in rep.sections]
    assert "DiM vs DiT" not in headings and "Speed: forward pass" not in headings
    assert "DiM vs U-ViT" in headings  # no DiT: DiM is compared with U-ViT alone
    summary = rep.sections[0]
    assert summary.highlights[0].startswith("GMACs per image: dim_h_2 / uvit_h_2 = ")
    alone = rf.write_results(tmp_path / "alone", [r for r in rows if r["model"] == "dim_h_2"], environment=None)
    assert "hold no DiM / DiT or U-ViT ratio" in content.build(data.load(alone)).sections[0].highlights[0]
    said = " ".join(summary.paragraphs)
    assert "half-written last line" in said
    assert "environment.json is missing" in said
    assert len(parse(html_path.read_text(encoding="utf-8")).tags) > 0


def test_rerun_rows_supersede_earlier_ones(tmp_path):
    rows = rf.realistic_rows(models=["dim_h_2", "dit_xl_2"], resolutions=[256, 512], oom=("dit_xl_2", 512))
    # resume re-ran the OOM point with success: the later row wins, and the report says rows were superseded
    fixed = dict(next(r for r in rows if r["model"] == "dit_xl_2" and r["resolution"] == 512
                      and r["metric"] == "latency_ms"), status="ok", value=5.0, error=None)
    d = rf.write_results(tmp_path / "rerun", rows + [fixed])
    res = data.load(d)
    facet = next(f for f in res.facets(["latency_ms"]))
    assert res.values("latency_ms", facet)["dit_xl_2"][512] == 5.0
    assert any("superseded" in n for n in res.notes)


def test_plots_are_split_per_dtype_and_batch_and_the_headline_stays_short(tmp_path):
    rows = []
    for dtype, batch in (("bfloat16", 1), ("float32", 8)):
        for r in rf.realistic_rows(models=["dim_h_2", "dit_xl_2"], resolutions=[256, 512, 1024, 2048]):
            if r["task"] == "count" and dtype != "bfloat16":
                continue  # counted once, at batch 1
            rows.append(dict(r, dtype=dtype, batch=batch, point_key=f"{r['model']}|r{r['resolution']}|{dtype}|{batch}"))
    rep = content.build(data.load(rf.write_results(tmp_path / "facets", rows)))
    by = {s.heading: s for s in rep.sections}
    titles = [f.title for f in by["Speed: forward pass"].figures]
    assert len(titles) == 2 and "bfloat16, batch 1" in titles[0] and "float32, batch 8" in titles[1]
    assert len(by["DiM vs DiT"].figures) == 2 and len(by["Memory"].figures) == 2
    assert len(by["Compute (GMACs)"].figures) == 1  # counts do not depend on dtype: one plot
    # one headline line per measure, the second dtype on the same line
    forward = [h for h in rep.sections[0].highlights if "forward time" in h]
    assert len(forward) == 1 and forward[0].startswith("forward time per image (cuda, bfloat16): ")
    assert "; float32: dim_h_2 / dit_xl_2 = " in forward[0]
    assert len(rep.sections[0].highlights) <= 6


# ---- a batch that varies with resolution (the suite fills the card at low resolution) --------------------


@pytest.fixture(scope="module")
def varying(tmp_path_factory):
    """The H200-shaped folder (batch 32 / 8 / 2 / 1 at 256 / 512 / 1024 / 1536 px), loaded and built (no render)."""
    d = rf.write_results(tmp_path_factory.mktemp("varying"), rf.varying_batch_rows())
    results = data.load(d)
    report = content.build(results)
    return {"results": results, "sections": {s.heading: s for s in report.sections}}


def _series(section, title_part: str, panel_title: str | None = None) -> dict[str, dict[int, float]]:
    """model -> resolution -> plotted value, of the first panel (or the one titled) of the first figure titled."""
    fig = next(f for f in section.figures if title_part in f.title)
    panel = next(p for p in fig.panels if panel_title is None or p.title == panel_title)
    return {s.label.split(" ")[0]: dict(zip(s.x, s.y, strict=True)) for s in panel.series}, panel, fig


def test_varying_batch_joins_every_resolution_in_one_per_image_curve(varying):
    res, by = varying["results"], varying["sections"]
    every = list(rf.VARYING_BATCH)
    bf16 = data.Facet("forward", "cuda", "bfloat16", None)
    assert res.facets(["gmacs"]) == [data.Facet(None, None, None, None)]  # counted: one facet, batch varies
    assert res.facets(["latency_ms"]) == [bf16, data.Facet("forward", "cuda", "float32", 32)]
    # GMACs per image: the whole batch's count / batch, one curve over all four resolutions
    gm, panel, fig = _series(by["Compute (GMACs)"], "GMACs per image")
    for model, per in rf.PER_IMAGE.items():
        assert list(gm[model]) == every and [gm[model][r] for r in every] == pytest.approx(per["gmacs"])
    assert panel.xnotes == {256: "b32", 512: "b8", 1024: "b2", 1536: "b1"}
    assert "batch varies with resolution" in fig.caption and "values are per image" in fig.caption
    # forward time per image = latency / batch (p10-p90 bars too); throughput (img/s) as recorded
    speed = by["Speed: forward pass"]
    ms, _, fig = _series(speed, "bfloat16", "forward time per image")
    for model, per in rf.PER_IMAGE.items():
        assert [ms[model][r] for r in every] == pytest.approx(per["ms"])
    dim_bars = next(s for s in fig.panels[0].series if s.label == "dim_h_2").spread
    assert dim_bars[0] == pytest.approx((30.2 * 0.99, 30.2 * 1.01))
    tput, _, _ = _series(speed, "bfloat16", "forward throughput")
    assert [tput["dit_xl_2"][r] for r in every] == pytest.approx([1000 / v for v in rf.PER_IMAGE["dit_xl_2"]["ms"]])
    # float32 was run at 256 px only: a table, not a plot of single dots
    assert len(speed.figures) == 1 and "measured at 256 px only" in speed.tables[0].caption
    # memory is for the whole batch: not divided, the batch named at each point
    mem, panel, fig = _series(by["Memory"], "bfloat16")
    assert [mem["dim_h_2"][r] for r in every] == pytest.approx(rf.PER_IMAGE["dim_h_2"]["gib"])
    assert panel.xnotes[256] == "b32" and "not per image" in fig.caption
    # ... and drawn: the batch is the second line of each resolution's tick label
    mfig = MplFigure()
    fig.draw(mfig)
    assert [t.get_text() for t in mfig.axes[0].get_xticklabels()] == ["256\nb32", "512\nb8", "1024\nb2", "1536\nb1"]


def test_varying_batch_ratios_cross_per_image_and_the_summary_stays_short(varying):
    res = varying["results"]
    dim, dit = rf.PER_IMAGE["dim_h_2"]["gmacs"], rf.PER_IMAGE["dit_xl_2"]["gmacs"]
    q = [a / b for a, b in zip(dim, dit, strict=True)]
    # independently: the log-log line between 1024 and 1536 px meets ratio 1 at
    x = 1024 * 1.5 ** (math.log(q[2]) / (math.log(q[2]) - math.log(q[3])))
    assert 1024 < x < 1536
    (gm,) = [ln for ln in analysis.ratio_lines(res) if ln.metric == "gmacs" and ln.other == "dit_xl_2"]
    assert gm.res == list(rf.VARYING_BATCH) and gm.ratio == pytest.approx(q)
    assert gm.batches == ["b32", "b8", "b2", "b1"]
    ((cx, direction),) = gm.cross
    assert cx == pytest.approx(x) and direction == "below"
    summary = varying["sections"]["Summary"]
    assert len(summary.highlights) <= 6
    lines = {h.split(":")[0]: h for h in summary.highlights}
    assert lines["GMACs per image"].startswith(
        f"GMACs per image: dim_h_2 / dit_xl_2 = {q[0]:.3g}× at 256 px → {q[3]:.3g}× at 1,536 px, "
        f"crossover ≈ {x:,.0f} px (log-interpolated; DiM cheaper above); dim_h_2 / uvit_h_2 = ")
    t = [a / b for a, b in zip(rf.PER_IMAGE["dim_h_2"]["ms"], rf.PER_IMAGE["dit_xl_2"]["ms"], strict=True)]
    fwd = lines["forward time per image (cuda, bfloat16)"]
    assert f"dim_h_2 / dit_xl_2 = {t[0]:.3g}× at 256 px → {t[3]:.3g}× at 1,536 px, no crossover in range" in fwd
    f32 = t[0] * rf.FLOAT32_SLOWDOWN["dim_h_2"] / rf.FLOAT32_SLOWDOWN["dit_xl_2"]
    assert f"; float32 at 256 px only: dim_h_2 / dit_xl_2 = {f32:.3g}×" in fwd
    # memory compares the whole batch (both models ran the same batch at each resolution)
    assert any(h.startswith("allocator peak memory (cuda, bfloat16; whole batch, not per image): ")
               for h in summary.highlights)
    assert any("chunked backend" in h and "kernel launches" in h for h in summary.highlights)
    assert "batch varies with resolution: 32 at 256 px, 8 at 512 px, 2 at 1024 px, 1 at 1536 px" in \
        summary.paragraphs[0]
    assert "float32 at 256 px only" in summary.paragraphs[0]
    # the ratio plot joins the four resolutions per measure, one panel per comparator, batches named
    ratio = varying["sections"]["DiM vs DiT and U-ViT"]
    (fig,) = ratio.figures
    assert [p.title for p in fig.panels] == ["DiM / DiT", "DiM / U-ViT"]
    gmacs_line = next(s for s in fig.panels[0].series if s.label == "GMACs per image")
    assert gmacs_line.x == list(rf.VARYING_BATCH) and gmacs_line.y == pytest.approx(q)
    assert fig.panels[0].xnotes == {256: "b32", 512: "b8", 1024: "b2", 1536: "b1"}


def test_a_batch_sweep_is_plotted_one_batch_at_a_time(tmp_path):
    """Several batches at each point: one facet per batch, values as measured; the headline takes the largest."""
    rows = [dict(r, batch=b, point_key=r["point_key"].replace("|b1|", f"|b{b}|"),
                 value=None if r["value"] is None else r["value"] * (b if r["metric"] in ("latency_ms", "gmacs")
                                                                      else 1))
            for b in (1, 4)
            for r in rf.realistic_rows(models=["dim_h_2", "dit_xl_2"], resolutions=[256, 512], oom=(), error=())
            if r["metric"] in ("gmacs", "latency_ms")]
    res = data.load(rf.write_results(tmp_path / "sweep", rows))
    assert res.facets(["latency_ms"]) == [data.Facet("forward", "cuda", "bfloat16", b) for b in (1, 4)]
    four = res.values("latency_ms", data.Facet("forward", "cuda", "bfloat16", 4))
    assert four["dim_h_2"][512] == pytest.approx(4 * (0.25 + rf.gmacs("dim_h_2", 512) / 300.0))
    rep = content.build(res)
    speed = next(s for s in rep.sections if s.heading == "Speed: forward pass")
    assert [f.title for f in speed.figures] == ["Speed: forward pass — cuda, bfloat16, batch 1",
                                                "Speed: forward pass — cuda, bfloat16, batch 4"]
    forward = next(h for h in rep.sections[0].highlights if h.startswith("forward time"))
    assert forward.startswith("forward time per image (cuda, bfloat16; batch 4, the largest of the sweep): ")


# ---- the analyses ---------------------------------------------------------------------------------------


def test_crossings_interpolate_in_log_space():
    res = [256, 512, 1024, 2048]
    # ratio = 1000 / res is a straight line in log-log: it crosses 1 at exactly 1000 px, going below.
    ((x, d),) = analysis.crossings(res, [1000 / r for r in res])
    assert x == pytest.approx(1000.0) and d == "below"
    assert analysis.crossings(res, [2.0, 1.5, 1.2, 1.1]) == []
    ((x, d),) = analysis.crossings(res, [0.5, 0.8, 1.6, 3.0])
    assert d == "above" and 512 < x < 1024


def test_growth_exponent_vs_tokens():
    res = [256, 512, 1024, 2048]
    fit, local = analysis.growth_exponent(res, [3.0 * r**3 for r in res])  # tokens ∝ r², so tokens^1.5
    assert fit == pytest.approx(1.5) and local == pytest.approx(1.5)
    assert analysis.growth_exponent([256], [1.0]) == (None, None)


# ---- quality and paper-table rows (future runs) ---------------------------------------------------------


def test_quality_and_published_sections_render_when_present(tmp_path):
    rows = [r for r in rf.realistic_rows(models=["dim_h_2", "dit_xl_2"], resolutions=[256, 512])
            if r["metric"] == "gmacs"]
    base = next(r for r in rows if r["model"] == "dit_xl_2" and r["resolution"] == 256 and r["metric"] == "gmacs")
    for step, loss in ((0, 1.0), (100, 0.5), (200, 0.3)):
        rows.append(dict(base, metric="train_loss", unit="loss", task="train_step", value=loss,
                         method="mean MSE over the logging interval", extra={"step": step}))
    rows.append(dict(base, metric="fid", unit="FID", task="sample", value=9.6, method="50k samples, ADM ref"))
    rows.append(dict(base, metric="published_gmacs", unit="GMAC", value=118.6, method="paper table",
                     extra={"source": "Peebles & Xie 2023, Table 4"}))
    img = np.zeros((8, 8, 3), dtype=np.float32)
    img[2:6, 2:6] = 1.0
    d = tmp_path / "q"
    d.mkdir()
    mpimg.imsave(d / "grid.png", img)
    rows.append(dict(base, metric="samples", unit="images", task="sample", value=16, extra={"path": "grid.png"}))
    rows.append(dict(base, model="dim_h_2", point_key="dim|s", metric="samples", unit="images", task="sample",
                     value=16, extra={"path": "../../etc/passwd.png"}))
    rf.write_results(d, rows)
    rep = content.build(data.load(d))
    by = {s.heading: s for s in rep.sections}
    assert "Quality: training loss" in by and "Quality: sample scores" in by and "Measured vs published" in by
    pub = [[c.text for c in r] for r in by["Measured vs published"].tables[0].rows]
    expected = (rf.gmacs("dit_xl_2", 256) - 118.6) / 118.6 * 100
    assert pub[0][0] == "dit_xl_2" and pub[0][5] == f"{expected:+.2f} %"
    assert "Peebles & Xie 2023, Table 4" in pub[0][6]
    samples = by["Quality: samples"]
    assert len(samples.figures) == 1
    refused = [[c.text for c in r] for r in samples.tables[0].rows]
    assert refused == [["dim_h_2 @ 256 px", "../../etc/passwd.png", "not a PNG inside the results folder"]]
    html_path, pdf_path = build_report(d)
    assert "Quality: training loss" in html_path.read_text(encoding="utf-8")
    if PDFTOTEXT:
        assert "Measured vs published" in _pdf_text(pdf_path)


# ---- end to end: the real smoke suite through the CLI ---------------------------------------------------


@pytest.mark.slow
def test_smoke_suite_run_builds_a_report_with_every_model_and_resolution(tmp_path):
    """`dimbench run suites/smoke.yaml` measures for real (a few minutes on a busy 2-core CPU) and builds the
    report at the end; `dimbench report` rebuilds it elsewhere. Both show every model and resolution run."""
    import sys

    import yaml

    root = Path(__file__).resolve().parents[1]
    suite = root / "suites" / "smoke.yaml"
    spec = yaml.safe_load(suite.read_text(encoding="utf-8"))
    out = tmp_path / "smoke"
    run = subprocess.run([sys.executable, "-m", "dimbench", "run", str(suite), "--out", str(out)], cwd=root,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    again = subprocess.run([sys.executable, "-m", "dimbench", "report", str(out), "-o", str(tmp_path / "again")],
                           cwd=root, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["model"] for r in rows} == set(spec["models"])
    assert {r["resolution"] for r in rows} == set(spec["resolutions"])
    for folder in (out, tmp_path / "again"):
        text = " ".join(parse((folder / "report.html").read_text(encoding="utf-8")).text)
        for m in spec["models"]:
            assert m in text
        for r in spec["resolutions"]:
            assert f"{r} px" in text
        assert "Compute (GMACs)" in text  # counts run on every machine
        if PDFINFO:
            assert _pdf_pages(folder / "report.pdf") >= 3


def test_variants_of_a_model_are_separate_series_named_by_their_options(tmp_path):
    """Points of one model built with other family options (DiM's pad layout) are their own series, compared like
    the model, instead of overwriting each other at a resolution."""
    rows = rf.realistic_rows(models=("dim_h_2", "dit_xl_2"), oom=None, error=None)
    cyclic = [{**r, "point_key": r["point_key"] + "|pad=cyclic", "value": r["value"] * 1.25}
              for r in rows if r["model"] == "dim_h_2" and r["metric"] == "gmacs"]
    results = data.load(rf.write_results(tmp_path, rows + cyclic))
    assert results.models == ["dim_h_2", "dim_h_2 [pad=cyclic]", "dit_xl_2"]
    facet = results.facets(["gmacs"])[0]
    plain, padded = results.values("gmacs", facet)["dim_h_2"], results.values("gmacs", facet)["dim_h_2 [pad=cyclic]"]
    assert padded == {r: v * 1.25 for r, v in plain.items()}
    pairs = {(ln.subject, ln.other) for ln in analysis.ratio_lines(results) if ln.metric == "gmacs"}
    assert pairs == {("dim_h_2", "dit_xl_2"), ("dim_h_2 [pad=cyclic]", "dit_xl_2")}


def test_pdf_table_columns_hold_their_widest_entry_unwrapped():
    """A table that fits the page keeps every cell on one line: a column's natural width holds its widest entry
    (numbers such as 3000 were split as "300" over "0" by the rounding of the cell padding)."""
    rows = [[document.Cell(m), document.Cell(px), document.Cell(step), document.Cell(loss)]
            for m, px, step, loss in (("dit_tiny_2", "8 px", "3000", "0.0977"), ("dim_tiny_2", "16 px", "800",
                                                                              "0.0351"))]
    for columns in (["model", "resolution", "step", "training loss"], ["m", "px", "samples", "l"]):
        block = pdf._table_block(document.Table("losses", columns, rows, [False, True, True, True]))
        assert sum(block.widths) <= pdf.WIDTH
        assert all(len(lines) == 1 for lines in block.header), block.header
        assert all(len(lines) == 1 for cells, _ in block.rows for lines in cells), block.rows
