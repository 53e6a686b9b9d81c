"""The quality report as a reader checks it: the reference rows (real-digit floor, the classifier on real digits)
lead the table, every stage's distance is also a multiple of the floor, seeds give a mean and a spread, families
whose seed ranges overlap are said to be within each other's spread, and each family's trained stage gets a
verdict against the bar (a failed run is obvious) and its training cost beside DiT's."""

from __future__ import annotations

import report_fixtures as rf

from dimbench.report import content, data, quality_scores

FLOOR = 14.0
COMMON = {"sampler": "dpm_solver++", "sampler_steps": 20, "guidance_s": 0.5, "guidance_w": 1.5, "image_px": 8,
          "n_fake": 200, "n_real": 360}


def _rows(model: str, fd: tuple[float, float, float], acc: float, untrained: float, rate: float, gflops: float):
    """A trained stage of three seeds (mean, min, max of the distance), its untrained stage, and training rows."""
    def row(metric, value, unit, extra, task="evaluate"):
        return rf._row(model, 8, metric, value, unit, "m", task, extra=extra, batch=32, dtype="float32",
                       device="cpu", suite="quality_small")

    mean, lo, hi = fd
    seeds = {"seeds": [0, 1, 2]}
    trained = {**COMMON, **seeds, "stage": "trained (1000 steps, EMA weights)", "per_seed": {"0": lo, "1": mean,
               "2": hi}, "sd": (hi - lo) / 2, "min": lo, "max": hi, "fd_floor": FLOOR, "x_floor": mean / FLOOR}
    steps = {"steps": 1000, **seeds, "stage": "from scratch"}
    return [
        row("fd_proxy_real", FLOOR, "FD", {"stage": "real digits (reference)", "image_px": 8, "n_fake": 200,
                                           "per_draw": [13.0, 15.0], "sd": 1.41}),
        row("proxy_acc_real", 97.5, "%", {"stage": "real digits (reference)", "image_px": 8}),
        row("fd_proxy", mean, "FD", trained),
        row("proxy_acc", acc, "%", {**COMMON, **seeds, "stage": trained["stage"], "sd": 0.5}),
        row("fd_proxy_untrained", untrained, "FD", {**COMMON, "seeds": [0], "stage": "untrained (initial weights)",
                                                    "fd_floor": FLOOR, "x_floor": untrained / FLOOR}),
        row("proxy_acc_untrained", 10.0, "%", {**COMMON, "stage": "untrained (initial weights)"}),
        row("train_time_s", 32000 / rate, "s", {**steps, "sd": 1.0}, task="train"),
        row("train_images_per_s", rate, "img/s", steps, task="train"),
        row("train_tflop", 3 * gflops * 32000 / 1e3, "TFLOP", {**steps, "forward_gflops_per_image": gflops},
            task="train"),
    ]


def _results(tmp_path):
    rows = (_rows("dim_tiny_2", (30.0, 28.0, 32.0), 97.0, 250.0, 250.0, 0.022)
            + _rows("dit_tiny_2", (40.0, 36.0, 44.0), 95.0, 260.0, 1000.0, 0.008)
            + _rows("uvit_tiny_2", (31.0, 29.0, 33.0), 96.0, 255.0, 1100.0, 0.009))
    return data.load(rf.write_results(tmp_path / "q", rows))


def test_reference_rows_lead_and_every_stage_is_a_multiple_of_the_floor(tmp_path):
    table = quality_scores.stage_table(_results(tmp_path))
    cells = [[c.text for c in row] for row in table.rows]
    assert cells[0][:2] == ["real digits", "floor: 200 real training digits vs the held-out ones (mean of 2 draws)"]
    assert cells[0][4:7] == ["14.0 ± 1.4", "1.00", "97.5 (held-out digits)"]
    dim = [c for c in cells if c[0] == "dim_tiny_2"]
    assert [c[1] for c in dim] == ["untrained (initial weights)", "trained (1000 steps, EMA weights)"]
    assert dim[1][3:7] == ["3", "30.0 ± 2.0", "2.14", "97.0 ± 0.5"]
    assert dim[0][5] == f"{250 / FLOOR:.2f}"


def test_verdicts_make_a_failed_family_obvious_and_compare_spreads_and_costs(tmp_path):
    lines = quality_scores.verdicts(_results(tmp_path))
    text = "\n".join(lines)
    assert lines[0].startswith("Reference: real digits score a proxy FD of 14.0 at 8 px (200 samples)")
    assert "DiM (dim_tiny_2) trained at 8 px over 3 seeds: learns" in text
    assert "U-ViT (uvit_tiny_2) trained at 8 px over 3 seeds: learns" in text
    dit = next(ln for ln in lines if ln.startswith("DiT (dit_tiny_2)"))
    assert "does NOT meet the bar" in dit and "FD 2.86x the floor (above 2.5x)" in dit
    within = next(ln for ln in lines if ln.startswith("Within each other's spread"))
    assert "DiM (dim_tiny_2) 2.00–2.29x and U-ViT (uvit_tiny_2) 2.07–2.36x" in within
    apart = next(ln for ln in lines if ln.startswith("Apart beyond"))
    assert "DiM (dim_tiny_2)" in apart and "DiT (dit_tiny_2)" in apart and "U-ViT" in apart
    cost = next(ln for ln in lines if ln.startswith("Per training image, relative to DiT (dit_tiny_2)"))
    assert "DiM (dim_tiny_2) 4.00x the time and 2.75x the FLOPs" in cost


def test_training_table_and_the_section(tmp_path):
    results = _results(tmp_path)
    table = quality_scores.training_table(results)
    dim = next([c.text for c in r] for r in table.rows if r[0].text == "dim_tiny_2")
    assert dim[1] == "DiM" and dim[4:10] == ["1000 x 32", "3", "128.0 ± 1.0", "250", "2.11", "22.0"]
    sections = {s.heading: s for s in content.build(results).sections}
    section = sections["Quality: sample scores"]
    assert section.highlights == quality_scores.verdicts(results)
    # the summary opens with whether each family learned
    verdicts = [ln for ln in sections["Summary"].highlights if " trained at 8 px " in ln]
    assert len(verdicts) == 3 and "does NOT meet the bar" in verdicts[1]
    assert section.tables[0].caption.startswith("Proxy quality per model and stage")
    assert section.tables[1].caption.startswith("What each model's training cost to reach its score")


def test_scan_note_says_why_a_fallback_backend_ran(tmp_path):
    """A DiM trained where the C kernel could not be built ran the chunked scan: the report names it and says why;
    the backend auto picks first is named without a reason."""
    why = ("auto chose chunked on cpu: pure PyTorch, runs on any device; cpu_fused unavailable (the C kernel could "
           "not be built or loaded: RuntimeError: no C compiler (cc))")
    rows = [rf._row(model, 8, "train_images_per_s", 900.0, "img/s", "m", "train", batch=32, dtype="float32",
                    device="cpu", extra={"scan_backend": backend, "scan_backend_why": reason})
            for model, backend, reason in (("dim_tiny_2", "chunked", why),
                                           ("dim_tiny_4", "cpu_fused", "auto chose cpu_fused on cpu: fused C kernel "
                                            "built with cc (-mavx2 -mfma)"))]
    note = content.scan_note(data.load(rf.write_results(tmp_path / "s", rows)))
    assert f"the chunked backend: {content.SCAN_BACKENDS['chunked']} ({why})" in note
    assert note.endswith(f"the cpu_fused backend: {content.SCAN_BACKENDS['cpu_fused']}.")


def test_a_quality_run_has_no_timing_comparison_line_and_a_lone_timing_says_what_it_lacks(tmp_path):
    """The summary's ratio headline speaks only of measures that were measured: a quality suite (no timing, no
    count) gets no "no DiM comparison" line though DiM and DiT share 8 px; DiM's latency without a DiT or U-ViT
    latency is named as the missing comparison."""
    assert content.headline(_results(tmp_path)) == []
    latency = rf._row("dim_tiny_2", 8, "latency_ms", 5.0, "ms", "m", "latency", batch=32, dtype="float32",
                      device="cpu", suite="quality_small")
    lone = data.load(rf.write_results(tmp_path / "t", [latency]))
    assert content.headline(lone) == [
        "No DiM model shares a resolution with a DiT or U-ViT model with a successful measurement of latency_ms, "
        "so these results hold no DiM / DiT or U-ViT ratio."]
