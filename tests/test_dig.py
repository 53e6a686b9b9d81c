"""DiG against its official release: exact counts, names and shapes, the tiny oracle (through the pure-PyTorch
GLA), the scan orders and the released skip alignment, the initialisation, checkpoints and FLOPs."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

import models
from dimbench.metrics.flops import count_model_flops
from models import gla
from models.checkpoints import read_checkpoint
from models.dig import DiG, reorient, skip_alignment
from models.registry import create_model, list_models

DATA = Path(__file__).parent / "data"
# (trainable, with the frozen pos_embed at 256 px, at 512 px), peers.md §3.3.
OFFICIAL_COUNTS = {
    "dig_s_2": (32_983_328, 33_081_632, 33_376_544),
    "dig_b_2": (130_551_584, 130_748_192, 131_338_016),
    "dig_l_2": (464_760_352, 465_022_496, 465_808_928),
    "dig_xl_2": (675_659_040, 675_953_952, 676_838_688),
    "dig_s_2_skip": (34_459_808, 34_558_112, 34_853_024),
    "dig_s_2_skipzero": (34_459_808, 34_558_112, 34_853_024),
    "dig_xl_2_skip": (710_178_720, 710_473_632, 711_358_368),
    "dig_xl_2_skipzero": (710_178_720, 710_473_632, 711_358_368),
}
MANIFEST_NAME = {"dig_s_2": "DiG-S/2-bid-layer-dwconv-qdir", "dig_b_2": "DiG-B/2-bid-layer-dwconv-qdir",
                 "dig_l_2": "DiG-L/2-bid-layer-dwconv-qdir", "dig_xl_2": "DiG-XL/2-bid-layer-dwconv-qdir-head18"}

pytestmark = pytest.mark.usefixtures("one_thread")


def meta_model(name: str, **kwargs) -> DiG:
    with torch.device("meta"):
        return create_model(name, **kwargs)


@pytest.fixture(scope="module")
def oracle():
    return torch.load(DATA / "dig_tiny_official.pt", weights_only=True)


@pytest.fixture(scope="module")
def manifests():
    with gzip.open(DATA / "peers_manifests.json.gz", "rt") as f:
        return json.load(f)


def test_every_official_configuration_is_registered():
    official = [n for n in list_models("dig") if models.model_info(n).official != "dimbench"]
    assert sorted(official) == sorted(OFFICIAL_COUNTS)


@pytest.mark.parametrize("name", list(OFFICIAL_COUNTS))
def test_parameter_counts_and_manifests_match_the_official_code(name, manifests):
    base, _, variant = name.partition("_2")
    official = MANIFEST_NAME[base + "_2"] + variant.replace("_", "-")
    for side, total in ((32, OFFICIAL_COUNTS[name][1]), (64, OFFICIAL_COUNTS[name][2])):
        model = meta_model(name, input_size=side)
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == OFFICIAL_COUNTS[name][0]
        assert sum(p.numel() for p in model.parameters()) == total
        entry = manifests[f"{official}@{8 * side}px"]
        assert (entry["trainable"], entry["total_incl_frozen_pos_embed"]) == (OFFICIAL_COUNTS[name][0], total)
        ours = {n: (list(p.shape), p.requires_grad) for n, p in model.named_parameters()}
        assert ours == {n: (shape, grad) for n, shape, grad in entry["params"]}


def test_xl_block_breakdown():
    """peers.md §3.3: 23,934,592 per XL block, 18 heads of dk 32 / dv 64, SwiGLU width 3072 (L: 2816)."""
    block = meta_model("dig_xl_2").blocks[0]
    parts = {name: sum(p.numel() for p in mod.parameters()) for name, mod in block.named_children()}
    assert parts == {"norm1": 0, "attn": 5_336_704, "norm2": 0, "mlp": 10_616_832,
                     "adaLN_modulation": 7_969_536, "dw_conv": 11_520}
    assert sum(parts.values()) == 23_934_592
    attn = block.attn
    assert (attn.heads, attn.dk, attn.dv, attn.g_norm_swish_gate.weight.numel()) == (18, 32, 64, 64)
    assert models.dig.mlp_hidden(1024) == 2816 and models.dig.mlp_hidden(1152) == 3072


@pytest.mark.parametrize("backend", ["chunked", "recurrent"])
def test_matches_the_official_tiny_model(oracle, backend, monkeypatch):
    """The official code with a pure-PyTorch GLA in place of fla's kernel: within 1e-5 through ours."""
    monkeypatch.setenv(gla.ENV_VAR, backend)
    cfg = oracle["config"]
    model = DiG(input_size=cfg["input_size"], patch_size=cfg["patch_size"], num_classes=cfg["num_classes"],
                width=cfg["hidden_size"], heads=cfg["num_heads"], depth=cfg["depth"]).eval()
    model.load_state_dict(oracle["state_dict"], strict=True)
    assert sum(p.numel() for p in model.parameters()) == oracle["n_params"]
    torch.testing.assert_close(model.pos_embed, oracle["state_dict"]["pos_embed"], rtol=0, atol=1e-7)  # sin-cos
    with torch.no_grad():
        out = model(*oracle["inputs"])
    assert gla.gla_backend() == backend
    torch.testing.assert_close(out, oracle["output"], atol=1e-5, rtol=1e-5)


def test_official_state_dict_of_any_size_loads_its_shape_from_the_file(oracle, tmp_path):
    path = tmp_path / "dig.pt"
    torch.save({"model": oracle["state_dict"], "ema": oracle["state_dict"]}, path)  # a training checkpoint
    info = models.inspect_checkpoint(path)
    assert (info["format"], info["depth"], info["width"], info["heads"], info["skip"]) == ("dig-official", 4, 64,
                                                                                          2, "none")
    model = models.load_checkpoint("dig_xl_2", path)  # an XL name, a tiny file: the file's shapes rule
    assert (model.depth, model.width, model.heads, model.input_size) == (4, 64, 2, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(*oracle["inputs"]), oracle["output"], atol=1e-5, rtol=1e-5)
    skip = DiG(input_size=8, num_classes=10, width=64, heads=2, depth=8, skip="skipzero")
    torch.save(skip.state_dict(), path)
    loaded = models.load_checkpoint("dig_s_2", path)
    assert (loaded.depth, loaded.skip) == (8, "skip")
    assert read_checkpoint(path).format == "dig-official"  # not taken for DiT's (it has no qkv)


def _recorded_orders(model: DiG) -> tuple[list[list[int]], dict[int, list[int]], list[int]]:
    """Run the block loop with identity blocks on tokens whose value is their raster index: the order each block
    saw, the order of the skip each skip block got, and the order that reached the final layer."""
    grid, width = model.grid, model.width
    seen, skips, final = [], {}, []

    def identity(i):
        def run(h, c, skip=None):
            seen.append(h[0, :, 0].long().tolist())
            if skip is not None:
                skips[i] = skip[0, :, 0].long().tolist()
            return h
        return run

    for i, block in enumerate(model.blocks):
        block.forward = identity(i)
    model.x_embedder.forward = lambda x: torch.arange(grid * grid, dtype=torch.float32).reshape(1, -1, 1).expand(
        1, -1, width).clone()
    model.pos_embed.data.zero_()

    def final_layer(h, c):
        final.extend(h[0, :, 0].long().tolist())
        return torch.zeros(1, grid * grid, model.patch_size**2 * model.out_channels)

    model.final_layer.forward = final_layer
    model(torch.zeros(1, 4, model.input_size, model.input_size), torch.tensor([1]), torch.tensor([0]))
    return seen, skips, final


def test_scan_orders_cycle_through_the_four_directions():
    model = DiG(input_size=8, num_classes=10, width=32, heads=2, depth=8)
    seen, _, final = _recorded_orders(model)
    raster = list(range(16))
    column = [r * 4 + c for c in range(4) for r in range(4)]  # column-major: down each column in turn
    expected = [raster, raster[::-1], column, column[::-1]] * 2
    assert seen == expected
    assert final == raster  # depth ≡ 0 (mod 4): back in raster order before unpatchify
    after_odd = reorient(torch.arange(16.0).reshape(1, 16, 1), 1, 4)[0, :, 0].long().tolist()
    assert after_odd == column[::-1]  # reversed, then transposed


def test_skip_alignment_is_the_released_one():
    """Skips pop last-in-first-out; the one pushed after block j is in scan order (j + 1) mod 4, so every other
    skip block joins tokens at mismatched positions (depth 12: blocks 7, 9, 11; depth 28: 15, 17, ..., 27)."""
    model = DiG(input_size=8, num_classes=10, width=32, heads=2, depth=12, skip="skip")
    seen, skips, _ = _recorded_orders(model)
    assert sorted(skips) == [7, 8, 9, 10, 11]
    for i, order in skips.items():
        assert (order == seen[i]) == skip_alignment(12)[i]
    assert seen[7 - 1] != skips[7]  # not simply the previous block's input
    assert skips[8] == seen[4 + 0] and skips[11] == seen[1]  # LIFO: block 8 takes block 3's output (= block 4's input)
    assert [i for i, ok in skip_alignment(12).items() if not ok] == [7, 9, 11]
    assert [i for i, ok in skip_alignment(28).items() if not ok] == list(range(15, 28, 2))
    assert sorted(skip_alignment(28)) == list(range(15, 28))


def test_official_initialisation():
    torch.manual_seed(0)
    model = DiG(input_size=16, num_classes=10, width=384, heads=6, depth=4, skip="skipzero")
    out = model(torch.randn(2, 4, 16, 16), torch.tensor([0, 999]), torch.tensor([1, 10]))
    assert out.count_nonzero() == 0  # adaLN, final adaLN and final Linear zero
    for block in model.blocks:
        w = block.dw_conv.weight
        assert w[:, 0, 1, 1].eq(1).all() and w.sum() == w.shape[0] and block.dw_conv.bias.count_nonzero() == 0
        assert block.adaLN_modulation[-1].weight.count_nonzero() == 0
        assert block.attn.gk_proj[1].bias.count_nonzero() == 0 and block.attn.g_norm_swish_gate.weight.eq(1).all()
    q = torch.cat([b.attn.q_proj.weight.flatten() for b in model.blocks])  # (192, 384): gain 2^-2.5
    assert q.std().item() == pytest.approx(2**-2.5 * (6 / (384 + 192)) ** 0.5 / 3**0.5, rel=0.05)
    up = torch.cat([b.mlp.gate_proj.weight.flatten() for b in model.blocks])  # (2048, 384): gain 1
    assert up.std().item() == pytest.approx((6 / (384 + 2048)) ** 0.5 / 3**0.5, rel=0.05)
    deep = DiG(input_size=8, num_classes=10, width=32, heads=2, depth=8, skip="skipzero")
    fusion = deep.blocks[5].skip_linear
    assert torch.equal(fusion.weight, torch.cat([torch.eye(32), torch.zeros(32, 32)], dim=1))
    xavier = DiG(input_size=8, width=32, heads=2, depth=8, skip="skip").blocks[5].skip_linear
    assert xavier.weight[:, 32:].abs().sum() > 0


def test_depth_must_bring_the_output_back_to_raster_order():
    with pytest.raises(ValueError, match="multiple of 4"):
        DiG(input_size=8, width=32, heads=2, depth=6)


def test_flop_counts_pinned():
    """Linear and conv layers as the official code counts them (peers.md §3.3, exact at XL/2), plus the GLA core
    by its formula: 115.19 GMACs at 256 px, on par with DiT-XL/2."""
    for side, linear_conv in ((32, 229_332_123_648), (64, 915_965_116_416)):
        model = meta_model("dig_xl_2", input_size=side)
        with torch.device("meta"):
            x, t = torch.empty(1, 4, side, side), torch.empty(1, dtype=torch.long)
        count = count_model_flops(model, x, t, t)
        core = 28 * gla.gla_flops(1, 18, (side // 2) ** 2, 32, 64)
        assert count.by_op["dimbench_gla.gla"] == core
        assert count.flops == linear_conv + core
    assert round((229_332_123_648 + 28 * gla.gla_flops(1, 18, 256, 32, 64)) / 2e9, 2) == 115.19
