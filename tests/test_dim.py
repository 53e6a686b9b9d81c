"""DiM: configurations, token bookkeeping (pads, scan orders, skips), conversion, and real forward/backward.

Expected numbers come from docs/models.md (§2.1 configurations, §5.2 official names), and token layouts
are written out by hand or derived here independently of models/dim.py's index arithmetic.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import models
from models import dim as dimmod
from models.dim import (
    DiM,
    adapt_state_dict,
    order_sequence,
    pad_insert,
    pad_remove,
    pad_source_map,
    resize_pos_embed,
    scan_orders,
    sequence_length,
    skip_consumers,
    skip_producers,
    switch_map,
)
from models.dim_convert import dimbench_to_official, infer_dim_config, is_official_dim, official_to_dimbench

META = torch.device("meta")


# One OpenMP thread (tests/conftest.py: tiny models, busy machines).
pytestmark = pytest.mark.usefixtures("one_thread")


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def small_dim(**overrides) -> DiM:
    """A DiM small enough for real CPU forward/backward (4 blocks of width 32 on a 4×4 token grid)."""
    kwargs = dict(input_size=8, in_channels=4, num_classes=10, patch_size=2, depth=5, width=32)
    kwargs.update(overrides)
    torch.manual_seed(0)
    model = DiM(**kwargs)
    randomize(model)
    return model


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter random values of a sensible size (the zero-initialised ones would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("A_log") or name.endswith("dt_proj.bias"):
            continue  # keep the Mamba init: a stable scan
        fan_in = p[0].numel() if p.ndim > 1 else p.numel()
        p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)


# ------------------------------------------------------------------------------------------------ configurations


@pytest.mark.parametrize(
    "name, input_size, expected",
    [
        ("dim_s_2", None, 50_568_716),
        ("dim_l_2", None, 386_063_376),
        ("dim_h_2", None, 862_407_184),
        ("dim_h_2", 64, 863_586_832),  # DiM-H/2 at 512 px: only the position embedding grows
    ],
)
def test_parameter_counts_match_official(name, input_size, expected):
    with META:
        model = models.create_model(name, input_size=input_size)
    assert n_params(model) == expected


def test_dim_h_block_sizes():
    with META:
        model = models.create_model("dim_h_2")
    sizes = [n_params(b) for b in model.blocks]
    assert sizes[:25] == [14_917_632] * 25  # block 0 (stem) and the 24 skip producers
    assert sizes[25:] == [19_639_296] * 24  # skip consumers: two Linear(d, d) with bias more


def test_registered_configs():
    assert set(models.list_models(family="dim")) >= {"dim_s_2", "dim_l_2", "dim_h_2"}
    expected = {
        "dim_s_2": ("cifar10_S_DiM", 25, 512, 3, 10),
        "dim_l_2": ("imagenet256_L_DiM", 49, 1024, 4, 1000),
        "dim_h_2": ("imagenet256_H_DiM", 49, 1536, 4, 1000),
    }
    for name, (official, depth, width, channels, classes) in expected.items():
        info = models.model_info(name)
        assert info.official == official
        d = info.defaults
        assert (d["depth"], d["width"], d["in_channels"], d["num_classes"], d["patch_size"], d["input_size"]) == (
            depth, width, channels, classes, 2, 32)
    with META:
        model = models.create_model("dim_l_2")
    assert (model.input_size, model.in_channels, model.patch_size, model.depth, model.width) == (32, 4, 2, 49, 1024)
    assert model.pad_layout == "lateral" and model.model_name == "dim_l_2"


@pytest.mark.parametrize("name", ["dim_s_2", "dim_l_2", "dim_h_2"])
@pytest.mark.parametrize("pixels", [256, 512])
def test_output_shapes_on_meta(name, pixels):
    side = pixels // 8 if models.model_info(name).latent else pixels
    with META:
        model = models.create_model(name, input_size=side)
        x = torch.empty(2, model.in_channels, side, side)
        out = model(x, torch.full((2,), 500.0), torch.zeros(2, dtype=torch.long))
    assert out.shape == x.shape and out.device.type == "meta"


def test_meta_forward_at_another_grid_resizes_pos_embed():
    with META:
        model = models.create_model("dim_h_2")  # built for 32×32 latents
        out = model(torch.empty(1, 4, 128, 128), torch.tensor([1.0]))  # run at 1024 px
    assert out.shape == (1, 4, 128, 128)


def test_sequence_lengths():
    # 2 + 3 + (g + 3)^2 for g = 16, 32, 64, 96 tokens (256, 512, 1024, 1536 px with the 8× VAE and patch 2)
    assert [sequence_length(g, g) for g in (16, 32, 64, 96)] == [366, 1230, 4494, 9806]
    seen = []
    with META:
        model = models.create_model("dim_s_2", input_size=8, depth=3, width=32)
        model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
        for side in (32, 64, 128, 192):
            model(torch.empty(1, 3, side, side), torch.tensor([1.0]))
    assert seen == [366, 1230, 4494, 9806]


def test_bad_input_messages():
    model = small_dim()
    with pytest.raises(ValueError, match="multiples of 2"):
        model(torch.randn(1, 4, 7, 8), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="odd"):
        DiM(depth=4, width=32)
    with pytest.raises(ValueError, match="pad_layout"):
        DiM(depth=3, width=32, pad_layout="diagonal")


# ------------------------------------------------------------------------------------------------ scan orders


def test_scan_orders_depth_49_table():
    orders = scan_orders(49)
    assert orders[:5] == [0, -2, 1, -1, 0]
    assert orders[20:25] == [0, -2, 1, -1, 0]
    assert orders[25:30] == [-1, 1, -2, 0, -1]
    assert orders[44:49] == [0, -1, 1, -2, 0]
    assert set(orders) == {0, -2, 1, -1}


def _grid_ids(h: int, w: int) -> torch.Tensor:
    return torch.arange((h + 3) * (w + 3)).view(h + 3, w + 3)


def _tokens_in_order(order: int, h: int, w: int) -> torch.Tensor:
    """Token ids of the padded grid as scan ``order`` visits them, from the spec's words (not models/dim.py)."""
    ids = _grid_ids(h, w)
    visit = {0: ids.flatten(), -2: ids.flatten().flip(0), 1: ids.t().flatten(), -1: ids.t().flatten().flip(0)}
    return visit[order]


@pytest.mark.parametrize("depth", [3, 5, 7, 9, 13, 25, 49, 51])
def test_every_skip_arrives_in_its_consumers_token_order(depth):
    orders = scan_orders(depth)
    assert orders[0] == 0 and orders[-1] == 0
    producers, consumers = skip_producers(depth), skip_consumers(depth)
    assert producers == list(range(1, (depth + 1) // 2)) and len(consumers) == len(producers)
    h, w = 3, 5  # non-square, so row- and column-major orders differ in every position
    stack, hidden = [], _tokens_in_order(0, h, w)
    for l in range(depth):
        if l in consumers:
            skip = stack.pop()
            # fusion happens before this block's scan switch: the hidden state is still in block l-1's order
            assert torch.equal(skip, hidden), f"block {l} fuses a skip in another token order"
        hidden = _tokens_in_order(orders[l], h, w)
        if l in producers:
            stack.append(hidden)
    assert not stack
    # LIFO pairing: the first consumer takes the last producer's output, the last block takes block 1's
    assert consumers[0] == producers[-1] + 1 and consumers[-1] == depth - 1


@pytest.mark.parametrize("h, w", [(2, 2), (3, 5), (16, 16)])
def test_scan_switch_maps_are_permutations_that_invert(h, w):
    P = (h + 3) * (w + 3)
    x = torch.randn(2, P, 4)
    for a in (0, -2, 1, -1):
        assert torch.equal(order_sequence(a, h, w), _tokens_in_order(a, h, w))
        for b in (0, -2, 1, -1):
            m = switch_map(a, b, h, w)
            assert torch.equal(m.sort().values, torch.arange(P))
            assert torch.equal(x[:, m][:, switch_map(b, a, h, w)], x)
            # re-ordering a sequence in order a gives the sequence in order b
            seq_a = _tokens_in_order(a, h, w)
            assert torch.equal(seq_a[m], _tokens_in_order(b, h, w))


def test_model_switches_follow_scan_orders():
    """The chain of switches the model applies visits exactly scan_orders(depth) and ends row-major."""
    h, w, depth = 3, 4, 9
    maps = dimmod._sequence_maps(h, w, "lateral", torch.device("cpu"))
    seq = torch.arange(sequence_length(h, w))
    order = 0
    for o in scan_orders(depth):
        if o != order:
            seq = seq[maps.switch[(order, o)]]
            order = o
        assert torch.equal(seq[:5], torch.arange(5))  # condition and q tokens never move
        assert torch.equal(seq[5:] - 5, _tokens_in_order(o, h, w))
    assert torch.equal(seq, torch.arange(sequence_length(h, w)))


# ------------------------------------------------------------------------------------------------ pad tokens


@pytest.mark.parametrize("layout", ["lateral", "cyclic"])
@pytest.mark.parametrize("h, w", [(1, 1), (2, 2), (4, 3), (16, 16)])
def test_pad_insert_then_remove_is_identity(layout, h, w):
    grid = torch.randn(2, h * w, 8)
    pads = torch.randn(3, 8)
    padded = pad_insert(grid, pads, h, w, layout)
    assert padded.shape == (2, (h + 3) * (w + 3), 8)
    assert torch.equal(pad_remove(padded, h, w), grid)


def test_pad_layouts_place_p0_p1_p2_as_specified():
    # 2×2 grid -> 5×5 padded; g = real token, 0/1/2 = p0/p1/p2
    g = -1
    lateral = [
        [g, g, 0, 1, 2],
        [g, g, 0, 1, 2],
        [0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1],
        [2, 2, 2, 2, 2],
    ]
    cyclic = [  # p0, p1, p2, p0, ... over pad positions in row-major order
        [g, g, 0, 1, 2],
        [g, g, 0, 1, 2],
        [0, 1, 2, 0, 1],
        [2, 0, 1, 2, 0],
        [1, 2, 0, 1, 2],
    ]
    for layout, expected in (("lateral", lateral), ("cyclic", cyclic)):
        src = pad_source_map(2, 2, layout).view(5, 5)
        got = torch.where(src < 4, torch.full_like(src, g), src - 4)
        assert got.tolist() == expected, layout
        real = src[src < 4]
        assert real.tolist() == [0, 1, 2, 3]  # real tokens stay row-major


def test_pad_insert_values_and_cyclic_bottom_rows():
    h, w, d = 3, 4, 2  # padded 6×7; bottom region 21 positions, not a multiple of the 7-wide row
    grid = torch.arange(h * w * d, dtype=torch.float32).view(1, h * w, d)
    pads = torch.tensor([[100.0, 100.0], [101.0, 101.0], [102.0, 102.0]])
    for layout in ("lateral", "cyclic"):
        padded = pad_insert(grid, pads, h, w, layout)[0, :, 0].view(h + 3, w + 3)
        assert torch.equal(padded[:h, :w].flatten(), grid[0, :, 0])
        assert padded[:h, w:].tolist() == [[100, 101, 102]] * h
        bottom = padded[h:].flatten()
        if layout == "lateral":
            assert bottom.tolist() == [100.0] * 7 + [101.0] * 7 + [102.0] * 7
        else:
            assert bottom.tolist() == [100.0 + (3 * h + k) % 3 for k in range(21)]


def test_pad_layout_changes_the_output():
    model = small_dim()
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([400.0])
    with torch.no_grad():
        lateral = model(x, t)
        model.pad_layout = "cyclic"
        cyclic = model(x, t)
    assert not torch.allclose(lateral, cyclic)


# ------------------------------------------------------------------------------------------------ position embedding


def test_resize_pos_embed_copies_condition_positions():
    pos = torch.randn(1, 2 + 4 * 4, 6)
    out = resize_pos_embed(pos, (8, 8))
    assert out.shape == (1, 2 + 64, 6)
    assert torch.equal(out[:, :2], pos[:, :2])
    assert resize_pos_embed(pos, (4, 4)) is pos
    const = torch.ones(1, 2 + 16, 3)
    assert torch.allclose(resize_pos_embed(const, (7, 9)), torch.ones(1, 2 + 63, 3))
    # a 2×2 -> 4×4 bilinear resize (align_corners=False): corner values stay, inner ones are 3:1 mixes
    pos2 = torch.zeros(1, 2 + 4, 1)
    pos2[0, 2:, 0] = torch.tensor([0.0, 4.0, 8.0, 12.0])
    grid = resize_pos_embed(pos2, (4, 4))[0, 2:, 0].view(4, 4)
    assert grid[0].tolist() == [0.0, 1.0, 3.0, 4.0]
    assert grid[:, 0].tolist() == [0.0, 2.0, 6.0, 8.0]
    with pytest.raises(ValueError, match="square"):
        resize_pos_embed(torch.zeros(1, 2 + 6, 3), (4, 4))


def test_adapt_state_dict_weak_to_strong():
    """Loading a 4×4-grid model into an 8×8-grid model == running the 4×4 model at 8×8 (both resize the same)."""
    low = small_dim(input_size=8)
    high = DiM(input_size=16, in_channels=4, num_classes=10, patch_size=2, depth=5, width=32)
    with pytest.raises(RuntimeError, match="pos_embed"):
        high.load_state_dict(low.state_dict())
    adapted = adapt_state_dict(high, low.state_dict())
    assert adapted["pos_embed"].shape == high.pos_embed.shape
    assert torch.equal(adapted["pos_embed"][:, :2], low.pos_embed[:, :2].detach())
    high.load_state_dict(adapted, strict=True)
    x, t, y = torch.randn(2, 4, 16, 16), torch.tensor([10.0, 900.0]), torch.tensor([1, 10])
    with torch.no_grad():
        torch.testing.assert_close(high(x, t, y), low(x, t, y), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="pos_embed"):
        adapt_state_dict(high, {"pos_embed": torch.zeros(1, 18, 31)})


# ------------------------------------------------------------------------------------------------ forward/backward


def test_forward_backward_small_config():
    model = small_dim()
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([1.0, 1000.0]), torch.tensor([3, 10])
    out = model(x, t, y)
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    loss = F.mse_loss(out, torch.randn_like(out))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} gets no gradient"


def test_null_class_and_timestep_matter():
    model = small_dim()
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        base = model(x, torch.tensor([500.0]))
        assert torch.equal(base, model(x, torch.tensor([500.0]), torch.tensor([10])))  # y=None is row num_classes
        assert torch.equal(base, model(x, 500.0))  # scalar t broadcasts
        assert not torch.allclose(base, model(x, torch.tensor([500.0]), torch.tensor([2])))
        assert not torch.allclose(base, model(x, torch.tensor([501.0])))


def test_bf16_autocast_on_cpu_keeps_fp32_residual_stream():
    model = small_dim().eval()
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([20.0, 700.0]), torch.tensor([0, 4])
    stream_dtypes = []
    for blk in model.blocks:
        blk.register_forward_hook(lambda m, args, out: stream_dtypes.append(out.dtype))
    with torch.no_grad():
        ref = model(x, t, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, t, y)
    assert set(stream_dtypes) == {torch.float32}
    rel = ((low.float() - ref).norm() / ref.norm()).item()
    assert rel < 2e-2, f"bf16 autocast relative error {rel:.3g}"  # measured ~5e-3


def test_init_follows_spec():
    torch.manual_seed(0)
    model = DiM(input_size=8, in_channels=4, num_classes=10, patch_size=2, depth=5, width=64)
    assert torch.count_nonzero(model.pos_embed) == 0
    assert torch.count_nonzero(model.adaln.bias) == 0 and torch.count_nonzero(model.adaln.weight) > 0
    mixer = model.blocks[0].mixer
    A = -torch.exp(mixer.A_log)
    torch.testing.assert_close(A, -torch.arange(1.0, 17.0).expand(128, 16))  # A = -[1..16] per channel
    assert torch.equal(mixer.D, torch.ones_like(mixer.D))
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    assert mixer.dt_proj.weight.abs().max() <= mixer.dt_rank**-0.5
    bound = (1 / 128) ** 0.5 / 5**0.5  # kaiming-uniform(a=√5) bound 1/√fan_in, divided by √depth
    assert mixer.out_proj.weight.abs().max() <= bound and mixer.out_proj.weight.abs().max() > 0.9 * bound
    assert 0.015 < model.y_token.weight.std() < 0.025 and 0.015 < model.pad_tokens.std() < 0.025


# ------------------------------------------------------------------------------------------------ conversion


def test_conversion_round_trip_and_wide_skip_fusion():
    """d > 512: random official-naming weights convert, load strictly and run; .0 acts on hidden, .1 on skip."""
    torch.manual_seed(1)
    ref = DiM(input_size=4, in_channels=4, num_classes=3, patch_size=2, depth=3, width=520)
    randomize(ref)
    official = dimbench_to_official(ref.state_dict())
    assert is_official_dim(official) and not is_official_dim(ref.state_dict())
    assert official["transformer_blocks.2.skip_linear.0.weight"].shape == (520, 520)
    assert official["a4m_adapter.pad_token"].shape == (1, 520, 3)
    assert infer_dim_config(official) == dict(width=520, depth=3, patch_size=2, in_channels=4, num_classes=3, grid=2)

    model = DiM(input_size=4, in_channels=4, num_classes=3, patch_size=2, depth=3, width=520)
    model.load_state_dict(official_to_dimbench(official), strict=True)
    x, t = torch.randn(1, 4, 4, 4), torch.tensor([250.0])
    with torch.no_grad():
        assert torch.equal(model(x, t), ref(x, t))
        hidden, skip = torch.randn(1, 5, 520), torch.randn(1, 5, 520)
        w0, b0 = (official[f"transformer_blocks.2.skip_linear.0.{k}"] for k in ("weight", "bias"))
        w1, b1 = (official[f"transformer_blocks.2.skip_linear.1.{k}"] for k in ("weight", "bias"))
        expected = hidden @ w0.t() + b0 + skip @ w1.t() + b1
        torch.testing.assert_close(model.blocks[2].skip(hidden, skip), expected)
    back = official_to_dimbench(official)
    assert set(back) == set(ref.state_dict())
    assert all(torch.equal(back[k], v) for k, v in ref.state_dict().items())


def test_narrow_skip_fusion_concatenates_hidden_first():
    model = small_dim()
    official = dimbench_to_official(model.state_dict())
    w, b = official["transformer_blocks.3.skip_linear.weight"], official["transformer_blocks.3.skip_linear.bias"]
    assert w.shape == (32, 64)
    hidden, skip = torch.randn(1, 5, 32), torch.randn(1, 5, 32)
    with torch.no_grad():
        expected = hidden @ w[:, :32].t() + skip @ w[:, 32:].t() + b
        torch.testing.assert_close(model.blocks[3].skip(hidden, skip), expected)


def test_conversion_errors_name_the_problem():
    official = dimbench_to_official(small_dim().state_dict())
    with pytest.raises(KeyError, match="transformer_blocks.1.attn1.x_proj.weight"):
        official_to_dimbench({k: v for k, v in official.items() if k != "transformer_blocks.1.attn1.x_proj.weight"})
    with pytest.raises(KeyError, match="mystery.weight"):
        official_to_dimbench({**official, "mystery.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match="not a DiM state_dict"):
        infer_dim_config({"foo": torch.zeros(1)})
    with pytest.raises(TypeError, match="not tensors"):
        official_to_dimbench({**official, "step": 3})
    narrow = {k.replace("skip_linear.weight", "skip_linear.0.weight"): v for k, v in official.items()}
    with pytest.raises(KeyError, match=r"missing transformer_blocks\.3\.skip_linear\.weight"):
        official_to_dimbench(narrow)  # width 32 fuses skips with one Linear on the concatenation
    bad = dict(official)
    bad["a4m_adapter.pad_token"] = torch.zeros(1, 3, 32)
    with pytest.raises(ValueError, match="pad_token"):
        official_to_dimbench(bad)


# ------------------------------------------------------------------------------------------------ CUDA


def _cuda_backends() -> list[str]:
    from models.scan import available_backends

    return [name for name, (ok, _) in available_backends("cuda").items() if ok]


@pytest.mark.cuda
@pytest.mark.parametrize("backend", _cuda_backends())
def test_cuda_matches_cpu_in_fp32_and_bf16_autocast(backend, monkeypatch):
    """A small DiM on CUDA (each scan backend that can run there) against its CPU fp32 output."""
    import copy

    monkeypatch.setenv("DIMBENCH_SCAN_BACKEND", backend)
    model = small_dim(input_size=16, width=64).eval()
    x, t, y = torch.randn(2, 4, 16, 16), torch.tensor([3.0, 987.5]), torch.tensor([1, 10])
    with torch.no_grad():
        ref = model(x, t, y)
    gpu = copy.deepcopy(model).cuda()
    xc, tc, yc = x.cuda(), t.cuda(), y.cuda()
    # fp32 means fp32: no TF32 in matmuls or convolutions for this comparison
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    with torch.no_grad():
        out32 = gpu(xc, tc, yc)
        assert models.scan_backend() == backend
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out16 = gpu(xc, tc, yc)
    rel32 = ((out32.float().cpu() - ref).norm() / ref.norm()).item()
    rel16 = ((out16.float().cpu() - ref).norm() / ref.norm()).item()
    assert out32.dtype == torch.float32 and rel32 < 1e-4, f"CUDA fp32 vs CPU: relative error {rel32:.3g}"
    assert rel16 < 2e-2, f"CUDA bf16 autocast vs CPU fp32: relative error {rel16:.3g}"


def test_index_maps_survive_fake_and_inference_modes():
    """A fake-tensor forward must not leave fake maps behind, and maps first built under inference mode must
    still serve a training step (gather saves its index for backward)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from models import dim as dim_module

    dim_module._MAP_CACHE.clear()
    torch.manual_seed(0)
    model = DiM(depth=3, width=32, patch_size=2, input_size=8, in_channels=4, num_classes=10)
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500.0])
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake_out = model(mode.from_tensor(x), mode.from_tensor(t))
    assert type(fake_out).__name__ == "FakeTensor"
    with torch.inference_mode():
        real_out = model(x, t)
    assert type(real_out) is torch.Tensor and torch.isfinite(real_out).all()
    out = model(x, t)
    out.square().mean().backward()
    assert model.patch_embed.weight.grad is not None
