"""CPU micro-benchmarks of one block of each model family, and of each scan backend that runs here
(pytest-benchmark). The regression gate for them is tox's ``bench-gate`` environment:

    tox -e bench-gate        # compares with baselines/benchmarks/*/0001_baseline.json (fails when a median is
                             # 50 % slower, or when the baseline comes from another CPU model or core count)
    rm -r baselines/benchmarks && OMP_NUM_THREADS=1 pytest benchmarks/test_bench_blocks.py --benchmark-only \
        --benchmark-storage=file://baselines/benchmarks --benchmark-save=baseline   # refresh it, deliberately

Shapes: the S-size blocks (width 384 for DiT and U-ViT as in DiT-S / U-ViT-S's heads of 64; DiM-S's width 512)
over 256 tokens (a 16x16 grid, DiM's padded sequence 366), batch 1, float32, forward under inference_mode. A
block is the unit all three families repeat, so a change to one shows here before it shows in a whole model. The
scan backends run one Mamba layer of DiM-S (d_inner 1024, N 16, L 366). CPU wall clock: compare within one
machine only (benchmarks/conftest.py refuses a baseline from another CPU model or core count; the storage path
also holds the Python version).
"""

from __future__ import annotations

import pytest
import torch

from models.dim import DiMBlock, sequence_length
from models.dit import DiTBlock
from models.scan import available_backends, scan_backend, selective_scan
from models.uvit import Block as UViTBlock

ROUNDS, WARMUP = 10, 2
TOKENS = 256


def _bench(benchmark, fn, **info):
    torch.manual_seed(0)

    def run():
        with torch.inference_mode():
            return fn()

    out = benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    benchmark.extra_info.update(threads=torch.get_num_threads(), dtype="float32", batch=1, **info)
    return out


def test_dim_block(benchmark):
    torch.manual_seed(0)
    width, seq = 512, sequence_length(16, 16)
    block = DiMBlock(width, consumes_skip=False).eval()
    block.mixer.reset_parameters(depth=25)  # DiM-S's initialisation (the block's own tensors start empty)
    torch.nn.init.normal_(block.mod_table, std=0.02)
    x, c = torch.randn(1, seq, width), torch.randn(1, 3, width)
    out = _bench(benchmark, lambda: block(x, c), block="DiMBlock", width=width, tokens=seq,
                 scan_backend="auto")
    assert out.shape == x.shape and torch.isfinite(out).all()
    benchmark.extra_info["scan_backend"] = scan_backend()


def test_dit_block(benchmark):
    width = 384
    block = DiTBlock(width, heads=6).eval()
    x, c = torch.randn(1, TOKENS, width), torch.randn(1, width)
    out = _bench(benchmark, lambda: block(x, c), block="DiTBlock", width=width, tokens=TOKENS)
    assert out.shape == x.shape


def test_uvit_block(benchmark):
    width = 384
    block = UViTBlock(width, heads=6, skip=True).eval()
    x, skip = torch.randn(1, TOKENS + 2, width), torch.randn(1, TOKENS + 2, width)
    out = _bench(benchmark, lambda: block(x, skip), block="U-ViT Block (skip-consuming)", width=width,
                 tokens=TOKENS + 2)
    assert out.shape == x.shape


@pytest.mark.parametrize("backend", ["reference", "chunked", "mamba_ssm", "triton"])
def test_scan_backend(benchmark, backend):
    ok, reason = available_backends("cpu")[backend]
    if not ok:
        pytest.skip(f"scan backend {backend!r} cannot run on this CPU: {reason}")
    g = torch.Generator().manual_seed(0)
    d_inner, n, length = 1024, 16, sequence_length(16, 16)
    args = dict(u=torch.randn(1, d_inner, length, generator=g), delta=torch.randn(1, d_inner, length, generator=g) - 2,
                A=-torch.arange(1, n + 1, dtype=torch.float32).repeat(d_inner, 1),
                B=torch.randn(1, n, length, generator=g), C=torch.randn(1, n, length, generator=g),
                D=torch.ones(d_inner), z=torch.randn(1, d_inner, length, generator=g),
                delta_bias=torch.zeros(d_inner))
    out = _bench(benchmark, lambda: selective_scan(**args, backend=backend), backend=backend, d_inner=d_inner,
                 d_state=n, length=length)
    assert out.shape == (1, d_inner, length) and scan_backend() == backend
