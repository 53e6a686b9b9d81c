"""DiCo against its official release: exact counts, names and shapes, the tiny oracle, initialisation, FLOPs.

Oracles (tests/data/README.md): the official code's parameter manifests and a tiny model's outputs; the counts
and FLOP totals are peers.md §1.4-1.5's measurements of the official definitions.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

import models
from dimbench.metrics.flops import count_model_flops
from models.dico import DiCo
from models.registry import create_model

DATA = Path(__file__).parent / "data"
SIZES = ("s", "b", "l", "xl", "h")
OFFICIAL_COUNTS = {"s": 33_137_672, "b": 129_992_712, "l": 463_897_992, "xl": 701_151_368, "h": 1_037_408_328}
# FlopCounterMode totals at batch 1 (FLOPs, 2 per MAC), 256 and 512 px (peers.md §1.5).
FCM_FLOPS = {
    "s": (8_472_952_832, 33_807_073_280),
    "b": (33_711_587_328, 134_510_149_632),
    "l": (120_337_547_264, 480_008_241_152),
    "xl": (174_441_938_944, 695_719_837_696),
    "h": (388_058_724_352, 1_549_830_830_080),
}

pytestmark = pytest.mark.usefixtures("one_thread")


def meta_model(name: str, **kwargs) -> DiCo:
    with torch.device("meta"):
        return create_model(name, **kwargs)


def meta_inputs(model, side: int):
    with torch.device("meta"):
        return (torch.empty(1, model.in_channels, side, side), torch.empty(1, dtype=torch.long),
                torch.empty(1, dtype=torch.long))


@pytest.fixture(scope="module")
def oracle():
    return torch.load(DATA / "dico_tiny_official.pt", weights_only=True)


@pytest.fixture(scope="module")
def manifests():
    with gzip.open(DATA / "peers_manifests.json.gz", "rt") as f:
        return json.load(f)


@pytest.mark.parametrize("size", SIZES)
def test_parameter_count_and_manifest_match_the_official_code(size, manifests):
    model = meta_model(f"dico_{size}")
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_COUNTS[size]
    assert not list(model.buffers())
    official = manifests[f"DiCo-{size.upper()}"]
    assert official["total"] == OFFICIAL_COUNTS[size] and not official["buffers"]
    ours = {name: list(p.shape) for name, p in model.named_parameters()}
    assert ours == {name: shape for name, shape in official["params"]}


def test_xl_breakdown_localises_each_part():
    """peers.md §1.4's per-module counts of DiCo-XL."""
    model = meta_model("dico_xl")

    def count(*prefixes: str) -> int:
        return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefixes))

    assert count("x_embedder.") == 15_392
    assert [count(f"t_embedder_{i}.") for i in (1, 2, 3)] == [280_384, 906_880, 3_198_208]
    assert count("y_embedder.") == 2_914_912
    assert [count(f"{level}.") for level in models.dico.LEVELS] == [20_329_920, 81_154_944, 360_322_560,
                                                                    81_154_944, 81_154_944]
    assert [count(f"{m}.") for m in ("down1_2", "down2_3", "up3_2", "up2_1")] == [778_752, 3_115_008, 49_840_128,
                                                                                  12_460_032]
    assert [count(f"reduce_chan_level{i}.") for i in (2, 1)] == [1_385_280, 693_056]
    assert count("final_layer.") == 1_446_024


def test_matches_the_official_tiny_model(oracle):
    cfg = oracle["config"]
    model = DiCo(input_size=8, num_classes=cfg["num_classes"], width=cfg["hidden_size"], depths=cfg["depth"],
                 mlp_ratio=cfg["mlp_ratio"]).eval()
    model.load_state_dict(oracle["state_dict"], strict=True)
    assert sum(p.numel() for p in model.parameters()) == oracle["n_params"]
    x, t, y = oracle["inputs"]
    with torch.no_grad():
        out = model(x, t, y)
    torch.testing.assert_close(out, oracle["output"], atol=1e-5, rtol=1e-5)


def test_official_state_dict_loads_through_load_checkpoint(oracle, tmp_path):
    """A released-format file (plain state_dict, official names) of any DiCo size loads strictly under a DiCo name:
    width, blocks per level and classes are read from the shapes."""
    path = tmp_path / "dico.pt"
    torch.save(oracle["state_dict"], path)
    info = models.inspect_checkpoint(path)
    assert (info["format"], info["family"], info["width"], info["depths"]) == ("dico-official", "dico", 16,
                                                                              [1, 2, 1, 2, 1])
    assert info["architecture"] == "DiCo (width 16, depths [1, 2, 1, 2, 1])" and info["classes"] == 10
    model = models.load_checkpoint("dico_xl", path, input_size=8)
    with torch.no_grad():
        out = model(*oracle["inputs"])
    torch.testing.assert_close(out, oracle["output"], atol=1e-5, rtol=1e-5)


def test_released_size_is_named_by_its_shapes(tmp_path):
    model = create_model("dico_s", depths=(1, 1, 1, 1, 1))
    sd = model.state_dict()
    desc = models.dico.describe_state_dict(sd)
    assert desc["depths"] == [1, 1, 1, 1, 1] and desc["architecture"].startswith("DiCo (width 128")
    full = meta_model("dico_b").state_dict()
    assert models.dico.describe_state_dict(full)["architecture"] == "DiCo-B"


def test_fresh_model_outputs_zero_with_official_zero_init():
    model = create_model("dico_tiny")
    zeroed = [b.adaLN_modulation[-1] for level in models.dico.LEVELS for b in getattr(model, level)]
    zeroed += [model.final_layer.adaLN_modulation[-1], model.final_layer.out_proj]
    assert all(m.weight.count_nonzero() == 0 and m.bias.count_nonzero() == 0 for m in zeroed)
    out = model(torch.randn(2, 1, 16, 16), torch.tensor([0, 999]), torch.tensor([3, 9]))
    assert out.shape == (2, 2, 16, 16) and out.count_nonzero() == 0
    assert model.x_embedder.proj.weight.count_nonzero() > 0 and model.encoder_level_1[0].conv2.bias.abs().sum() == 0


def test_conv_xavier_uses_the_4d_fans():
    """Every conv weight Xavier-uniform on its 4-D tensor: a depth-wise 3x3 has fan_in 9, fan_out 9·D; the stem
    uses DiT's 2-D view (fan_in 4·9)."""
    torch.manual_seed(0)
    model = create_model("dico_s", depths=(4, 1, 1, 1, 1))
    dw = torch.cat([b.conv2.weight.flatten() for b in model.encoder_level_1])  # (128, 1, 3, 3) each
    bound = (6 / (9 + 9 * 128)) ** 0.5
    assert dw.abs().max() <= bound and dw.std().item() == pytest.approx(bound / 3**0.5, rel=0.05)
    ca = torch.cat([b.ca[1].weight.flatten() for b in model.encoder_level_1])  # 1x1 conv D -> D
    assert ca.std().item() == pytest.approx((6 / 256) ** 0.5 / 3**0.5, rel=0.05)
    stem = model.x_embedder.proj.weight
    assert stem.abs().max() <= (6 / (36 + 128)) ** 0.5


@pytest.mark.parametrize("size", SIZES)
def test_flop_counts_pinned(size):
    """FlopCounterMode at batch 1 equals the official code's count (conv and linear only: DiCo has no attention)."""
    for side, expected in zip((32, 64), FCM_FLOPS[size], strict=True):
        model = meta_model(f"dico_{size}", input_size=side)
        assert count_model_flops(model, *meta_inputs(model, side)).flops == expected


def test_any_side_multiple_of_four_and_no_resolution_dependent_parameter():
    small, big = meta_model("dico_s", input_size=32), meta_model("dico_s", input_size=64)
    assert [p.shape for p in small.parameters()] == [p.shape for p in big.parameters()]
    assert small(*meta_inputs(small, 48)).shape == (1, 8, 48, 48)
    with pytest.raises(ValueError, match="multiples of 4"):
        small(*meta_inputs(small, 30))
