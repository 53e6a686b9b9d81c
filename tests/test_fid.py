"""FID pipeline, offline, on the CPU: an Inception network of torch-fidelity's architecture with random weights
saved by the test, a tiny diffusers VAE with random weights saved to a folder, reference statistics written by
the test (ADM and U-ViT key layouts) and a tiny latent DiT checkpoint; rows through a real `dimbench run`, resume
after a kill, the scores against torch-fidelity's own functions, and the clear messages for missing or wrong
files."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import cli_env, read_jsonl, run_cli

pytest.importorskip("torch_fidelity")
pytest.importorskip("diffusers")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Files a user would provide, made small and random: Inception weights, VAE folder, checkpoint, references."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe
    from diffusers import AutoencoderKL

    import models
    from dimbench.fid import inception

    root = tmp_path_factory.mktemp("fid_assets")
    torch.manual_seed(0)
    cls = fe.FeatureExtractorInceptionV3
    with pytest.MonkeyPatch.context() as mp:  # build the architecture without any weights to load
        mp.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
        mp.setattr(cls, "load_state_dict", lambda self, *a, **k: None)
        net = cls(inception.EXTRACTOR_NAME, [inception.POOL])
    for mod in net.modules():  # variance-keeping init, so features of a random net are not vanishingly small
        if isinstance(mod, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
    weights = root / "inception.pth"
    torch.save(net.state_dict(), weights)

    vae_dir = root / "vae"
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 32), layers_per_block=1,
                        latent_channels=4, norm_num_groups=32, sample_size=16)
    vae.save_pretrained(vae_dir)

    with torch.device("cpu"):
        model = models.create_model("dit_tiny_4", input_size=8, in_channels=4, num_classes=10)
    ckpt = root / "dit_tiny_latent.pt"
    models.save_checkpoint(model, ckpt)

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(24, 16, 16, 3), dtype=np.uint8)
    adm = root / "VIRTUAL_tiny_labeled.npz"  # ADM's layout: images, plus statistics (here of random features)
    np.savez(adm, arr_0=images, mu=rng.normal(size=2048), sigma=np.eye(2048) * 0.5,
             mu_s=np.zeros(3), sigma_s=np.eye(3))
    adm_images_only = root / "adm_images_only.npz"
    np.savez(adm_images_only, arr_0=images)
    uvit = root / "fid_stats_tiny.npz"
    np.savez(uvit, mu=rng.normal(size=2048), sigma=np.eye(2048))
    return {"root": root, "weights": weights, "sha": _sha256(weights), "vae": vae_dir, "ckpt": ckpt, "adm": adm,
            "adm_images_only": adm_images_only, "uvit": uvit, "images": images}


def _suite(assets, out: Path, *, reference=None, weights=None, sha=None, samples=16, batch=8, extra="") -> Path:
    text = f"""\
    name: fid_tiny
    models: [{{name: dit_tiny_4, checkpoint: {assets['ckpt']}}}]
    resolutions: [8]
    metrics: [fid]
    device: cpu
    options:
      fid:
        inception_weights: {weights or assets['weights']}
        inception_sha256: {sha or assets['sha']}
        reference: {reference or assets['adm']}
        vae: {assets['vae']}
        samples: {samples}
        batch: {batch}
        sampler: dpm_solver++
        steps: 3
        guidance: 0.4
    {extra}"""
    path = out / "suite.yaml"
    path.write_text(textwrap.dedent(text))
    return path


# ----------------------------------------------------------------------------------------------- scores
@pytest.mark.slow
def test_scores_equal_torch_fidelity_on_identical_features():
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    from dimbench.fid import scores
    from dimbench.quality.frechet import gaussian_stats

    rng = np.random.default_rng(1)
    fake = rng.normal(size=(300, 64)).astype(np.float32)
    real = (rng.normal(size=(250, 64)) * 1.2 + 0.3).astype(np.float32)
    logits = rng.normal(size=(300, 1008)).astype(np.float32)
    ref = fid_features_to_statistics(torch.from_numpy(real.astype(np.float64)))
    theirs = fid_statistics_to_metric(fid_features_to_statistics(torch.from_numpy(fake.astype(np.float64))), ref,
                                      verbose=False)[KEY_METRIC_FID]
    mu, sigma = gaussian_stats(real)
    ours = scores.all_scores(fake, logits, mu, sigma, real)
    assert ours["fid"] == pytest.approx(theirs, rel=1e-9, abs=1e-9)
    # FID of a set against itself is 0 within rounding.
    assert scores.fid(fake, *gaussian_stats(fake)) == pytest.approx(0.0, abs=1e-9)
    # IS, KID, precision/recall are torch-fidelity's own functions on the same features.
    isc = isc_features_to_metric(torch.from_numpy(logits), 10, True, 2020)
    assert ours["is_mean"] == isc["inception_score_mean"] and ours["is_std"] == isc["inception_score_std"]
    kid = kid_features_to_metric(torch.from_numpy(fake), torch.from_numpy(real), kid_subsets=100,
                                 kid_subset_size=250, kid_kernel="poly", kid_kernel_poly_degree=3,
                                 kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1, rng_seed=2020, verbose=False)
    assert ours["kid_mean"] == kid["kernel_inception_distance_mean"]
    # Precision/recall: dimbench runs torch-fidelity's memory-saving path (blocks of rows), which gives what its
    # default path (full N x N matrices) gives; here with blocks of 64 rows, so several blocks are reduced.
    prc = prc_features_to_metric(torch.from_numpy(fake), torch.from_numpy(real), prc_neighborhood=3,
                                 prc_batch_size=10000, save_cpu_ram=False, verbose=False)
    assert (ours["precision"], ours["recall"]) == (prc["precision"], prc["recall"])
    assert scores.precision_recall(fake, real, batch=64) == (prc["precision"], prc["recall"])


def test_inception_resize_modes_match_their_reference_implementations(assets):
    """tf1 is torch-fidelity's own path (its dataset loop and network); torch is pytorch-fid's preprocessing,
    written out here (ToTensor: x / 255; F.interpolate to 299 px, bilinear, align_corners=False; 2x - 1), fed to the
    network's first layer by a hook so that the network's own forward runs the rest. The two differ."""
    import torch.nn.functional as F
    from torch_fidelity.utils import get_featuresdict_from_dataset

    from dimbench.fid import inception

    net, _ = inception.load_extractor(assets["weights"], assets["sha"])
    images = torch.from_numpy(assets["images"][:4]).permute(0, 3, 1, 2).contiguous()  # 16 px, uint8

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return images[i]

    theirs = get_featuresdict_from_dataset(Images(), net, batch_size=3, cuda=False, save_cpu_ram=True, verbose=False)
    tf1_pool, tf1_logits = inception.extract(net, images, batch=3, resize="tf1")
    assert np.array_equal(tf1_pool, theirs[inception.POOL].numpy())
    assert np.array_equal(tf1_logits, theirs[inception.LOGITS].numpy())

    x = images.float() / 255.0
    x = 2.0 * F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1.0
    hook = net.Conv2d_1a_3x3.register_forward_pre_hook(lambda module, args: (x,))
    try:
        ref_pool, ref_logits = net(torch.zeros(4, 3, 299, 299, dtype=torch.uint8))
    finally:
        hook.remove()
    pool, logits = inception.extract(net, images, batch=4, resize="torch")
    assert np.allclose(pool, ref_pool.numpy(), rtol=1e-5, atol=1e-6)
    assert np.allclose(logits, ref_logits.numpy(), rtol=1e-5, atol=1e-5)
    assert np.abs(pool - tf1_pool).max() > 1e-2 * np.abs(tf1_pool).max()  # the resize modes differ
    with pytest.raises(ValueError, match="inception resize must be one of tf1, torch"):
        inception.extract(net, images, resize="antialias")


def test_reference_layouts(assets, tmp_path):
    from dimbench.errors import UserError
    from dimbench.fid.reference import read_reference

    adm = read_reference(assets["adm"])
    assert adm.layout == "adm" and adm.mu.shape == (2048,) and adm.images.shape == (24, 16, 16, 3)
    only = read_reference(assets["adm_images_only"])
    assert only.mu is None and only.count == 24
    uvit = read_reference(assets["uvit"])
    assert uvit.layout == "uvit" and uvit.images is None and uvit.sigma.shape == (2048, 2048)
    bad = tmp_path / "bad.npz"
    np.savez(bad, mu=np.zeros(4))
    with pytest.raises(UserError, match=r"bad\.npz.*no key 'sigma'"):
        read_reference(bad)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, mu=np.array([{"a": 1}], dtype=object), sigma=np.eye(1))
    with pytest.raises(UserError, match="pickled.npz"):
        read_reference(pickled)
    with pytest.raises(UserError, match="missing.npz: no such file"):
        read_reference(tmp_path / "missing.npz")


# ----------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def resumed(assets, tmp_path_factory):
    """A `dimbench run` killed after its first chunk, then resumed: (out folder, killed run, resumed run). The
    torchrun test samples the same images uninterrupted and compares the features."""
    tmp_path = tmp_path_factory.mktemp("fid_resumed")
    suite = _suite(assets, tmp_path)
    out = tmp_path / "out"
    killed = run_cli("run", str(suite), "--out", str(out), "--no-report",
                     env=cli_env(DIMBENCH_FID_KILL_AFTER_CHUNKS="1"))
    chunks_after_kill = sorted(p.name for p in out.glob("state/*/fid/chunk_*.npz"))
    rows_after_kill = read_jsonl(out / "results.jsonl") if (out / "results.jsonl").exists() else []
    done = run_cli("run", str(suite), "--out", str(out), "--retry-errors", "--no-report")
    return out, killed, chunks_after_kill, rows_after_kill, done


@pytest.mark.slow
def test_run_writes_rows_and_resumes_after_a_kill(assets, resumed):
    out, killed, chunks_after_kill, rows_after_kill, resumed = resumed
    assert killed.returncode == 0, killed.stderr  # the runner records the crash as an error row and goes on
    state = next((out / "state").glob("*/fid"))
    assert chunks_after_kill == ["chunk_000000.npz"]
    assert all(r["status"] == "error" for r in rows_after_kill if r["metric"] == "fid")

    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    rows = {r["metric"]: r for r in read_jsonl(out / "results.jsonl") if r["status"] != "error"}
    fid = rows["fid"]
    assert fid["status"] == "ok" and fid["value"] >= 0, fid
    assert fid["extra"]["resumed_images"] == 8 and fid["extra"]["generated_this_run"] == 8  # nothing redone
    assert fid["extra"]["n_fake"] == 16 and fid["extra"]["checkpoint_sha256"] == _sha256(assets["ckpt"])
    for word in ("DPM-Solver++", "3 steps", "s = 0.4", "on the first 3 channels", "16 samples, network in float32 "
                 "on the CPU (tf32 asked", "chunks of 8 images", "seed 0", "labels uniformly random",
                 str(assets["ckpt"]), assets["sha"], "inception.pth", "VIRTUAL_tiny_labeled.npz",
                 "Inception resize tf1: torch-fidelity's TF1-style bilinear", "the dit protocol",
                 "not comparable with a published FID-50K: checkpoint: SHA-256"):
        assert word in fid["method"], word
    extra = fid["extra"]
    assert extra["labels"] == "random" and extra["random_weights"] is False and extra["n_fake"] == 16
    assert extra["checkpoint"] == str(assets["ckpt"]) and extra["comparable_to_published"] is False
    assert extra["not_comparable"][0].startswith("checkpoint: SHA-256 " + _sha256(assets["ckpt"]))
    assert (extra["inception_resize"], extra["precision"], extra["precision_ran"]) == ("tf1", "tf32", "float32")
    assert (extra["vae_precision"], extra["vae_precision_ran"], extra["protocol"]) == ("tf32", "float32", "dit")
    assert rows["patch_fid"]["status"] == "skipped" and "reference_images" in rows["patch_fid"]["error"]
    for row in ("inception_score", "kid", "precision", "recall", "sample_s_per_image", "samples_fid"):
        assert rows[row]["status"] == "ok", rows[row]
    assert rows["sample_s_per_image"]["value"] > 0 and rows["sample_s_per_image"]["unit"] == "s"
    assert (out / rows["samples_fid"]["extra"]["path"]).is_file()

    # The resumed run continued where the killed one stopped; that its features equal an uninterrupted run's is
    # checked by the torchrun test, which samples the same 16 images in one go.
    from dimbench.fid import pipeline

    feats = pipeline.gather(state, 16, 8)
    assert feats["indices"].tolist() == list(range(16))
    assert feats["pool"].shape == (16, 2048) and np.isfinite(feats["pool"]).all()
    a = pipeline.initial_noise(0, [9, 10], (4, 8, 8))
    b = pipeline.initial_noise(0, [10], (4, 8, 8))
    assert torch.equal(a[1], b[0])

    # The report shows the scores and the grid.
    from dimbench.report import build_report

    html, _ = build_report(out)
    text = Path(html).read_text()
    assert "FID per model, checkpoint and resolution" in text and "IS ↑" in text and "dit_tiny_latent.pt" in text
    assert "FID sample grid" in text


def _tiny_job(count: int, batch: int, **kw):
    """A SampleJob on a 1-channel 4 px dit_tiny_4 with random weights (2 DDIM steps) and no Inception network."""
    import models
    from dimbench.fid import pipeline
    from dimbench.training.sampling import SamplerSpec
    from models.diffusion import make_schedule

    torch.manual_seed(0)
    model = models.create_model("dit_tiny_4", input_size=4, in_channels=1, num_classes=10).eval()
    fam = models.family_of_model("dit_tiny_4")
    return pipeline.SampleJob(model=model, schedule=make_schedule(fam.diffusion.schedule), timestep=fam.timestep,
                              spec=SamplerSpec("ddim", 2, 0.0), shape=(1, 4, 4), num_classes=10, count=count,
                              batch=batch, seed=0, device=torch.device("cpu"), decode=lambda x: x.clamp(-1, 1),
                              extractor=None, **kw)


def _fake_extract(net, images, batch=100, resize="tf1"):
    """Stand-in features: each image's pixels (so an image's features tell which image it is)."""
    flat = images.float().flatten(1).numpy()
    return np.tile(flat, (1, -(-2048 // flat.shape[1])))[:, :2048], np.zeros((len(flat), 1008), np.float32)


@pytest.mark.slow
def test_resume_with_another_sample_count_redoes_the_chunks_that_do_not_match(tmp_path, monkeypatch):
    """A chunk is done only when its indices are those of this run's (count, batch): resuming with fewer or more
    samples redoes the last chunk, and every index 0 ... N-1 is scored exactly once. A temporary file left by a
    killed write is removed and never taken for a chunk."""
    from dimbench.fid import inception, pipeline

    monkeypatch.setattr(inception, "extract", _fake_extract)
    state = tmp_path / "state"
    pipeline.prepare_state(state, {"k": 1})
    did = pipeline.run(_tiny_job(12, 4), state)
    assert did == {"generated": 12, "resumed": 0, "chunks": 3}
    full = pipeline.gather(state, 12, 4)
    (state / ".tmp-999-chunk_000003.npz").write_bytes(b"half")  # killed writes, in this and the old naming
    (state / "chunk_000004.npz.tmp-999.npz").write_bytes(b"half")
    pipeline.prepare_state(state, {"k": 1})
    assert sorted(p.name for p in state.iterdir()) == ["chunk_000000.npz", "chunk_000001.npz", "chunk_000002.npz",
                                                       "grid.npy", "job.json"]
    for count, generated in ((10, 2), (14, 6)):  # 10: chunk 2 holds 8-11, must hold 8-9; 14: 8-11, then 12-13
        did = pipeline.run(_tiny_job(count, 4), state)
        assert (did["generated"], did["resumed"]) == (generated, 8), (count, did)
        feats = pipeline.gather(state, count, 4)
        assert feats["indices"].tolist() == list(range(count)) and feats["pool"].shape == (count, 2048)
        assert np.array_equal(feats["pool"][:min(count, 12)], full["pool"][:min(count, 12)])  # same images


@pytest.mark.slow
def test_training_free_upsampling_only_for_the_models_named_with_the_papers_settings(assets, tmp_path):
    """A tiny DiM whose checkpoint is at 8 px, scored at 16 px: training-free upsampling x2 with Upsample Guidance,
    DPM-Solver 50 steps, s = 3.0 (dim.md §8; not the family's own steps). A DiT checkpoint at 8 px is not
    upsampled to 16 px, since upsample_from names only the DiM."""
    import models
    from dimbench.metrics.base import SkipMetric
    from dimbench.metrics.fid import FID
    from dimbench.points import SweepPoint

    torch.manual_seed(0)
    ckpt = tmp_path / "dim_tiny_8px.pt"
    models.save_checkpoint(models.create_model("dim_tiny_4", input_size=8), ckpt)
    options = dict(inception_weights=str(assets["weights"]), inception_sha256=assets["sha"],
                   reference=str(assets["uvit"]), samples=10, batch=10, upsample_from={"dim_tiny_4": {16: 8}})
    point = SweepPoint(suite="t", model="dim_tiny_4", resolution=16, input_size=16, batch=1, dtype="float32",
                       device="cpu", metrics=("fid",), checkpoint=str(ckpt))
    rows = {m.metric: m for m in FID.measure(point, out_dir=str(tmp_path / "out"), **options)}
    fid = rows["fid"]
    assert fid.status == "ok" and fid.value is not None, fid
    for word in ("Upsample Guidance", "x2", "DPM-Solver (noise prediction", "50 steps", "s = 3"):
        assert word in fid.method, (word, fid.method)
    extra = fid.extra
    assert (extra["sampler"], extra["sampler_steps"], extra["guidance_s"]) == ("dpm_solver", 50, 3.0)
    assert extra["upsample_factor"] == 2 and extra["labels"] == "random" and extra["random_weights"] is False
    assert extra["comparable_to_published"] is False
    assert extra["not_comparable"] == ["resolution: 16 px by training-free upsampling; no FID is published there"]

    dit_ckpt = tmp_path / "dit_tiny_8px.pt"
    models.save_checkpoint(models.create_model("dit_tiny_4", input_size=8), dit_ckpt)
    dit = SweepPoint(suite="t", model="dit_tiny_4", resolution=16, input_size=16, batch=1, dtype="float32",
                     device="cpu", metrics=("fid",), checkpoint=str(dit_ckpt))
    with pytest.raises(SkipMetric, match="gives dit_tiny_4 at 16 px no source resolution"):
        FID.measure(dit, out_dir=str(tmp_path / "out"), **options)


@pytest.mark.slow
def test_high_resolution_kid_and_patch_fid_against_a_reference_folder(assets, tmp_path):
    """Samples of at least 299 px (a tiny latent DiT decoded by a VAE that upsamples 32x: 384 px) against a
    statistics-only reference and a folder of real images: KID and precision/recall come from the folder's images
    (read at the samples' size), and patch-FID is the Fréchet distance between crops of the samples and crops of
    the folder's images, each recomputed here from its parts."""
    from diffusers import AutoencoderKL
    from PIL import Image

    import models
    from dimbench.fid import inception, pipeline
    from dimbench.fid.folder import folder_features, image_files
    from dimbench.fid.patches import random_crops
    from dimbench.metrics.fid import FID
    from dimbench.points import SweepPoint
    from dimbench.quality.frechet import frechet_distance, gaussian_stats

    torch.manual_seed(0)
    vae_dir = tmp_path / "vae32"
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 6,
                  up_block_types=("UpDecoderBlock2D",) * 6, block_out_channels=(32,) * 6, layers_per_block=1,
                  latent_channels=4, norm_num_groups=32, sample_size=384).save_pretrained(vae_dir)
    ckpt = tmp_path / "dit_tiny_latent12.pt"
    models.save_checkpoint(models.create_model("dit_tiny_4", input_size=12, in_channels=4, num_classes=10), ckpt)
    folder = tmp_path / "real"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):  # precision/recall need more than 3 per set
        Image.fromarray(rng.integers(0, 256, size=(360, 420, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    point = SweepPoint(suite="t", model="dit_tiny_4", resolution=384, input_size=12, batch=1, dtype="float32",
                       device="cpu", metrics=("fid",), checkpoint=str(ckpt))
    rows = {m.metric: m for m in FID.measure(
        point, out_dir=str(tmp_path / "out"), inception_weights=str(assets["weights"]),
        inception_sha256=assets["sha"], reference=str(assets["uvit"]), vae=str(vae_dir), samples=4, batch=4,
        sampler="ddim", steps=1, guidance=0.0, reference_images=str(folder), patch_crops=1)}
    for name in ("fid", "kid", "precision", "recall", "patch_fid"):
        assert rows[name].status == "ok", (name, rows[name].error)
    assert rows["kid"].extra["real_from"].startswith(f"the 4 images of {folder}")
    patch = rows["patch_fid"]
    assert patch.method.startswith("patch-FID (not FID, and not comparable with any published FID)")
    assert (patch.extra["n_fake_crops"], patch.extra["n_real_crops"], patch.extra["image_px"]) == (4, 4, 384)

    net, _ = inception.load_extractor(assets["weights"], assets["sha"])
    state = next((tmp_path / "out" / "state").glob("*/fid"))
    feats = pipeline.gather(state, 4, 4)
    grid = torch.from_numpy(np.load(state / "grid.npy"))  # the 4 samples' pixels
    fake, _ = inception.extract(net, random_crops(grid, 0, range(4), 1), resize="tf1")
    assert np.allclose(feats["patch_pool"], fake, rtol=1e-5, atol=1e-6)
    real_pool, real_crops = folder_features(image_files(folder), 384, net, resize="tf1", crops=1, seed=0)
    assert patch.value == pytest.approx(frechet_distance(*gaussian_stats(fake), *gaussian_stats(real_crops)),
                                        rel=1e-4)
    from dimbench.fid.scores import kid

    assert rows["kid"].value == pytest.approx(kid(feats["pool"], real_pool)[0], rel=1e-4, abs=1e-6)


def test_labels_dtype_and_guided_channels():
    """Random labels are seeded per image (the same for any chunking), balanced ones are i mod classes; a non-float32
    point is skipped (the papers' reduced precision is autocast on float32 weights); DiT's guidance names its 3
    channels. (Comparability: tests/test_fid_protocol.py.)"""
    from dimbench.fid import pipeline
    from dimbench.metrics.base import SkipMetric
    from dimbench.metrics.fid import FID
    from dimbench.points import SweepPoint
    from dimbench.training.sampling import SamplerSpec

    labels = pipeline.class_labels(0, range(200), 1000)
    assert labels[50:60] == pipeline.class_labels(0, range(50, 60), 1000) and len(set(labels)) > 150
    assert all(0 <= c < 1000 for c in labels) and labels != pipeline.class_labels(1, range(200), 1000)
    assert pipeline.class_labels(0, [3, 1004], 1000, "balanced") == [3, 4]

    point = SweepPoint(suite="t", model="dit_tiny_4", resolution=64, input_size=8, batch=1, dtype="bfloat16",
                       device="cpu", metrics=("fid",), checkpoint="x.pt")
    with pytest.raises(SkipMetric, match="float32 weights.*precision.*bfloat16"):
        FID.measure(point)
    assert "on the first 3 channels" in SamplerSpec("ddpm", 250, 0.5).describe(3)
    assert "channels" not in SamplerSpec("ddpm", 250, 0.5).describe()


def _fid_args(assets, out: Path, checkpoint) -> list[str]:
    return ["fid", "dit_tiny_4", "--resolution", "8", "--checkpoint", str(checkpoint), "--out", str(out),
            "--device", "cpu", "--inception-weights", str(assets["weights"]), "--inception-sha256", assets["sha"],
            "--reference", str(assets["uvit"]), "--vae", str(assets["vae"]), "--samples", "16", "--batch", "8",
            "--sampler", "dpm_solver++", "--steps", "3", "--guidance", "0.4"]


def test_a_finished_fid_command_is_not_scored_or_written_again(assets, tmp_path, capsys):
    """Issue 25 (8): rerunning a finished `dimbench fid` wrote all its rows again."""
    from dimbench import cli
    from dimbench.metrics.fid import FID

    out = tmp_path / "out"
    assert cli.main(_fid_args(assets, out, assets["ckpt"])) == 0
    rows = read_jsonl(out / "results.jsonl")
    assert sorted(r["metric"] for r in rows) == sorted(FID.produces)  # every declared row, once
    capsys.readouterr()
    assert cli.main(_fid_args(assets, out, assets["ckpt"])) == 0
    assert "already scored" in capsys.readouterr().out
    assert read_jsonl(out / "results.jsonl") == rows


def test_an_unusable_fid_checkpoint_is_one_line(assets, tmp_path, capsys):
    """Issue 25 (15): a truncated, unsafe or other model's --checkpoint was an uncaught CheckpointError."""
    import os

    import models
    from dimbench import cli

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(assets["ckpt"].read_bytes()[:5000])
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"w": torch.zeros(1), "object": os.getcwd}, unsafe)  # a callable: the safe loader refuses it
    other = tmp_path / "uvit.pt"
    models.save_checkpoint(models.create_model("uvit_tiny_4", input_size=8, in_channels=4, num_classes=10), other)
    for path, needle in ((truncated, "cannot be read as a PyTorch checkpoint"), (unsafe, "cannot be read"),
                         (other, "")):
        assert cli.main(_fid_args(assets, tmp_path / path.stem, path)) == 2
        err = capsys.readouterr().err
        assert f"dimbench: error: --checkpoint {path}: {path}" in err and needle in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_fid_command_under_torchrun_shares_chunks_between_ranks(assets, resumed, tmp_path):
    """`dimbench fid` on two CPU ranks (gloo): each rank samples its own chunks, rank 0 writes the rows once; a
    U-ViT-style reference (mu/sigma only) gives FID and IS, and says why KID and precision/recall are skipped.
    It samples the suite run's 16 images without interruption: the killed-and-resumed run's features equal its."""
    import socket
    import subprocess
    import sys

    from conftest import ROOT
    from dimbench.fid import pipeline

    with socket.socket() as sock:  # a free port, not a fixed one another job may hold
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "out"
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "dimbench.cli", "fid", "dit_tiny_4", "--resolution", "8", "--checkpoint", str(assets["ckpt"]),
           "--out", str(out), "--device", "cpu", "--inception-weights", str(assets["weights"]),
           "--inception-sha256", assets["sha"], "--reference", str(assets["uvit"]), "--vae", str(assets["vae"]),
           "--samples", "16", "--batch", "8", "--sampler", "dpm_solver++", "--steps", "3", "--guidance", "0.4"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=cli_env(), cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_jsonl(out / "results.jsonl")
    by = {r["metric"]: r for r in rows}
    assert len(rows) == len(by) == 8  # written once, by rank 0
    assert by["fid"]["status"] == "ok" and by["inception_score"]["status"] == "ok"
    assert by["fid"]["extra"]["world_size"] == 2 and by["fid"]["extra"]["n_fake"] == 16
    assert by["fid"]["extra"]["reference_layout"] == "uvit"
    assert by["kid"]["status"] == "skipped" and "statistics only" in by["kid"]["error"]
    assert len(list(out.glob("state/*/fid/chunk_*.npz"))) == 2

    whole = pipeline.gather(next(out.glob("state/*/fid")), 16, 8)
    parts = pipeline.gather(next((resumed[0] / "state").glob("*/fid")), 16, 8)
    assert np.allclose(whole["pool"], parts["pool"], rtol=1e-5, atol=1e-6)
    assert np.allclose(whole["logits"], parts["logits"], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ user errors
@pytest.mark.slow
def test_missing_paths_are_named_before_any_point_runs(assets, tmp_path):
    suite = _suite(assets, tmp_path, reference=tmp_path / "nope.npz", weights=tmp_path / "no_weights.pth")
    text = suite.read_text().replace(str(assets["vae"]), str(tmp_path / "no_vae"))
    suite.write_text(text)
    done = run_cli("run", str(suite), "--out", str(tmp_path / "o"))  # validation names all three, then stops
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    for name in ("no_weights.pth", "nope.npz", "no_vae"):
        assert name in done.stderr, (name, done.stderr)
    assert not (tmp_path / "o" / "results.jsonl").exists()

    bare = tmp_path / "bare.yaml"
    bare.write_text("models: [dit_xl_2]\nresolutions: [256]\nmetrics: [fid]\n")
    done = run_cli("validate", str(bare))
    assert done.returncode == 2
    for key in ("options.fid.inception_weights", "options.fid.reference", "options.fid.vae", "6726825d"):
        assert key in done.stderr, (key, done.stderr)


@pytest.mark.slow
def test_wrong_weights_file_names_the_expected_checksum(assets, tmp_path):
    wrong = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save({"x": torch.zeros(3)}, wrong)
    suite = _suite(assets, tmp_path, weights=wrong, sha="6726825d")
    done = run_cli("validate", str(suite))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "wrong file" in done.stderr and "6726825d" in done.stderr and str(wrong) in done.stderr
    assert _sha256(wrong) in done.stderr

    from dimbench.errors import UserError
    from dimbench.fid import inception

    with pytest.raises(UserError, match="do not fit"):  # the right hash claimed for a file of other weights
        inception.load_extractor(wrong, _sha256(wrong))


def test_inception_sha256_must_be_at_least_8_hex_digits():
    from dimbench.metrics.fid import FID
    from dimbench.schema import Problems, Record

    fields = [f for f in FID.option_record().fields if f.name == "inception_sha256"]
    for value, ok in (("6726825d", True), ("6726825d" * 8, True), ("abc", False), ("6726825D", False),
                      ("zz26825d", False), ("6726825d ", False), ("6726825d" * 8 + "0", False)):
        problems = Problems()
        Record(fields, "options").check({"inception_sha256": value}, (), problems)
        assert (not problems) == ok, (value, [m for _, m in problems])
        if not ok:
            assert "8 to 64 lowercase hex digits" in " ".join(m for _, m in problems)


@pytest.mark.slow
def test_fid_stats_command_writes_readable_statistics(assets, tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(assets["images"][:6]):
        Image.fromarray(img).save(folder / f"{i}.png")
    out = tmp_path / "stats.npz"
    done = run_cli("fid-stats", str(folder), "-o", str(out), "--inception-weights", str(assets["weights"]),
                   "--inception-sha256", assets["sha"], "--resolution", "16", "--batch", "4")  # 2 batches
    assert done.returncode == 0, done.stderr
    with np.load(out, allow_pickle=False) as z:
        assert z["mu"].shape == (2048,) and z["sigma"].shape == (2048, 2048) and int(z["count"]) == 6
        assert str(z["weights_sha256"]) == assets["sha"]
    from dimbench.fid.reference import read_reference

    assert read_reference(out).layout == "dimbench"
    missing = run_cli("fid-stats", str(folder), "-o", str(out), "--inception-weights", str(tmp_path / "w.pth"))
    assert missing.returncode == 2 and "w.pth: no such file" in missing.stderr and "6726825d" in missing.stderr

    # The statistics are those of the images' features, read --batch images at a time (never the whole folder).
    from dimbench.fid import inception
    from dimbench.fid_cli import cmd_fid_stats
    from dimbench.quality.frechet import gaussian_stats

    net, _ = inception.load_extractor(assets["weights"], assets["sha"])
    pool, _ = inception.extract(net, torch.from_numpy(assets["images"][:6]).permute(0, 3, 1, 2))
    with np.load(out, allow_pickle=False) as z:
        mu, _ = gaussian_stats(pool)
        assert np.allclose(z["mu"], mu, rtol=1e-5, atol=1e-6) and str(z["inception_resize"]) == "tf1"

    import argparse

    from dimbench.errors import UserError

    base = dict(folder=str(folder), output=str(out), inception_weights=str(assets["weights"]),
                inception_sha256=assets["sha"], resolution=16, batch=4, device="cpu", compare=None,
                inception_resize="tf1")
    # --inception-resize torch: the statistics of pytorch-fid-style features, and the file says so.
    made_torch = tmp_path / "stats_torch.npz"
    assert cmd_fid_stats(argparse.Namespace(**{**base, "output": str(made_torch), "inception_resize": "torch"})) == 0
    torch_pool, _ = inception.extract(net, torch.from_numpy(assets["images"][:6]).permute(0, 3, 1, 2),
                                      resize="torch")
    ref = read_reference(made_torch)
    assert ref.inception_resize == "torch" and np.allclose(ref.mu, gaussian_stats(torch_pool)[0], rtol=1e-5,
                                                           atol=1e-6)
    for change, message in (({"batch": 0}, "--batch: expected a whole number >= 1, got 0"),
                            ({"resolution": -3}, "--resolution: expected a whole number >= 1, got -3"),
                            ({"inception_sha256": "67"}, "--inception-sha256: expected 8 to 64")):
        with pytest.raises(UserError, match=message) as err:
            cmd_fid_stats(argparse.Namespace(**{**base, **change}))
        assert "\n" not in str(err.value)


def test_skipped_when_torch_fidelity_does_not_import(assets, tmp_path, monkeypatch):
    import builtins

    from dimbench.metrics.fid import FID
    from dimbench.points import SweepPoint

    real_import = builtins.__import__

    def refuse(name, *args, **kwargs):
        if name.startswith("torch_fidelity"):
            raise ImportError("No module named 'torch_fidelity'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse)
    point = SweepPoint(suite="t", model="dit_tiny_4", resolution=8, input_size=8, batch=1, dtype="float32",
                       device="cpu", metrics=("fid",), checkpoint=str(assets["ckpt"]))
    from dimbench.metrics.base import SkipMetric

    with pytest.raises(SkipMetric, match="not available: torch-fidelity does not import"):
        FID.measure(point, out_dir=str(tmp_path))


@pytest.mark.slow
def test_fid_imagenet_suite_names_its_missing_files_and_passes_once_they_exist(tmp_path):
    import re

    from conftest import ROOT

    suite = ROOT / "suites" / "fid_imagenet.yaml"
    done = run_cli("validate", str(suite))
    if done.returncode != 0:  # the files are not on this machine (the usual case)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        for name in ("weights-inception-2015-12-05-6726825d.pth", "imagenet256_H_DiM/nnet_ema.pth",
                     "imagenet512_H_DiM_ft/nnet_ema.pth", "fid_stats_imagenet256_guided_diffusion.npz",
                     "sd-vae-ft-ema"):
            assert name in done.stderr, name
    # With every named file in place as a dummy (the weights' checksum set to the dummy's), validation opens the
    # reference files and refuses them; with well-formed statistics (mu (2048,), sigma (2048, 2048)) it passes.
    copy = tmp_path / "suites" / "fid_imagenet.yaml"
    copy.parent.mkdir()
    text = suite.read_text()
    body = "\n".join(line.split("#")[0] for line in text.splitlines())  # the keys, not the comments
    for rel in set(re.findall(r"\.\./fid_files/[^\s,}]+", body)):
        path = tmp_path / "suites" / rel
        if rel.endswith("sd-vae-ft-ema"):
            path.mkdir(parents=True, exist_ok=True)
            (path / "config.json").write_text("{}")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"dummy")
    weights = tmp_path / "fid_files" / "weights-inception-2015-12-05-6726825d.pth"
    text = text.replace("    inception_weights:", f"    inception_sha256: {_sha256(weights)}\n    inception_weights:")
    copy.write_text(text)
    done = run_cli("validate", str(copy))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "fid_stats_imagenet256_guided_diffusion.npz: not an .npz archive" in done.stderr, done.stderr
    assert "fid_imagenet.yaml:" in done.stderr  # FILE:LINE of the suite's reference key
    for rel in set(re.findall(r"\.\./fid_files/[^\s,}]+\.npz", body)):
        np.savez(tmp_path / "suites" / rel, mu=np.zeros(2048, np.float32), sigma=np.eye(2048, dtype=np.float32))
    done = run_cli("validate", str(copy))
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_reference_contents_and_resolutions_are_checked_before_any_point_runs(assets, tmp_path):
    """Keys and shapes of every reference file, and a {resolution: file} table covering every resolution, are
    checked by `dimbench validate` (and `run`) before sampling: each message names the file, the key, FILE:LINE."""
    from dimbench.fid.reference import check_reference_file

    wrong_shape = tmp_path / "wrong_shape.npz"
    np.savez(wrong_shape, mu=np.zeros(64), sigma=np.eye(64))
    no_keys = tmp_path / "no_keys.npz"
    np.savez(no_keys, features=np.zeros((3, 2048)))
    bad_images = tmp_path / "bad_images.npz"
    np.savez(bad_images, arr_0=np.zeros((4, 8, 8, 3), np.float32))
    table = f"{{8: {wrong_shape}, 16: {no_keys}, 24: {bad_images}}}"
    suite = _suite(assets, tmp_path, reference=table)
    suite.write_text(suite.read_text().replace("resolutions: [8]", "resolutions: [8, 16, 24, 32]"))
    done = run_cli("run", str(suite), "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    for path, words in ((wrong_shape, ("key 'mu'", "(2048,)", "(64,)")), (no_keys, ("no keys 'mu'/'sigma'",
                        "features")), (bad_images, ("key 'arr_0'", "uint8", "float32"))):
        line = next((x for x in lines if str(path) in x), "")
        for word in ("suite.yaml:", *words):
            assert word in line, (word, done.stderr)
    assert "names no file for 32 px" in done.stderr, done.stderr
    assert not (tmp_path / "o" / "results.jsonl").exists()
    assert check_reference_file(assets["adm"]) is None and check_reference_file(assets["uvit"]) is None
    assert check_reference_file(assets["adm_images_only"]) is None
