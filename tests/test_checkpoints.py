"""Checkpoint loading: format detection, conversion, resizing, pad layout, clear errors; save/inspect/convert CLI.

The generic code (models/checkpoints.py) is also driven through a family registered by the test alone, to show
that a family's declaration in its own file is all the loader needs (docs/models.md §7).
"""

from __future__ import annotations

import argparse
import ast
import io
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import models  # registers every family
from dimbench import checkpoint_cli
from models.checkpoints import (
    CheckpointError,
    inspect_checkpoint,
    load_checkpoint,
    load_resized_state_dict,
    save_checkpoint,
)
from models.dim import choose_pad_layout
from models.dim_convert import dimbench_to_official
from models.registry import create_model

ORACLE = Path(__file__).parent / "data" / "dim_tiny_official.pt"  # committed (tests/data/README.md)
ROOT = Path(__file__).resolve().parents[1]

# Small versions of each family's registered configs (overrides keep architecture names, shrink the sizes).
TINY_DIT = dict(input_size=16, depth=2, num_classes=10)  # dit_s_8: width 384, patch 8 -> 2x2 tokens
TINY_UVIT = dict(input_size=8, depth=4, width=64, heads=4, num_classes=10)  # uvit_l_2 structure
TINY_DIM = dict(input_size=16, in_channels=4, depth=3, width=32, num_classes=10)  # dim_s_2 structure, grid 8


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter N(0, 0.02): zero-initialised paths carry signal, so outputs tell weights apart."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return model.eval()


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k].to(sa[k].device)) for k in sa)


@pytest.fixture(scope="module")
def oracle():
    return torch.load(ORACLE, weights_only=True)  # a missing file is a failure: it is part of the repository


@pytest.fixture
def dit_file(tmp_path):
    model = randomize(create_model("dit_s_8", **TINY_DIT))
    path = tmp_path / "DiT-tiny.pt"
    torch.save(model.state_dict(), path)  # official naming = the model's own names
    return model, path


@pytest.fixture
def uvit_file(tmp_path):
    model = randomize(create_model("uvit_l_2", **TINY_UVIT))
    path = tmp_path / "nnet_ema.pth"
    torch.save(model.state_dict(), path)
    return model, path


def official_dim_file(tmp_path: Path, name: str = "dim_s_2", **kwargs) -> tuple[torch.nn.Module, Path]:
    """A random DiM saved in the official naming, as an nnet_ema.pth file."""
    model = randomize(create_model(name, **{**TINY_DIM, **kwargs}))
    path = tmp_path / f"{name}_{model.input_size}_nnet_ema.pth"
    torch.save(dimbench_to_official(model.state_dict()), path)
    return model, path


# ---------------------------------------------------------------------------------------------------- DiT


def test_official_dit_state_dict_loads_strictly(dit_file):
    source, path = dit_file
    model = load_checkpoint("dit_s_8", path, depth=2)
    assert same_weights(source, model) and not model.training
    assert model.checkpoint_info["format"] == "dit-official" and model.num_classes == 10
    assert not model.pos_embed.requires_grad  # still the frozen table after loading
    x, t, y = torch.randn(2, 4, 16, 16), torch.tensor([3.0, 900.0]), torch.tensor([1, 9])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y), source(x, t, y), rtol=0, atol=0)


def test_dit_training_checkpoint_prefers_ema(tmp_path):
    ema = randomize(create_model("dit_s_8", **TINY_DIT), seed=1)
    raw = randomize(create_model("dit_s_8", **TINY_DIT), seed=2)
    path = tmp_path / "0400000.pt"
    # As DiT's train.py writes it, argparse.Namespace included (allowed by name, still weights_only).
    torch.save({"model": raw.state_dict(), "ema": ema.state_dict(), "opt": {}, "args": argparse.Namespace(lr=1e-4)},
               path)
    model = load_checkpoint("dit_s_8", path, depth=2)
    assert same_weights(ema, model) and not same_weights(raw, model)
    assert "EMA" in model.checkpoint_info["note"] and "EMA" in inspect_checkpoint(path)["note"]


def test_dit_at_larger_input_recomputes_pos_embed(dit_file):
    from models.dit import sincos_pos_embed_2d

    source, path = dit_file
    model = load_checkpoint("dit_s_8", path, depth=2, input_size=32)
    assert model.input_size == 32 and model.pos_embed.shape == (1, 16, 384)
    torch.testing.assert_close(model.pos_embed[0], sincos_pos_embed_2d(384, 4), rtol=0, atol=0)
    torch.testing.assert_close(model.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight, rtol=0, atol=0)
    assert model(torch.randn(1, 4, 32, 32), torch.tensor([10.0])).shape == (1, 8, 32, 32)


# ---------------------------------------------------------------------------------------------------- U-ViT


def test_official_uvit_state_dict_loads_strictly(uvit_file):
    source, path = uvit_file
    model = load_checkpoint("uvit_l_2", path, depth=4, width=64, heads=4)
    assert same_weights(source, model)
    assert model.checkpoint_info["format"] == "uvit-official"
    assert model.num_classes == 10 and model.label_emb.weight.shape[0] == 11  # null row read as such
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([1.0, 1000.0]), torch.tensor([0, 5])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y), source(x, t, y), rtol=0, atol=0)


def test_uvit_at_larger_input_resizes_pos_embed(uvit_file):
    source, path = uvit_file
    model = load_checkpoint("uvit_l_2", path, depth=4, width=64, heads=4, input_size=16)
    assert model.pos_embed.shape == (1, 2 + 64, 64)
    torch.testing.assert_close(model.pos_embed[:, :2], source.pos_embed[:, :2], rtol=0, atol=0)
    # Halving the 8x8 grid back (bilinear at scale 1/2 = 2x2 average) is not the identity, but it stays close:
    # the resized table is an interpolation of the original, not a fresh initialisation.
    assert not torch.equal(model.pos_embed[:, 2:18], source.pos_embed[:, 2:18])
    assert model(torch.randn(1, 4, 16, 16), torch.tensor([500.0]), torch.tensor([2])).shape == (1, 4, 16, 16)


# ---------------------------------------------------------------------------------------------------- DiM


def test_dim_oracle_loads_through_official_path(tmp_path, oracle):
    path = tmp_path / "nnet_ema.pth"
    torch.save(oracle["state_dict"], path)
    info = inspect_checkpoint(path)
    assert info["format"] == "dim-official"
    assert (info["width"], info["depth"], info["patch"], info["grid"], info["classes"]) == (64, 7, 2, 8, 10)

    model = load_checkpoint("dim_s_2", path, depth=7, width=64)  # 4 input channels and 10 classes: from the file
    assert (model.input_size, model.in_channels, model.num_classes) == (16, 4, 10)
    assert model.pad_layout == "lateral" and model.checkpoint_info["pad_layout"] == "lateral"
    # Converted layouts: (1, d, 3) pad vectors -> rows p0..p2; (1, 3, d) q-tokens -> (3, d).
    sd = oracle["state_dict"]
    torch.testing.assert_close(model.pad_tokens, sd["a4m_adapter.pad_token"][0].t(), rtol=0, atol=0)
    torch.testing.assert_close(model.q_tokens, sd["a4m_adapter.pad_token_dec_split"][0], rtol=0, atol=0)
    # The path end to end (the DiM tests check the match to float32 rounding; here a looser bound suffices).
    with torch.no_grad():
        out = model(oracle["inputs"]["x"], oracle["inputs"]["t"], oracle["inputs"]["y"])
    ref = oracle["output"]
    assert ((out - ref).norm() / ref.norm()).item() < 1e-4


def test_dim_256_grid_checkpoint_runs_at_512(tmp_path):
    source, path = official_dim_file(tmp_path, input_size=32)  # 16x16 tokens: a "256-px release"
    model = load_checkpoint("dim_s_2", path, depth=3, width=32, input_size=64)
    assert model.pad_layout == "cyclic" and "upsampling" in model.checkpoint_info["pad_layout_reason"]
    assert model.pos_embed.shape == (1, 2 + 32 * 32, 32)
    torch.testing.assert_close(model.pos_embed[:, :2], source.pos_embed[:, :2], rtol=0, atol=0)
    with torch.no_grad():
        out = model(torch.randn(1, 4, 64, 64), torch.tensor([500.0]), torch.tensor([3]))
    assert out.shape == (1, 4, 64, 64) and torch.isfinite(out).all()
    # Same size as trained: the 256-px releases' layout.
    assert load_checkpoint("dim_s_2", path, depth=3, width=32).pad_layout == "lateral"


def test_dim_512_finetune_defaults_to_cyclic_and_explicit_wins(tmp_path):
    _, path = official_dim_file(tmp_path, input_size=64)  # 32x32 tokens: the 512 fine-tune's grid
    assert load_checkpoint("dim_s_2", path, depth=3, width=32).pad_layout == "cyclic"
    assert load_checkpoint("dim_s_2", path, depth=3, width=32, pad_layout="lateral").pad_layout == "lateral"


def test_choose_pad_layout_rules():
    assert choose_pad_layout(None, 16, 16)[0] == "lateral"  # 256-px release as trained
    assert choose_pad_layout(None, 16, 32)[0] == "cyclic"  # 256 -> 512 weak-to-strong / upsampling
    assert choose_pad_layout(None, 32, 32)[0] == "cyclic"  # 512 fine-tune
    assert choose_pad_layout(None, 32, 64)[0] == "cyclic"  # 512 -> 1024 training-free upsampling
    assert choose_pad_layout(None, 16, 16, saved="cyclic")[0] == "cyclic"
    assert choose_pad_layout("lateral", 32, 64)[0] == "lateral"
    with pytest.raises(CheckpointError, match="pad_layout must be one of"):
        choose_pad_layout("zigzag", 16, 16)


# ---------------------------------------------------------------------------------------------------- errors


def test_dit_checkpoint_as_dim_fails(dit_file):
    _, path = dit_file
    with pytest.raises(CheckpointError, match=rf"{path}: holds a DiT checkpoint .* 'dim_h_2' is a DiM model"):
        load_checkpoint("dim_h_2", path)


def test_width_1024_dim_checkpoint_as_dim_h_fails_naming_parameter(tmp_path):
    # A DiM-L-width checkpoint (d = 1024 > 512: the split skip fusion), shrunk in depth and classes to stay cheap.
    with torch.device("meta"):
        skeleton = create_model("dim_l_2", depth=3, num_classes=10)
    zero = torch.zeros(())
    state = {k: zero.expand(v.shape) for k, v in skeleton.state_dict().items()}  # stride-0 views: a tiny file
    path = tmp_path / "dim_l_nnet_ema.pth"
    torch.save(dimbench_to_official(state), path)
    assert inspect_checkpoint(path)["width"] == 1024
    with pytest.raises(CheckpointError) as err:
        load_checkpoint("dim_h_2", path, depth=3)
    msg = str(err.value)
    assert msg.startswith(f"{path}: does not fit model 'dim_h_2' (width 1536")
    assert "parameter 'pos_embed': expected shape (1, 258, 1536), found (1, 258, 1024)" in msg


def test_truncated_file_fails(dit_file, tmp_path):
    _, path = dit_file
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=rf"{cut}: cannot be read as a PyTorch checkpoint \(truncated"):
        load_checkpoint("dit_s_8", cut, depth=2)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=rf"{text}: cannot be read"):
        inspect_checkpoint(text)
    with pytest.raises(CheckpointError, match="no such file"):
        inspect_checkpoint(tmp_path / "missing.pt")


def test_missing_unexpected_and_mismatched_parameters(dit_file, tmp_path):
    source, _ = dit_file
    sd = source.state_dict()
    missing = tmp_path / "missing.pt"
    torch.save({k: v for k, v in sd.items() if k != "blocks.1.mlp.fc2.bias"}, missing)
    with pytest.raises(CheckpointError, match=r"parameter 'blocks.1.mlp.fc2.bias' \(shape \(384,\)\) is missing"):
        load_checkpoint("dit_s_8", missing, depth=2)

    extra = tmp_path / "extra.pt"
    torch.save({**sd, "blocks.0.attn.q_norm.weight": torch.ones(64)}, extra)
    with pytest.raises(CheckpointError, match=r"1 unexpected parameter\(s\).*'blocks.0.attn.q_norm.weight'"):
        load_checkpoint("dit_s_8", extra, depth=2)

    wrong = tmp_path / "wrong.pt"
    torch.save({**sd, "blocks.1.attn.proj.weight": torch.zeros(384, 380)}, wrong)
    with pytest.raises(CheckpointError, match=r"'blocks.1.attn.proj.weight': expected shape \(384, 384\), found "
                       r"\(384, 380\)"):
        load_checkpoint("dit_s_8", wrong, depth=2)

    # Another width under the same family: named on its first parameter, before anything is loaded.
    with pytest.raises(CheckpointError, match=r"expected shape \(1, 4, 768\), found \(1, 4, 384\)"):
        load_checkpoint("dit_b_8", missing, depth=2)


def test_not_a_state_dict_and_wrong_format(dit_file, tmp_path):
    _, path = dit_file
    junk = tmp_path / "junk.pt"
    torch.save({"step": 3, "weights": [1, 2]}, junk)
    with pytest.raises(CheckpointError, match=rf"{junk}: not a state_dict: entry 'step' is a int"):
        inspect_checkpoint(junk)
    unknown = tmp_path / "unknown.pt"
    torch.save({"encoder.weight": torch.zeros(2)}, unknown)
    with pytest.raises(CheckpointError, match="not a DiM, DiT, U-ViT, DiCo, DiG or SANA-cc state_dict"):  # every family
        inspect_checkpoint(unknown)
    with pytest.raises(CheckpointError, match="format 'uvit-official' was requested but the file is 'dit-official'"):
        load_checkpoint("uvit_l_2", path, format="uvit-official")
    with pytest.raises(CheckpointError, match="unknown model 'dit_q_2'"):
        load_checkpoint("dit_q_2", path)
    with pytest.raises(CheckpointError, match="pad_layout applies to DiM models only"):
        load_checkpoint("dit_s_8", path, depth=2, pad_layout="cyclic")


# ---------------------------------------------------------------------------------------------------- save / inspect


def test_save_inspect_load_round_trip_dit(dit_file, tmp_path):
    source, _ = dit_file
    path = tmp_path / "mine.pt"
    save_checkpoint(source, path)
    info = inspect_checkpoint(path)
    assert info["format"] == "dimbench" and info["model"] == "dit_s_8" and info["family"] == "dit"
    assert (info["width"], info["depth"], info["patch"], info["grid"], info["in_channels"]) == (384, 2, 8, 2, 4)
    assert info["classes"] == 10 and info["params"] == sum(p.numel() for p in source.parameters())
    loaded = load_checkpoint("dit_s_8", path)  # the saved config rebuilds the shrunk depth
    assert same_weights(source, loaded)
    with pytest.raises(CheckpointError, match="holds dimbench model 'dit_s_8', not 'dit_s_2'"):
        load_checkpoint("dit_s_2", path)


def test_save_refuses_meta_and_unnamed_models(tmp_path):
    with torch.device("meta"):
        meta = create_model("dit_s_8", **TINY_DIT)
    with pytest.raises(CheckpointError, match="on the meta device"):
        save_checkpoint(meta, tmp_path / "meta.pt")
    from models.dit import DiT

    with pytest.raises(CheckpointError, match="no model_name"):
        save_checkpoint(DiT(input_size=8, patch_size=8, depth=1, width=64, heads=2), tmp_path / "x.pt")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_official_dit_named_like_official_architecture(tmp_path):
    with torch.device("meta"):
        skeleton = create_model("dit_xl_2")
    # A file with the official DiT-XL/2 shapes is recognised by name and counted exactly. Each tensor is a
    # broadcast view of one zero (stride 0): torch.save stores one element per tensor, so the file is tiny.
    path = tmp_path / "DiT-XL-2-256x256.pt"
    zero = torch.zeros((), dtype=torch.float16)
    torch.save({k: zero.expand(v.shape) for k, v in skeleton.state_dict().items()}, path)
    assert path.stat().st_size < 1_000_000
    info = inspect_checkpoint(path)
    assert info["architecture"] == "DiT-XL/2" and info["params"] == 675_129_632 and info["input_size"] == 32


def test_load_resized_state_dict_each_family(tmp_path):
    dit_small = randomize(create_model("dit_s_8", **TINY_DIT))
    dit_big = create_model("dit_s_8", **{**TINY_DIT, "input_size": 32})
    load_resized_state_dict(dit_big, dit_small.state_dict())
    torch.testing.assert_close(dit_big.final_layer.linear.weight, dit_small.final_layer.linear.weight)

    uvit_small = randomize(create_model("uvit_l_2", **TINY_UVIT))
    uvit_big = create_model("uvit_l_2", **{**TINY_UVIT, "input_size": 16})
    load_resized_state_dict(uvit_big, uvit_small.state_dict())
    assert torch.equal(uvit_big.pos_embed[:, :2], uvit_small.pos_embed[:, :2])

    dim_small = randomize(create_model("dim_s_2", **{**TINY_DIM, "input_size": 32}))
    dim_big = create_model("dim_s_2", **{**TINY_DIM, "input_size": 64})
    load_resized_state_dict(dim_big, dimbench_to_official(dim_small.state_dict()))  # official names converted
    assert torch.equal(dim_big.pad_tokens, dim_small.pad_tokens)
    assert dim_big.pos_embed.shape == (1, 2 + 32 * 32, 32)

    with pytest.raises(CheckpointError, match=r"state_dict: does not fit .*'blocks.0.attn.qkv.weight'"):
        load_resized_state_dict(create_model("dit_s_8", **TINY_DIT), {**dit_small.state_dict(),
                                "blocks.0.attn.qkv.weight": torch.zeros(3, 3)})


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_convert_then_inspect(dit_file, tmp_path):
    source, _ = dit_file
    saved = tmp_path / "saved.pt"
    save_checkpoint(source, saved)  # its config keeps the shrunk depth, so the registered name fits it
    out, err = io.StringIO(), io.StringIO()
    dest = tmp_path / "converted.pt"
    rc = checkpoint_cli.convert(str(saved), str(dest), model="dit_s_8", input_size=32, stdout=out, stderr=err)
    assert rc == 0 and err.getvalue() == ""
    assert out.getvalue().startswith(f"wrote {dest}: dimbench checkpoint of dit_s_8")
    assert "input_size 32" in out.getvalue()

    out = io.StringIO()
    assert checkpoint_cli.inspect(str(dest), stdout=out) == 0
    text = out.getvalue()
    assert "format: dimbench" in text and "model: dit_s_8" in text and "input size (grid x patch): 32" in text
    converted = load_checkpoint("dit_s_8", dest)
    assert converted.input_size == 32
    torch.testing.assert_close(converted.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)


def test_cli_convert_errors_are_one_line_exit_2(dit_file, tmp_path):
    _, path = dit_file
    err = io.StringIO()
    # The architecture comes from the name: the registered 12-block dit_s_8 does not fit a 2-block file.
    rc = checkpoint_cli.convert(str(path), str(tmp_path / "o.pt"), model="dit_s_8", stderr=err)
    assert rc == 2 and err.getvalue().count("\n") == 1
    assert err.getvalue().startswith("dimbench checkpoint convert: error: ") and str(path) in err.getvalue()
    assert not (tmp_path / "o.pt").exists()

    err = io.StringIO()
    assert checkpoint_cli.convert(str(path), str(path), model="dit_s_8", stderr=err) == 2
    assert "must differ" in err.getvalue()
    err = io.StringIO()
    assert checkpoint_cli.inspect(str(tmp_path / "nope.pt"), stderr=err) == 2
    assert "no such file" in err.getvalue() and err.getvalue().count("\n") == 1


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


@pytest.mark.slow
def test_cli_subprocess_exit_codes(uvit_file, tmp_path):
    """The argparse wiring end to end: through dimbench.cli when it exists, else the module's own entry."""
    _, path = uvit_file
    entry = ["-m", "dimbench.cli", "checkpoint"] if (ROOT / "dimbench" / "cli.py").is_file() else [
        "-m", "dimbench.checkpoint_cli"]
    ok = _run([*entry, "inspect", str(path), "--json"])
    assert ok.returncode == 0, ok.stderr
    assert '"format": "uvit-official"' in ok.stdout and '"class_rows": 11' in ok.stdout
    bad = _run([*entry, "convert", str(path), str(tmp_path / "o.pt"), "--model", "dim_h_2"])
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().count("\n") == 0 and "U-ViT checkpoint" in bad.stderr


@pytest.mark.cuda
def test_load_to_cuda_matches_cpu(dit_file, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    source, path = dit_file
    model = load_checkpoint("dit_s_8", path, depth=2, map_location="cuda")
    assert next(model.parameters()).device.type == "cuda"
    x, t, y = torch.randn(2, 4, 16, 16), torch.tensor([3.0, 900.0]), torch.tensor([1, 9])
    with torch.no_grad():
        ref = source(x, t, y)
        out = model(x.cuda(), t.cuda(), y.cuda()).cpu()
    assert ((out - ref).norm() / ref.norm()).item() < 1e-4


def test_a_pickled_object_is_refused_without_suggesting_an_unsafe_load(tmp_path):
    """Checkpoints are untrusted: a pickle holding a callable is refused by the safe loader, and the message
    must not pass on torch's advice to retry with weights_only=False."""
    import pickle

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"x": os.getcwd}, f)
    with pytest.raises(CheckpointError) as err:
        inspect_checkpoint(str(path))
    message = str(err.value)
    assert str(path) in message and "safe loader refuses" in message
    assert "weights_only set to False" not in message and "weights_only=False" not in message


def test_a_plain_pickle_is_not_a_pytorch_checkpoint(tmp_path):
    """pickle.dump output (not torch.save's format) is named as such, not as torch's 'Unsupported operand 149'."""
    import pickle

    for protocol, payload in ((4, {"a": 1}), (2, {"a": 1}), (5, {"w": torch.ones(3)})):
        path = tmp_path / f"plain{protocol}.pkl"
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=protocol)
        with pytest.raises(CheckpointError) as err:
            load_checkpoint("dit_s_8", path)
        message = str(err.value)
        assert message.startswith(f"{path}: not a PyTorch checkpoint file but a plain Python pickle"), message
        assert "safe loader refuses" in message and "weights_only" not in message and "operand" not in message
    # torch.save's legacy (pre-zip) format is also a pickle stream, and still reads.
    legacy = tmp_path / "legacy.pt"
    torch.save(randomize(create_model("dit_s_8", **TINY_DIT)).state_dict(), legacy,
               _use_new_zipfile_serialization=False)
    assert inspect_checkpoint(legacy)["format"] == "dit-official"


def test_a_folder_given_as_checkpoint_says_so(tmp_path):
    (tmp_path / "nnet_ema.pth").mkdir()  # e.g. an unpacked release, or the run folder instead of its file
    for call in (lambda p: inspect_checkpoint(p), lambda p: load_checkpoint("dim_h_2", p)):
        with pytest.raises(CheckpointError, match=rf"^{tmp_path / 'nnet_ema.pth'}: is a folder; expected a checkpoint"):
            call(tmp_path / "nnet_ema.pth")
    err = io.StringIO()
    assert checkpoint_cli.inspect(str(tmp_path), stderr=err) == 2
    assert "is a folder" in err.getvalue() and err.getvalue().count("\n") == 1


def test_integer_weights_are_refused_naming_the_parameter(dit_file, tmp_path):
    source, _ = dit_file
    sd = source.state_dict()
    path = tmp_path / "int.pt"
    torch.save({**sd, "blocks.1.attn.proj.weight": torch.ones(384, 384, dtype=torch.int64)}, path)
    expected = r"parameter 'blocks.1.attn.proj.weight': expected floating-point values, found torch.int"
    with pytest.raises(CheckpointError, match=rf"^{path}: does not fit .*{expected}64"):
        load_checkpoint("dit_s_8", path, depth=2)
    target = create_model("dit_s_8", **TINY_DIT)
    with pytest.raises(CheckpointError, match=rf"^state_dict: does not fit .*{expected}32"):
        load_resized_state_dict(target, {**sd, "blocks.1.attn.proj.weight": torch.ones(384, 384, dtype=torch.int32)})
    # Half precision is floating point: it loads (cast to the model's dtype), as official fp16 exports do.
    half = tmp_path / "half.pt"
    torch.save({k: v.half() for k, v in sd.items()}, half)
    assert load_checkpoint("dit_s_8", half, depth=2).blocks[1].attn.proj.weight.dtype == torch.float32


def test_non_finite_weights_are_refused_naming_the_parameter(dit_file, tmp_path):
    source, _ = dit_file
    sd = source.state_dict()
    nan = tmp_path / "nan.pt"
    torch.save({**sd, "blocks.0.mlp.fc1.bias": torch.full((1536,), float("nan"))}, nan)
    with pytest.raises(CheckpointError, match=rf"^{nan}: parameter 'blocks.0.mlp.fc1.bias' holds non-finite "
                       r"values: 1536 NaN of 1536 values$"):
        load_checkpoint("dit_s_8", nan, depth=2)

    weight = sd["final_layer.linear.weight"].clone()
    weight[0, :3] = float("inf")
    weight[1, 0] = float("nan")
    bad = {**sd, "final_layer.linear.weight": weight}
    inf = tmp_path / "inf.pt"
    torch.save(bad, inf)
    with pytest.raises(CheckpointError, match=r"'final_layer.linear.weight' holds non-finite values: 1 NaN and 3 "
                       rf"infinite of {weight.numel()} values"):
        load_checkpoint("dit_s_8", inf, depth=2)
    with pytest.raises(CheckpointError, match=r"^state_dict: parameter 'final_layer.linear.weight' holds non-finite"):
        load_resized_state_dict(create_model("dit_s_8", **TINY_DIT), bad)


def test_options_a_family_does_not_declare_or_allow_are_refused(dit_file, tmp_path):
    _, path = official_dim_file(tmp_path)
    with pytest.raises(CheckpointError, match="pad_layout must be one of lateral, cyclic, got 'zigzag'"):
        load_checkpoint("dim_s_2", path, depth=3, width=32, pad_layout="zigzag")
    with pytest.raises(CheckpointError, match="pad_layout applies to DiM models only; 'uvit_l_2' is a U-ViT model"):
        load_checkpoint("uvit_l_2", dit_file[1], pad_layout="lateral")
    with pytest.raises(CheckpointError, match=r"unknown checkpoint format 'dim'; expected one of auto, dimbench, "):
        load_checkpoint("dim_s_2", path, format="dim")


# ------------------------------------------------------------------------------------------------ pos-embed resizing


def plain_bilinear(pos: torch.Tensor, extras: int, size: tuple[int, int]) -> torch.Tensor:
    """The reference: (1, extras + g*g, D) -> (1, extras + h*w, D), grid part as a (1, D, g, g) float32 image
    through F.interpolate (bilinear, align_corners=False, no antialias), back to pos's dtype; prefix copied."""
    g, d = math.isqrt(pos.shape[1] - extras), pos.shape[2]
    image = pos[:, extras:].float().reshape(1, g, g, d).permute(0, 3, 1, 2)
    image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=False)
    grid = image.permute(0, 2, 3, 1).reshape(1, size[0] * size[1], d).to(pos.dtype)
    return torch.cat([pos[:, :extras], grid], dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("old,new", [(4, 8), (8, 4), (8, 5), (6, 9)], ids=["up2", "down2", "down-odd", "up-odd"])
def test_timm_resample_is_exactly_plain_bilinear(dtype, old, new):
    """U-ViT's and DiM's resize_pos_embed go through timm's resample_abs_pos_embed: bit-for-bit the plain
    arithmetic, for both families' prefix counts (U-ViT 1 or 2, DiM 2), up and down, fp32 and bf16."""
    from models import dim, uvit

    gen = torch.Generator().manual_seed(old * 10 + new)
    for extras in (1, 2):
        pos = torch.randn(1, extras + old * old, 24, generator=gen).to(dtype)
        out = uvit.resize_pos_embed(pos, extras, new)
        assert out.dtype == dtype and torch.equal(out, plain_bilinear(pos, extras, (new, new)))
    pos = torch.randn(1, 2 + old * old, 24, generator=gen).to(dtype)
    for size in ((new, new), (new, new + 3)):  # DiM runs non-square grids too
        out = dim.resize_pos_embed(pos, size)
        assert out.dtype == dtype and torch.equal(out, plain_bilinear(pos, 2, size))
    with pytest.raises(ValueError, match="not a square"):
        uvit.resize_pos_embed(torch.zeros(1, 2 + 6, 3), 2, 4)


# ---------------------------------------------------------------------------------------------------- declarations


def test_formats_and_names_come_from_the_family_declarations():
    import models.checkpoints as ckpt

    declared = [fmt.name for fam in models.list_families() if fam.checkpoints for fmt in fam.checkpoints.formats]
    assert ckpt.FORMATS == ("auto", "dimbench", *declared) == ckpt.formats()
    assert {"dit-official", "uvit-official", "dim-official", "dim-dimbench"} <= set(declared)
    from models.dim import PAD_LAYOUTS

    assert {k: o.values for k, o in models.family("dim").options.items()} == {"pad_layout": PAD_LAYOUTS}
    assert not hasattr(checkpoint_cli, "FORMATS") and not hasattr(checkpoint_cli, "PAD_LAYOUTS")
    # The generic module's code names no family fact (docstrings may give examples): every one comes from a
    # declaration, options included (their names and values). (That
    # it imports no family module is a rule of tests/test_architecture.py.)
    facts = {word for fam in models.list_families() for word in (
        fam.name, fam.display, *(f.name for f in fam.checkpoints.formats), *fam.options,
        *(v for o in fam.options.values() for v in o.values))}
    tree = ast.parse((ROOT / "models" / "checkpoints.py").read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            assert not facts & set(re.findall(r"[\w-]+", node.value)), node.value


class ToyNet(torch.nn.Module):
    """A family of the test's own: patch Linear + a learnable position table + a class table."""

    def __init__(self, *, input_size=4, in_channels=2, num_classes=3, patch_size=1, width=8, depth=1,
                 flavour="plain"):
        super().__init__()
        self.input_size, self.in_channels, self.num_classes = input_size, in_channels, num_classes
        self.patch_size, self.width, self.depth, self.flavour = patch_size, width, depth, flavour
        self.grid = input_size // patch_size
        self.proj = torch.nn.Linear(in_channels, width)
        self.pos_embed = torch.nn.Parameter(torch.zeros(1, self.grid**2, width))
        self.classes = torch.nn.Embedding(num_classes + 1, width)
        self.config = dict(input_size=input_size, in_channels=in_channels, num_classes=num_classes,
                           patch_size=patch_size, width=width, depth=depth, flavour=flavour)


def _toy_support():
    from models.checkpoints import CheckpointFormat, CheckpointSupport

    def describe(sd):
        width, in_channels = sd["proj.weight"].shape
        rows = sd["classes.weight"].shape[0]
        grid = math.isqrt(sd["pos_embed"].shape[1])
        return dict(width=width, depth=1, patch=1, grid=grid, in_channels=in_channels, classes=rows - 1,
                    class_rows=rows, toy_extra=True)

    def adapt(model, sd):
        return {**sd, "pos_embed": torch.zeros(model.pos_embed.shape)}  # (model: a meta-device skeleton)

    def choose(given, saved, description, settings):
        upsampled = settings["input_size"] > description["grid"]
        flavour = given.get("flavour") or ("wide" if upsampled else saved.get("flavour", "plain"))
        return {"flavour": (flavour, "upsampled" if upsampled and "flavour" not in given else "chosen")}

    official = CheckpointFormat(
        "toy-official", detect=lambda sd: any(k.startswith("toy.") for k in sd),
        convert=lambda sd: {k.removeprefix("toy."): v for k, v in sd.items()},
    )
    return CheckpointSupport(formats=(official,), describe=describe, adapt=adapt, choose_options=choose,
                             labels={"toy_extra": "toy extra"})


@pytest.fixture
def toy_family():
    from models.registry import Family, Timestep, register_family, register_model, unregister_family

    fam = register_family(Family(
        name="toy", display="Toy", description="a test family", timestep=Timestep(0, 9, True, "step"),
        sizes={(1, 8): "T"}, options={"flavour": ("plain", "wide")}, module_types=(ToyNet,),
        checkpoints=_toy_support(),
    ))
    register_model("toy_1", family="toy", official="none", input_size=4, in_channels=2, num_classes=3,
                   patch_size=1)(ToyNet)
    yield fam
    unregister_family("toy")


def test_a_family_declared_in_its_own_file_needs_nothing_else(toy_family, tmp_path):
    import models.checkpoints as ckpt

    assert "toy-official" in ckpt.FORMATS
    source = randomize(ToyNet(num_classes=5))
    path = tmp_path / "toy.pt"
    torch.save({f"toy.{k}": v for k, v in source.state_dict().items()}, path)
    info = inspect_checkpoint(path)
    assert (info["format"], info["family"], info["architecture"], info["classes"]) == (
        "toy-official", "toy", "Toy-T/1", 5)
    assert info["toy_extra"] is True
    model = load_checkpoint("toy_1", path)  # classes from the file, flavour by the family's rule
    assert model.num_classes == 5 and torch.equal(model.classes.weight, source.classes.weight)
    assert model.checkpoint_info["options"] == {"flavour": "plain"}
    bigger = load_checkpoint("toy_1", path, input_size=8)
    assert bigger.flavour == "wide" and bigger.checkpoint_info["flavour_reason"] == "upsampled"
    assert load_checkpoint("toy_1", path, flavour="wide").checkpoint_info["flavour_reason"] == "chosen"
    with pytest.raises(CheckpointError, match="flavour must be one of plain, wide, got 'spicy'"):
        load_checkpoint("toy_1", path, flavour="spicy")
    with pytest.raises(CheckpointError, match="pad_layout applies to DiM models only; 'toy_1' is a Toy model"):
        load_checkpoint("toy_1", path, pad_layout="cyclic")
    with pytest.raises(CheckpointError, match=rf"{path}: holds a Toy checkpoint \(toy-official\), but 'dim_s_2'"):
        load_checkpoint("dim_s_2", path)
    saved = tmp_path / "saved.pt"
    save_checkpoint(bigger, saved)
    again = load_checkpoint("toy_1", saved)
    assert again.flavour == "wide" and inspect_checkpoint(saved)["flavour"] == "wide"
    out = io.StringIO()
    assert checkpoint_cli.inspect(str(saved), stdout=out) == 0 and "toy extra: True" in out.getvalue()


# ---------------------------------------------------------------------------------------------------- CLI choices


def test_checkpoint_parser_imports_neither_torch_nor_timm():
    code = ("import argparse, sys; from dimbench.checkpoint_cli import add_checkpoint_commands; "
            "add_checkpoint_commands(argparse.ArgumentParser().add_subparsers()); "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm')); "
            "print(heavy); sys.exit(1 if heavy else 0)")
    done = _run(["-c", code])
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_cli_bad_format_or_pad_layout_is_one_line_exit_2(tmp_path):
    _, path = official_dim_file(tmp_path)
    err = io.StringIO()
    rc = checkpoint_cli.convert(str(path), str(tmp_path / "o.pt"), model="dim_s_2", format="dim", stderr=err)
    assert rc == 2 and err.getvalue().count("\n") == 1
    assert "unknown checkpoint format 'dim'; expected one of auto, dimbench, dim-official" in err.getvalue()
    entry = ["-m", "dimbench.cli", "checkpoint"]
    bad = _run([*entry, "convert", str(path), str(tmp_path / "o.pt"), "--model", "dim_s_2", "--model-option",
                "pad_layout=diag"])
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.strip().count("\n") == 0
    assert "pad_layout must be one of lateral, cyclic, got 'diag'" in bad.stderr
    assert not (tmp_path / "o.pt").exists()
