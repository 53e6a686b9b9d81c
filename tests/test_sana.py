"""SANA-XL/2-cc, dimbench's adaptation of SANA's block: counts, the linear attention against a brute-force N x N
computation, Mix-FFN against explicit convolutions, SANA's initialisation (nothing zeroed), FLOPs, labelling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import models
from dimbench.metrics.flops import count_model_flops
from models import sana
from models.registry import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def meta_model(name: str, **kwargs) -> sana.SanaCC:
    with torch.device("meta"):
        return create_model(name, **kwargs)


def test_parameter_count_and_breakdown():
    """peers.md §2.5: 440,133,152 at 256 and 512 px (no position embedding); 15,333,120 per block."""
    for side in (32, 64):
        model = meta_model("sana_xl_2_cc", input_size=side)
        assert sum(p.numel() for p in model.parameters()) == 440_133_152
    parts = {name: sum(p.numel() for p in mod.parameters()) for name, mod in model.named_children()}
    assert parts == {"x_embedder": 19_584, "t_embedder": 1_624_320, "y_embedder": 1_153_152, "t_block": 7_969_536,
                     "blocks": 28 * 15_333_120, "final_layer": 39_200}
    block = model.blocks[0]
    assert block.attn.heads == 36 and block.attn.qkv.bias is None and block.attn.proj.bias is not None
    assert block.mlp.point_conv.conv.bias is None and block.mlp.inverted_conv.conv.out_channels == 2 * 2880
    assert not any("pos_embed" in n for n, _ in model.named_parameters()) and not list(model.buffers())


def brute_force(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
    """Σ_j (relu(q_i)·relu(k_j)) v_j / (Σ_j relu(q_i)·relu(k_j) + ε) with the N x N matrix, float64."""
    scores = F.relu(q) @ F.relu(k).transpose(-1, -2)  # (B, H, N, N)
    return (scores @ v) / (scores.sum(-1, keepdim=True) + eps)


def test_linear_attention_equals_the_brute_force_computation_with_an_all_negative_query():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 11, 32, generator=gen, dtype=torch.float64) for _ in range(3))
    q[0, 1, 4] = -q[0, 1, 4].abs() - 0.1  # a query whose ReLU is all zero: 0 / ε
    out = sana.relu_linear_attention(q, k, v)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, brute_force(q, k, v, 1e-8), rtol=1e-12, atol=1e-12)
    assert torch.equal(out[0, 1, 4], torch.zeros(32, dtype=torch.float64))
    # Where the denominator is tiny, ε matters: 1e-8 (the official blocks'), not 1e-15 (the class default).
    k_small = F.relu(k) * 1e-6
    q_one = torch.zeros_like(q)
    q_one[..., 0] = 1.0
    k_small[..., 0] = 1e-9
    got = sana.relu_linear_attention(q_one, k_small, v)
    torch.testing.assert_close(got, brute_force(q_one, k_small, v, 1e-8), rtol=1e-12, atol=1e-15)
    assert not torch.allclose(got, brute_force(q_one, k_small, v, 1e-15))


def test_linear_attention_core_runs_in_float32_under_autocast():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 9, 32, generator=gen).bfloat16() for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sana.relu_linear_attention(q, k, v)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), brute_force(q.double(), k.double(), v.double(), 1e-8), rtol=1e-5,
                               atol=1e-5)


def test_mix_ffn_is_the_official_composition_of_three_convolutions():
    torch.manual_seed(0)
    ffn = sana.MixFFN(8, 2.5).double()
    x = torch.randn(2, 9, 8, dtype=torch.float64)  # 3 x 3 tokens, row-major
    image = x.reshape(2, 3, 3, 8).permute(0, 3, 1, 2)
    w1, w2, w3 = ffn.inverted_conv.conv, ffn.depth_conv.conv, ffn.point_conv.conv
    h = F.silu(F.conv2d(image, w1.weight, w1.bias))
    h = F.conv2d(h, w2.weight, w2.bias, padding=1, groups=40)
    h = F.conv2d(h[:, :20] * F.silu(h[:, 20:]), w3.weight)
    torch.testing.assert_close(ffn(x, 3), h.flatten(2).transpose(1, 2), rtol=1e-12, atol=1e-12)


def test_official_sana_initialisation_zeroes_nothing():
    torch.manual_seed(0)
    model = create_model("sana_tiny_4_cc")
    out = model(torch.randn(2, 1, 16, 16), torch.tensor([0, 999]), torch.tensor([2, 10]))
    assert out.abs().mean() > 0  # no adaLN-Zero: a fresh SANA predicts something
    assert model.final_layer.linear.weight.count_nonzero() == model.final_layer.linear.weight.numel()
    assert model.x_embedder.proj.bias.count_nonzero() > 0  # PyTorch's default bias, not zeroed
    table = torch.cat([b.scale_shift_table.flatten() for b in model.blocks])
    assert table.std().item() == pytest.approx(64**-0.5, rel=0.15)  # randn / sqrt(C)
    assert model.t_block[1].weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_flop_counts_pinned():
    """peers.md §2.5: 110.34 / 441.32 GMACs, the linear-attention core 2·h·(d+1)·d per token counted as two
    matrix products."""
    for side, flops in ((32, 220_672_327_680), (64, 882_631_802_880)):
        model = meta_model("sana_xl_2_cc", input_size=side)
        with torch.device("meta"):
            x, t = torch.empty(1, 4, side, side), torch.empty(1, dtype=torch.long)
        assert count_model_flops(model, x, t, t).flops == flops
    assert (round(220_672_327_680 / 2e9, 2), round(882_631_802_880 / 2e9, 2)) == (110.34, 441.32)
    tokens, blocks = 256, 28
    per_token_block = 15_389_568  # peers.md §2.5
    assert per_token_block * tokens * blocks < 220_672_327_680 / 2 < per_token_block * tokens * blocks * 1.001


def test_it_is_labelled_an_adaptation_everywhere():
    fam = models.family_of_model("sana_xl_2_cc")
    assert "ADAPTATION" in fam.adaptation and "ADAPTATION" in fam.description
    assert models.model_info("sana_xl_2_cc").official.startswith("adaptation")
    assert "ADAPTATION" in models.model_info("sana_xl_2_cc").description
    assert not any(models.family(f).adaptation for f in ("dico", "dig", "dit", "uvit", "dim"))


def test_every_result_row_of_an_adaptation_says_so():
    from dimbench.worker import adaptation_note

    assert adaptation_note("sana_xl_2_cc").startswith("; model: ADAPTATION of SANA")
    assert adaptation_note("dit_xl_2") == "" and adaptation_note("not_a_model") == ""
