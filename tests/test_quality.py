"""Quality checks end to end: a trained model beats an untrained one on the proxy metric; the train, quality and
upsample metrics in a suite (weak-to-strong, Upsample Guidance, sample grids, the report's stage table, resume
after a failure); ``dimbench train`` from the command line."""

from __future__ import annotations

import json

import pytest
import torch

import models
from conftest import cli_env, read_jsonl, run_cli
from dimbench.data import load_digits
from dimbench.quality.proxy import proxy_scores, train_classifier
from dimbench.training import TrainConfig, Trainer
from dimbench.training.sampling import SamplerSpec, class_labels, generate


@pytest.mark.slow
def test_a_few_hundred_steps_score_clearly_better_than_untrained(one_thread):
    from models.diffusion import make_schedule

    name = "dit_tiny_4"
    fam = models.family_of_model(name)
    train, test = load_digits(16, "train"), load_digits(16, "test")
    clf, _ = train_classifier(load_digits(32, "train"), steps=300)
    torch.manual_seed(0)
    untrained = models.create_model(name).eval()
    torch.manual_seed(0)
    trainer = Trainer(models.create_model(name), train,
                      TrainConfig(steps=300, batch=64, lr=2e-3, betas=(0.9, 0.999), weight_decay=0.0, warmup=30,
                                  ema=0.99, schedule=fam.diffusion.schedule, log_every=50, checkpoint_every=50),
                      timestep=fam.timestep)
    trainer.run()
    schedule = make_schedule(fam.diffusion.schedule)
    labels = class_labels(200, 10)
    spec = SamplerSpec("dpm_solver++", 20, 0.0)
    scores = {}
    for what, model in (("untrained", untrained), ("trained", trainer.ema)):
        images = generate(model.eval(), schedule=schedule, timestep=fam.timestep, spec=spec, labels=labels,
                          count=200, shape=(1, 16, 16), seed=0)
        scores[what] = proxy_scores(clf, test.x, images, labels)["fd"]
    # measured here: untrained ~800, trained ~250, real train vs real test digits ~7-40 (sample count)
    assert scores["trained"] < 0.6 * scores["untrained"], scores


def test_real_floor_is_the_mean_of_balanced_real_subsets(one_thread, monkeypatch):
    """fd_proxy_real: ``draws`` random subsets of real training digits (every class equally often, as the samples)
    against the held-out digits; their mean, reproducible from the seed, and far below what noise scores."""
    from dimbench.metrics import quality

    clf, _ = train_classifier(load_digits(32, "train"), steps=30)
    train = load_digits(8, "train")
    seen = []
    import dimbench.quality.proxy as proxy

    original = proxy.proxy_scores

    def spy(clf_, real, fake, labels=None):
        # which training digits were drawn: match each fake image to its row in the train split
        rows = (fake.flatten(1)[:, None, :] == train.x.flatten(1)[None]).all(-1).float().argmax(1)
        seen.append(torch.bincount(train.labels[rows], minlength=10))
        return original(clf_, real, fake, labels)

    monkeypatch.setattr(proxy, "proxy_scores", spy)
    mean, draws = quality.real_floor(clf, 8, 50, 3, seed=1)
    assert len(draws) == 3 and mean == pytest.approx(sum(draws) / 3) and len(set(draws)) == 3
    assert all(torch.equal(counts, torch.full((10,), 5)) for counts in seen), seen
    assert quality.real_floor(clf, 8, 50, 3, seed=1) == (mean, draws)  # cached, and the same draw again
    quality._FLOORS.clear()
    assert quality.real_floor(clf, 8, 50, 3, seed=1)[1] == draws  # recomputed from the seed
    noise = original(clf, load_digits(8, "test").x, torch.rand(50, 1, 8, 8) * 2 - 1)["fd"]
    assert mean < 0.25 * noise


QUALITY_SUITE = """\
name: quality_test
models: [dim_tiny_4, dit_tiny_4]
resolutions: [16, 32]
batch_sizes: [16]
metrics: [train, quality, upsample]
limits:
  upsample: {resolutions: [16]}
options:
  train: {steps: 10, lr: 0.001, warmup: 2, ema: 0.9, ema_warmup: true, seeds: 2, log_every: 5, checkpoint_every: 5,
          heldout_every: 5, weak_to_strong_from: 16, finetune_steps: 5, finetune_warmup: 1}
  quality: {samples: 20, sampler: dpm_solver++, steps: 3, guidance: 1.0, classifier_steps: 30, floor_draws: 2}
  upsample: {samples: 10, steps: 3, guidance: 1.0, classifier_steps: 30, floor_draws: 2}
"""


@pytest.mark.slow
def test_quality_suite_end_to_end(tmp_path, write_suite):
    suite = write_suite(QUALITY_SUITE)
    out = tmp_path / "run"
    # the first run's quality metric at 16 px fails; training there is complete and must not be redone
    env = cli_env(DIMBENCH_INJECT_FAULT="r16|b16|float32|cpu#quality=error")
    first = run_cli("run", str(suite), "--out", str(out), "--no-report", env=env, timeout=600)
    assert first.returncode == 0, first.stderr
    rows = read_jsonl(out / "results.jsonl")
    assert [r["status"] for r in rows if r["metric"] == "fd_proxy" and r["resolution"] == 16] == ["error"] * 2
    losses_before = [r for r in rows if r["metric"] == "train_loss"]

    second = run_cli("run", str(suite), "--out", str(out), "--retry-errors", timeout=600)
    assert second.returncode == 0, second.stderr
    rows = read_jsonl(out / "results.jsonl")
    latest = {(r["point_key"], r["metric"], r["extra"].get("step")): r for r in rows}
    # training was not repeated: the loss rows are those of the first run, once each
    assert [r for r in rows if r["metric"] == "train_loss"] == losses_before
    assert sorted((r["model"], r["resolution"], r["extra"]["step"]) for r in losses_before) == sorted(
        (m, res, step) for m in ("dim_tiny_4", "dit_tiny_4") for res, step in ((16, 5), (16, 10), (32, 5)))

    def row(res: int, metric: str, model: str = "dit_tiny_4") -> dict:
        return next(r for (k, m, _), r in latest.items() if m == metric and k.startswith(f"{model}|r{res}|"))

    # DiM above its trained grid: cyclic pads, in the weak-to-strong fine-tune and in training-free upsampling
    assert "pad_layout=cyclic" in row(32, "train_loss_final", "dim_tiny_4")["method"]
    assert row(16, "fd_proxy_up3_ug", "dim_tiny_4")["extra"]["pad_layout"] == "cyclic"

    assert row(16, "fd_proxy")["status"] == "ok" and row(16, "fd_proxy_untrained")["status"] == "ok"
    # two seeds at the from-scratch points: the score is their mean, each seed's value and the spread beside it
    trained = row(16, "fd_proxy")
    assert trained["extra"]["seeds"] == [0, 1] and set(trained["extra"]["per_seed"]) == {"0", "1"}
    assert trained["value"] == pytest.approx(sum(trained["extra"]["per_seed"].values()) / 2)
    assert trained["extra"]["min"] <= trained["value"] <= trained["extra"]["max"]
    assert "mean over 2 seeds' models" in trained["method"]
    key = trained["point_key"]
    assert (out / "state" / next(p.name for p in (out / "state").iterdir() if p.name.startswith("dit_tiny_4_r16"))
            / "train" / "checkpoint-seed1.pt").is_file()
    # the floor of real digits under the same sample count, and every distance as a multiple of it
    floor = row(16, "fd_proxy_real")
    assert floor["status"] == "ok" and len(floor["extra"]["per_draw"]) == 2 and floor["extra"]["n_fake"] == 20
    assert trained["extra"]["fd_floor"] == pytest.approx(floor["value"])
    assert trained["extra"]["x_floor"] == pytest.approx(trained["value"] / floor["value"])
    assert 50 < row(16, "proxy_acc_real")["value"] <= 100
    # training cost rows, and the held-out loss of the first seed
    assert row(16, "train_time_s")["extra"]["per_seed"].keys() == {"0", "1"}
    # the timed training rows name the scan backend that ran, and why (no silent fallback)
    dim_time = row(16, "train_time_s", "dim_tiny_4")["extra"]
    assert (dim_time["scan_backend"], dim_time["scan_backend_why"]) == models.scan.auto_backend("cpu")
    assert "scan_backend" not in row(16, "train_time_s")["extra"]
    tflop = row(16, "train_tflop")
    assert tflop["value"] == pytest.approx(3 * tflop["extra"]["forward_gflops_per_image"] * 1e9 * 10 * 16 / 1e12)
    heldout = sorted(r["extra"]["step"] for (k, m, _), r in latest.items() if m == "train_loss_heldout" and k == key)
    assert heldout == [5, 10]
    grid = row(16, "samples")["extra"]["grid"]
    assert grid == {"rows": "class", "classes": list(range(10)), "per_class": 2, "tile_px": 16}
    w2s = row(32, "fd_proxy")
    assert w2s["status"] == "ok" and w2s["extra"]["image_px"] == 32 and "weak-to-strong" in w2s["extra"]["stage"]
    skipped = row(32, "fd_proxy_untrained")  # a fine-tune starts from the trained 16 px model, not random weights
    assert skipped["status"] == "skipped" and "fd_proxy_up2" in skipped["error"]
    assert "weak-to-strong" in row(32, "train_loss_final")["method"]
    for m in (2, 3):
        for ug in ("", "_ug"):
            r = row(16, f"fd_proxy_up{m}{ug}")
            assert r["status"] == "ok" and r["extra"]["image_px"] == 16 * m
            assert r["extra"]["upsample_guidance"] == bool(ug)
            assert r["extra"]["sampler"] == "dpm_solver" and r["extra"]["guidance_w"] == 2.0
            grid = row(16, f"samples_up{m}{ug}")
            assert (out / grid["extra"]["path"]).is_file()
    html = (out / "report.html").read_text()
    assert "Proxy quality per model and stage" in html and "NOT the standard FID" in html
    assert "weak-to-strong" in html and "Training and held-out loss" in html and "real digits" in html
    assert "does NOT meet the bar" in html  # ten steps do not learn the digits, and the report says so


@pytest.mark.slow
def test_dimbench_train_command_resumes_and_reports(tmp_path):
    out = tmp_path / "train"
    args = ["train", "uvit_tiny_4", "--batch", "8", "--warmup", "2", "--log-every", "5", "--checkpoint-every", "5",
            "--out", str(out)]
    first = run_cli(*args, "--steps", "10")
    assert first.returncode == 0, first.stderr
    assert "to step 10 (from 0)" in first.stdout
    second = run_cli(*args, "--steps", "15")
    assert second.returncode == 0, second.stderr
    assert "to step 15 (from 10)" in second.stdout
    rows = read_jsonl(out / "results.jsonl")
    steps = [r["extra"]["step"] for r in rows if r["metric"] == "train_loss"]
    assert steps == [5, 10, 15]
    assert {r["metric"] for r in rows} == {"train_loss", "train_loss_final", "train_images_per_s"}
    assert all(json.dumps(r) for r in rows) and (out / "checkpoint.pt").is_file()


@pytest.mark.slow
def test_dimbench_train_refuses_to_resume_another_run(tmp_path):
    out = tmp_path / "train"
    args = ["train", "dit_tiny_4", "--steps", "2", "--warmup", "1", "--log-every", "1", "--checkpoint-every", "1",
            "--out", str(out)]
    assert run_cli(*args, "--batch", "4").returncode == 0
    other = run_cli(*args, "--batch", "8")
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert "checkpoint.pt: cannot continue this run" in other.stderr and "batch" in other.stderr


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--data", "/nonexistent/images"], "/nonexistent/images"),
    (["--init-from", "/nonexistent/ckpt.pt"], "--init-from /nonexistent/ckpt.pt: no such file"),
    (["--batch", "6", "--grad-accum", "4"], "does not split"),
])
def test_dimbench_train_bad_input_is_one_clear_line(tmp_path, args, message):
    result = run_cli("train", "dit_tiny_4", "--steps", "1", "--out", str(tmp_path / "x"), *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_dimbench_train_unknown_model(tmp_path):
    result = run_cli("train", "no_such_model", "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "unknown model 'no_such_model'" in result.stderr


def test_sampler_must_suit_the_schedule():
    from models.diffusion import make_schedule

    model = models.create_model("uvit_tiny_4").eval()
    kw = dict(timestep=models.family("uvit").timestep, labels=None, count=1, shape=(1, 16, 16), seed=0)
    with pytest.raises(ValueError, match="euler_maruyama needs the continuous VP-SDE"):
        generate(model, schedule=make_schedule("sd_scaled_linear"), spec=SamplerSpec("euler_maruyama", 2, 0), **kw)
    with pytest.raises(ValueError, match="ddim steps a discrete schedule"):
        generate(model, schedule=make_schedule("vpsde"), spec=SamplerSpec("ddim", 2, 0), **kw)


def test_dit_guides_its_first_three_latent_channels(monkeypatch):
    """baselines.md: DiT applies guidance to the first 3 of its 4 latent channels; on 1-channel digits, to all."""
    import models.diffusion as diffusion
    from models.diffusion import make_schedule

    seen = []
    real = diffusion.model_eps

    def spy(*args, **kwargs):
        seen.append(kwargs.get("guidance"))
        return real(*args, **kwargs)

    monkeypatch.setattr(diffusion, "model_eps", spy)
    for channels in (4, 1):
        model = models.create_model("dit_tiny_4", in_channels=channels).eval()
        generate(model, schedule=make_schedule("linear"), timestep=models.family("dit").timestep,
                 spec=SamplerSpec("ddim", 2, 0.5), labels=class_labels(2, 10), count=2,
                 shape=(channels, 16, 16), seed=0)
    assert [g.channels for g in seen] == [3, None] and all(g.s == 0.5 for g in seen)


def test_sampler_spec_states_both_guidance_conventions():
    text = SamplerSpec("dpm_solver++", 20, 0.5).describe()
    assert "20 steps" in text and "0.5" in text and "1.5" in text
    with pytest.raises(ValueError, match="unknown sampler"):
        SamplerSpec("heun", 10, 0.0)
