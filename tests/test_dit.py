"""DiT: official parameter counts, shapes on meta, position table, fused attention, adaLN-Zero init, CUDA parity."""

from __future__ import annotations

import math

import pytest
import timm.layers.config as timm_config
import torch
import torch.nn.functional as F
from timm.layers import Attention

import models.dit as dit
from models.registry import create_model, list_models, model_info

# Exact counts of the official code (4x32x32 latents, 1000 classes, frozen pos_embed counted), docs/models.md §2.2.
OFFICIAL_COUNTS = {
    ("dit_s_2", 32): 32_963_360,
    ("dit_s_8", 32): 33_148_160,
    ("dit_b_2", 32): 130_512_416,
    ("dit_b_4", 32): 130_475_648,
    ("dit_l_2", 32): 458_102_816,
    ("dit_xl_2", 32): 675_129_632,
    ("dit_xl_4", 32): 675_074_432,
    ("dit_xl_2", 64): 676_014_368,
}
DIT_NAMES = [f"dit_{s}_{p}" for s in ("s", "b", "l", "xl") for p in (2, 4, 8)]


def meta_model(name: str, **kwargs) -> dit.DiT:
    with torch.device("meta"):
        return create_model(name, **kwargs)


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Overwrite every parameter with N(0, 0.02) so that zero-initialised paths carry signal."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)


def test_all_official_names_registered():
    official = [n for n in list_models("dit") if model_info(n).official != "dimbench"]  # not dimbench's own sizes
    assert sorted(DIT_NAMES) == official


@pytest.mark.parametrize("name,input_size", list(OFFICIAL_COUNTS))
def test_parameter_count_matches_official(name, input_size):
    model = meta_model(name, input_size=input_size)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_COUNTS[(name, input_size)]


@pytest.mark.parametrize("name", DIT_NAMES)
@pytest.mark.parametrize("input_size", [32, 64])  # 256 px and 512 px latents
def test_output_shape_on_meta(name, input_size):
    model = meta_model(name, input_size=input_size)
    x = torch.empty(2, 4, input_size, input_size, device="meta")
    out = model(x, torch.empty(2, device="meta"), torch.zeros(2, dtype=torch.long, device="meta"))
    assert out.shape == (2, 8, input_size, input_size)  # learned sigma: 2 x 4 channels
    assert out.device.type == "meta"
    assert model.pos_embed.shape == (1, (input_size // model.patch_size) ** 2, model.width)


def test_attributes_and_learn_sigma_off():
    model = meta_model("dit_s_4", input_size=16, learn_sigma=False)
    assert (model.input_size, model.in_channels, model.patch_size, model.out_channels) == (16, 4, 4, 4)
    assert model.model_name == "dit_s_4"
    out = model(torch.empty(1, 4, 16, 16, device="meta"), torch.empty(1, device="meta"))
    assert out.shape == (1, 4, 16, 16)


def test_sincos_table_layout():
    """Column index in the first half, row index in the second, each half [sin | cos], float64 -> float32."""
    width, grid = 16, 5
    table = dit.sincos_pos_embed_2d(width, grid)
    assert table.shape == (grid * grid, width) and table.dtype == torch.float32
    quarter = width // 4
    for row, col in [(0, 0), (0, 3), (2, 1), (4, 4)]:
        token = row * grid + col
        for j in range(quarter):
            omega = 10000.0 ** (-j / quarter)
            expected = [
                (j, math.sin(col * omega)),
                (quarter + j, math.cos(col * omega)),
                (2 * quarter + j, math.sin(row * omega)),
                (3 * quarter + j, math.cos(row * omega)),
            ]
            for channel, value in expected:
                assert table[token, channel].item() == pytest.approx(value, abs=1e-7)


def test_pos_embed_frozen_and_recomputed_for_input_size():
    small = create_model("dit_s_8", input_size=16, depth=1)
    big = create_model("dit_s_8", input_size=32, depth=1)
    assert not small.pos_embed.requires_grad
    assert "pos_embed" in dict(small.named_parameters())  # a parameter, so official state_dicts load strictly
    torch.testing.assert_close(small.pos_embed[0], dit.sincos_pos_embed_2d(384, 2), rtol=0, atol=0)
    torch.testing.assert_close(big.pos_embed[0], dit.sincos_pos_embed_2d(384, 4), rtol=0, atol=0)


def test_attention_is_fused_even_when_timm_config_disables_it(monkeypatch):
    monkeypatch.setattr(timm_config, "_USE_FUSED_ATTN", 0)
    assert not Attention(64, num_heads=2).fused_attn  # the setting really turns timm's fused path off
    model = create_model("dit_s_8", input_size=16, depth=3)
    assert all(block.attn.fused_attn for block in model.blocks)

    calls = []
    real_sdpa = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return real_sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    model(torch.randn(2, 4, 16, 16), torch.tensor([3.0, 500.0]))
    assert calls == [torch.Size([2, 6, 4, 64])] * 3  # (batch, heads, tokens, head_dim), once per block


def test_adaln_zero_init_blocks_identity_output_zero():
    torch.manual_seed(0)
    model = create_model("dit_s_4", input_size=16, depth=3)
    x = torch.randn(2, 16, model.width)
    c = torch.randn(2, model.width)
    for block in model.blocks:
        assert torch.equal(block(x, c), x)
    out = model(torch.randn(2, 4, 16, 16), torch.tensor([0, 999]), torch.tensor([1, 7]))
    assert torch.count_nonzero(out) == 0
    # And not trivially: once the modulation is non-zero a block changes its input.
    randomize(model)
    assert not torch.allclose(model.blocks[0](x, c), x)


def test_init_statistics_follow_official():
    torch.manual_seed(0)
    model = create_model("dit_s_2", depth=2)
    fc1 = model.blocks[0].mlp.fc1.weight
    bound = math.sqrt(6.0 / (fc1.shape[0] + fc1.shape[1]))  # Xavier-uniform
    assert fc1.abs().max() <= bound and fc1.abs().max() > 0.9 * bound
    assert torch.count_nonzero(model.blocks[0].attn.qkv.bias) == 0
    assert model.y_embedder.embedding_table.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.t_embedder.mlp[0].weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.y_embedder.embedding_table.weight.shape == (1001, 384)


@pytest.mark.slow
def test_forward_backward_small_config():
    torch.manual_seed(0)
    model = create_model("dit_s_2", input_size=16)  # the official S/2 on a 16x16 latent (64 tokens, kept cheap)
    randomize(model)
    x = torch.randn(2, 4, 16, 16, requires_grad=True)
    out = model(x, torch.tensor([10.0, 990.0]), torch.tensor([3, 999]))
    assert out.shape == (2, 8, 16, 16) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert model.pos_embed.grad is None
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in trainable)
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_null_class_is_last_row():
    torch.manual_seed(0)
    model = create_model("dit_s_8", input_size=16, depth=1, num_classes=10)
    randomize(model)
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([5.0, 600.0])
    torch.testing.assert_close(model(x, t, None), model(x, t, torch.full((2,), 10)))
    assert not torch.allclose(model(x, t, None), model(x, t, torch.zeros(2, dtype=torch.long)))


def test_unpatchify_layout_p_p_c():
    """Token (i, j) feature (a*p + b)*C + c lands at pixel (i*p + a, j*p + b) of channel c."""
    model = meta_model("dit_s_2", input_size=8, depth=1)
    g, p, c_out = model.grid, model.patch_size, model.out_channels
    x = torch.arange(g * g * p * p * c_out, dtype=torch.float32).reshape(1, g * g, p * p * c_out)
    img = model.unpatchify(x)
    for i, j, a, b, c in [(0, 0, 0, 0, 0), (1, 2, 1, 0, 5), (3, 3, 1, 1, 7), (2, 0, 0, 1, 3)]:
        assert img[0, c, i * p + a, j * p + b] == x[0, i * g + j, (a * p + b) * c_out + c]


def test_adapt_state_dict_recomputes_pos_embed():
    small = create_model("dit_s_8", input_size=16, depth=1)
    big = create_model("dit_s_8", input_size=32, depth=1)
    adapted = dit.adapt_state_dict(big, small.state_dict())
    big.load_state_dict(adapted, strict=True)
    torch.testing.assert_close(big.pos_embed[0], dit.sincos_pos_embed_2d(384, 4), rtol=0, atol=0)
    torch.testing.assert_close(big.blocks[0].attn.qkv.weight, small.blocks[0].attn.qkv.weight)


@pytest.mark.cuda
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_cuda_matches_cpu(autocast, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the patch conv in true fp32, as on the CPU
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    model = create_model("dit_s_2", input_size=16, depth=4, num_classes=10)
    randomize(model)
    model.eval()
    x, t, y = torch.randn(2, 4, 16, 16), torch.tensor([1.0, 900.0]), torch.tensor([3, 7])
    with torch.no_grad():
        ref = model(x, t, y)
        gpu = model.cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            out = gpu(x.cuda(), t.cuda(), y.cuda()).float().cpu()
    rel = ((out - ref).norm() / ref.norm()).item()
    # fp32: only the summation order differs from the CPU; bf16 keeps 8 mantissa bits.
    assert rel < (2e-2 if autocast else 1e-4), f"relative error {rel:.2e}"
