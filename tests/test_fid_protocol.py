"""The papers' FID protocols as data (dimbench/fid/protocols.yaml) and the judgement of comparability: a published
FID is chosen by the scored checkpoint's SHA-256, and every deviation from the release's protocol turns
comparable_to_published false with its reason. Also the precision plans, the reference option's per-model table,
patch crops and `dimbench fid-stats --compare`. No Inception network is needed here (tests/test_fid.py has the
pipeline)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import run_cli
from dimbench.fid import protocol

SHA_425K, SHA_625K, SHA_REF = "a" * 64, "b" * 64, "c" * 64


def _ran(**change) -> protocol.Ran:
    """What a run of DiM-H/2 at 256 px following the DiM protocol in full records."""
    ran = protocol.Ran(model="dim_h_2", resolution=256, upsampled=False, checkpoint_sha256=SHA_425K,
                       sampler="dpm_solver++", steps=50, skip="time_uniform", guidance=0.4, guided_channels=None,
                       labels="random", samples=50000, inception_resize="torch", reference_sha256=SHA_REF,
                       reference_resize=None, precision="bf16", vae_precision="fp16")
    return dataclasses.replace(ran, **change)


@pytest.fixture
def recorded(monkeypatch):
    """The table with SHA-256s recorded for the two DiM 256 px checkpoints and U-ViT's 256 px statistics."""
    t = protocol.table()
    releases = dict(t.releases)
    releases["dim_h_2_256_425k"] = dataclasses.replace(releases["dim_h_2_256_425k"], sha256=SHA_425K)
    releases["dim_h_2_256_625k"] = dataclasses.replace(releases["dim_h_2_256_625k"], sha256=SHA_625K)
    references = dict(t.references)
    references["uvit_imagenet256"] = dataclasses.replace(references["uvit_imagenet256"], sha256=SHA_REF)
    monkeypatch.setattr(protocol, "table", lambda: protocol.Table(t.protocols, references, releases))


def test_every_published_fid_names_a_release_of_its_model_and_resolution():
    from dimbench.paper import tables

    t = protocol.table()
    rows = tables()["fid"].rows
    assert {r.details["release"] for r in rows} == set(t.releases)
    for row in rows:
        release = t.releases[row.details["release"]]
        assert (release.model, release.resolution) == (row.model, row.resolution), row
        assert protocol.published_fid(release.id) == row.values["fid"]
    # The published guidance, as data (dim.md §7, baselines.md): s = 0.4 at 256 and 0.7 at 512; DiT w = 1.5.
    assert [protocol.published_guidance(m, r) for m, r in (("dim_h_2", 256), ("dim_h_2", 512), ("uvit_h_2", 256),
            ("uvit_h_4", 512), ("dit_xl_2", 256), ("dit_xl_2", 512), ("dim_h_2", 1024))] == [0.4, 0.7, 0.4, 0.7,
                                                                                              0.5, 0.5, None]
    assert [protocol.for_model(m).id for m in ("dim_h_2", "dim_tiny_4", "uvit_h_2", "dit_xl_2")] == \
        ["dim", "dim", "uvit", "dit"]
    dim, uvit, dit = (t.protocols[k] for k in ("dim", "uvit", "dit"))
    assert (dim.precision, dim.vae_precision, dim.inception_resize) == ("bf16", "fp16", "torch")
    assert (uvit.precision, uvit.vae_precision, uvit.inception_resize) == ("fp16", "fp16", "torch")
    assert (dit.precision, dit.vae_precision, dit.inception_resize, dit.guided_channels) == ("tf32", "tf32", "tf1", 3)


def test_the_checkpoint_hash_selects_the_published_fid(recorded):
    v = protocol.judge(_ran())
    assert v.comparable and v.release.id == "dim_h_2_256_425k" and str(protocol.published_fid(v.release.id)) == "2.40"
    assert v.release_identified_by.startswith("SHA-256 recorded")
    v = protocol.judge(_ran(checkpoint_sha256=SHA_625K))
    assert v.comparable and v.release.id == "dim_h_2_256_625k" and str(protocol.published_fid(v.release.id)) == "2.21"
    unknown = "d" * 64
    v = protocol.judge(_ran(checkpoint_sha256=unknown))
    assert not v.comparable and v.release is None
    assert v.failed == (f"checkpoint: SHA-256 {unknown} is not a known release (releases of dim_h_2 at 256 px: "
                        "dim_h_2_256_425k, dim_h_2_256_625k; dimbench/fid/protocols.yaml records no hash for this "
                        "file: name its release with options.fid.identify {sha256: release id})",)


def test_a_declared_identity_is_used_and_recorded_as_a_declaration():
    """The package records no hash of the real releases yet: the suite's identify option names them."""
    declared = {SHA_425K: "dim_h_2_256_425k", SHA_REF: "uvit_imagenet256"}
    v = protocol.judge(_ran(), declared)
    assert v.comparable and v.release.id == "dim_h_2_256_425k"
    assert v.release_identified_by.startswith("declared by options.fid.identify")
    v = protocol.judge(_ran(), {SHA_425K: "dim_h_2_256_425k"})  # the reference file is not identified
    assert v.failed == ("reference: SHA-256 " + SHA_REF + " is not a known reference file (the protocol's is "
                        "fid_stats_imagenet256_guided_diffusion.npz; name it with options.fid.identify "
                        "{sha256: uvit_imagenet256})",)


@pytest.mark.parametrize("change, item", [
    ({"skip": "logSNR"}, "step placement: logSNR ran, the protocol's is time_uniform"),  # 1
    ({"sampler": "dpm_solver"}, "sampler: dpm_solver ran, the protocol's is dpm_solver++"),
    ({"steps": 25}, "steps: 25 ran, the protocol's is 50"),
    ({"guidance": 0.7}, "guidance: 0.7 ran, the protocol's is 0.4"),
    ({"guided_channels": 3}, "guidance channels: 3 ran, the protocol's is none"),
    ({"labels": "balanced"}, "labels: balanced ran, the protocol's is random"),
    ({"samples": 10000}, "samples: 10000 ran, the protocol's is 50000"),
    ({"checkpoint_sha256": "e" * 64}, "checkpoint: it is release dim_h_2_512_ft64k (dim_h_2 at 512 px), scored as "
                                      "dim_h_2 at 256 px"),  # 2
    ({"checkpoint_sha256": None}, "checkpoint: none (random weights)"),
    ({"upsampled": True}, "resolution: 256 px by training-free upsampling; no FID is published there"),
    ({"inception_resize": "tf1"}, "inception resize: tf1 ran, the protocol's is torch"),  # 3
    ({"reference_sha256": "f" * 64},  # 4
     "reference: adm_imagenet256 (VIRTUAL_imagenet256_labeled.npz), the protocol's is uvit_imagenet256 "
     "(fid_stats_imagenet256_guided_diffusion.npz)"),
    ({"reference_resize": "tf1"}, "reference: its statistics were made with the tf1 resize, the samples scored "
                                  "with torch"),
    ({"precision": "float32"}, "precision: float32 ran, the protocol's is bf16"),  # 5
    ({"vae_precision": "float32"}, "VAE precision: float32 ran, the protocol's is fp16"),
])
def test_each_deviation_from_the_protocol_turns_comparable_false_with_its_reason(recorded, change, item):
    declared = {"e" * 64: "dim_h_2_512_ft64k", "f" * 64: "adm_imagenet256"}
    assert protocol.judge(_ran(), declared).comparable
    v = protocol.judge(_ran(**change), declared)
    assert not v.comparable and v.failed == (item,), v.failed


def test_a_release_whose_protocol_dimbench_does_not_run_is_never_comparable():
    sha = "9" * 64
    v = protocol.judge(_ran(model="uvit_l_2", checkpoint_sha256=sha), {sha: "uvit_l_2_256"})
    assert not v.comparable and v.release.id == "uvit_l_2_256"
    assert len(v.failed) == 1 and v.failed[0].startswith("protocol: U-ViT-L's published FID comes from eval_ldm.py")


def test_precision_plans_and_the_autocast_forward():
    from dimbench.fid import precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert precision.plan("bf16", cuda).ran == "bf16" and precision.plan("tf32", cuda).ran == "tf32"
    on_cpu = precision.plan("bf16", cpu)
    assert on_cpu.ran == "float32" and on_cpu.autocast is None and "bf16 asked" in on_cpu.note
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.plan("fp8", cuda)
    # The wrapper runs the network under autocast (here the CPU's bf16, where autocast exists) and returns float32.
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 64)
    x = torch.randn(8, 64)
    plan = precision.Plan("bf16", "bf16", "")
    out = precision.forward(lin, plan, cpu)(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = lin(x).float()
    assert out.dtype == torch.float32 and torch.equal(out, expected) and not torch.allclose(out, lin(x), atol=1e-4)
    assert precision.forward(lin, precision.plan("float32", cpu), cpu) is lin
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with precision.numerics(precision.Plan("tf32", "tf32", "")):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    with precision.strict_float32():
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == saved


def test_reference_option_per_model_and_identify(tmp_path):
    from dimbench.fid.options import reference_for
    from dimbench.metrics.fid import FID
    from dimbench.schema import Problems, Record

    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    for f in (a, b):
        np.savez(f, mu=np.zeros(2048), sigma=np.eye(2048))
    fields = [f for f in FID.option_record().fields if f.name in ("reference", "identify")]
    problems = Problems()
    value = {"dim_h_2": {256: str(a), 512: str(b)}, "dit_xl_2": str(b)}
    got = Record(fields, "options").check({"reference": value, "identify": {"1" * 64: "dim_h_2_256_425k"}}, (),
                                          problems)
    assert not problems, list(problems)
    ref = got["reference"]
    assert reference_for(ref, 512, "dim_h_2") == str(b) and reference_for(ref, 1024, "dit_xl_2") == str(b)
    assert reference_for(ref, 1024, "dim_h_2") is None and reference_for(ref, 256, "uvit_h_2") is None
    assert reference_for(str(a), 256, "x") == str(a) and reference_for({256: str(a)}, 256, "x") == str(a)
    options = {**FID.option_record().check({}, (), Problems()), "reference": ref, "inception_weights": "w"}
    messages = [m for k, m in FID.check_options(options, ["dim_h_2", "uvit_h_2"], [256]) if k == "reference"]
    assert messages == ["key 'options.fid.reference': names no file for uvit_h_2 (the suite's models: dim_h_2, "
                        "uvit_h_2)"]
    for bad, words in (({"xyz": "dim_h_2_256_425k"}, "a SHA-256 as the key"),
                       ({"1" * 64: "no_such_release"}, "dim_h_2_256_425k")):
        problems = Problems()
        Record(fields, "options").check({"identify": bad}, (), problems)
        assert problems and words in " ".join(m for _, m in problems), list(problems)


def test_patch_crops_are_seeded_per_image():
    from dimbench.fid.patches import CROP, crop_offsets, random_crops

    pixels = torch.randint(0, 256, (3, 3, 320, 400), dtype=torch.uint8)
    crops = random_crops(pixels, 0, [7, 8, 9], 2)
    assert crops.shape == (6, 3, CROP, CROP)
    top, left = crop_offsets(0, 8, 320, 400, 2)[1]
    assert torch.equal(crops[3], pixels[1, :, top:top + CROP, left:left + CROP])
    assert torch.equal(random_crops(pixels[1:2], 0, [8], 2), crops[2:4])  # image 8's crops whatever its chunk
    assert crop_offsets(0, 8, 320, 400, 2) != crop_offsets(1, 8, 320, 400, 2)
    with pytest.raises(ValueError, match="no 299-px crop"):
        crop_offsets(0, 0, 256, 400, 1)


def test_fid_stats_compare_two_files(tmp_path):
    from dimbench.quality.frechet import frechet_distance

    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=2048), np.diag(rng.uniform(0.5, 1.5, size=2048))
    a, same, other = tmp_path / "a.npz", tmp_path / "same.npz", tmp_path / "other.npz"
    np.savez(a, mu=mu, sigma=sigma)
    np.savez(same, mu=mu, sigma=sigma, arr_0=np.zeros((2, 4, 4, 3), np.uint8))  # ADM layout, same statistics
    np.savez(other, mu=mu + 0.01, sigma=sigma * 1.1)
    done = run_cli("fid-stats", "--compare", str(a), str(same))
    assert done.returncode == 0, done.stderr
    assert "Fréchet distance between them: 0\n" in done.stdout and "mu identical: yes" in done.stdout
    assert "sigma identical: yes" in done.stdout and "adm layout" in done.stdout
    done = run_cli("fid-stats", "--compare", str(a), str(other))
    assert done.returncode == 0, done.stderr
    expected = frechet_distance(mu, sigma, mu + 0.01, sigma * 1.1)
    shown = float(done.stdout.split("Fréchet distance between them: ")[1].split()[0])
    assert shown == pytest.approx(expected, rel=1e-5) and expected > 0
    assert "mu identical: no (max |difference| 0.01)" in done.stdout and "sigma identical: no" in done.stdout
    images_only, short, broken = tmp_path / "images.npz", tmp_path / "short.npz", tmp_path / "broken.npz"
    np.savez(images_only, arr_0=np.zeros((2, 4, 4, 3), np.uint8))
    np.savez(short, mu=np.zeros(64), sigma=np.eye(64))
    broken.write_bytes(b"not a zip")
    for bad, words in ((images_only, "holds images only"), (short, "has 64 features"),
                       (broken, "not a readable .npz"), (tmp_path / "missing.npz", "no such file")):
        done = run_cli("fid-stats", "--compare", str(a), str(bad))
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert str(bad) in done.stderr and words in done.stderr, done.stderr
    done = run_cli("fid-stats", "--compare", str(a), str(same), "-o", str(tmp_path / "x.npz"))
    assert done.returncode == 2 and "takes no IMAGE_FOLDER and no --output" in done.stderr
    done = run_cli("fid-stats", str(tmp_path))
    assert done.returncode == 2 and "--output is required" in done.stderr


def test_fid_command_identify_flag_is_checked(tmp_path):
    base = ("fid", "dit_tiny_4", "--resolution", "8", "--out", str(tmp_path / "o"), "--random-weights")
    done = run_cli(*base, "--identify", "no-equals-sign")
    assert done.returncode == 2 and "--identify no-equals-sign: expected SHA256=ID" in done.stderr, done.stderr
    done = run_cli(*base, "--identify", "1" * 64 + "=no_such_release")
    assert done.returncode == 2 and "Traceback" not in done.stderr and "no_such_release" in done.stderr, done.stderr
    assert "dim_h_2_256_425k" in done.stderr  # the ids it could be


@pytest.mark.cuda
def test_sampling_and_decoding_run_in_the_planned_precision_on_cuda():
    """On CUDA the network runs under the plan's autocast (its Linear layers compute in bf16 / fp16) or with TF32
    switched as planned, the sampler gets float32 back, and the VAE decode runs under its own plan's autocast."""
    import models
    from dimbench.fid import pipeline, precision
    from dimbench.training.sampling import SamplerSpec
    from models.diffusion import make_schedule

    cuda = torch.device("cuda")
    torch.manual_seed(0)
    model = models.create_model("dit_tiny_4", input_size=8, in_channels=1, num_classes=10).eval().to(cuda)
    with torch.no_grad():  # DiT's zero-initialised output layers would make every output 0 in any precision
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    fam = models.family_of_model("dit_tiny_4")
    seen = []
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    first.register_forward_hook(lambda m, i, o: seen.append((o.dtype, torch.backends.cuda.matmul.allow_tf32)))
    outs = {}
    for asked, dtype, tf32 in (("float32", torch.float32, False), ("tf32", torch.float32, True),
                               ("bf16", torch.bfloat16, False), ("fp16", torch.float16, False)):
        plan = precision.plan(asked, cuda)
        job = pipeline.SampleJob(model=model, schedule=make_schedule(fam.diffusion.schedule), timestep=fam.timestep,
                                 spec=SamplerSpec("ddim", 2, 0.5), shape=(1, 8, 8), num_classes=10, count=2, batch=2,
                                 seed=0, device=cuda, decode=lambda x: x, extractor=None, precision=plan)
        seen.clear()
        with precision.numerics(plan):
            outs[asked] = pipeline.sample_chunk(job, [0, 1])
        assert seen and all(s == (dtype, tf32) for s in seen), (asked, seen)
        assert outs[asked].dtype == torch.float32
    scale = outs["float32"].abs().max()
    for asked in ("bf16", "fp16"):  # reduced precision changes the samples, a little
        diff = (outs[asked] - outs["float32"]).abs().max()
        assert 0 < diff < 1e-2 * scale, (asked, diff, scale)

    diffusers = pytest.importorskip("diffusers")
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 32),
                                  layers_per_block=1, latent_channels=4, norm_num_groups=32).to(cuda).eval()
    from dimbench.fid.vae import decode

    convs = []
    vae.decoder.conv_in.register_forward_hook(lambda m, i, o: convs.append(o.dtype))
    images = decode(vae, torch.randn(2, 4, 8, 8), autocast=precision.plan("fp16", cuda).autocast)
    assert convs == [torch.float16] and images.dtype == torch.float32 and images.device.type == "cpu"
