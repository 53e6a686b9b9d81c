"""CPU micro-benchmarks of the selective scan (pytest-benchmark; not part of CI).

    pytest benchmarks/test_bench_scan.py --benchmark-only --benchmark-group-by=group

Shapes are one DiM-S/2 Mamba layer (d_inner 1024, N 16, batch 1) at 32x32 px (L = 366, sequence of the padded
16x16 grid) and at the 512 px length L = 1230. What is timed: one forward of the custom op
``selective_scan`` (float32, under torch.inference_mode, cpu wall clock by pytest-benchmark), for the
``reference`` and ``chunked`` backends, a sweep of chunk sizes T for ``chunked`` (to justify
``default_chunk_size``), and forward + backward. Training shape: one Mamba layer of the tiny DiM trained on the
CPU (``create_model("dim_s_2", input_size=16, in_channels=1, depth=5, width=64, patch_size=4)``, batch 64:
d_inner 128, N 16, L 54), forward and backward alone (the backward op given a saved forward), for both
backends. CPU timings are for relative comparisons on the machine at hand (shared, noisy): compare backends by
the ratio within one run, never against a fixed number.
"""

from __future__ import annotations

import pytest
import torch

from models.scan import chunked_scan, default_chunk_size, scan_backend, selective_scan

D_INNER, N = 1024, 16
LENGTHS = {"32px": 366, "512px": 1230}


def _inputs(L: int, batch: int = 1, requires_grad: bool = False, d_inner: int = D_INNER):
    g = torch.Generator().manual_seed(0)
    t = dict(
        u=torch.randn(batch, d_inner, L, generator=g),
        delta=torch.randn(batch, d_inner, L, generator=g) - 2.0,
        A=-torch.arange(1, N + 1, dtype=torch.float32).repeat(d_inner, 1),  # DiM's initial A = -[1..16]
        B=torch.randn(batch, N, L, generator=g),
        C=torch.randn(batch, N, L, generator=g),
        D=torch.ones(d_inner),
        z=torch.randn(batch, d_inner, L, generator=g),
        delta_bias=torch.randn(d_inner, generator=g) * 0.1,
    )
    return {k: v.requires_grad_(requires_grad) for k, v in t.items()}


def _info(benchmark, **extra):
    benchmark.extra_info.update({"threads": torch.get_num_threads(), "d_inner": D_INNER, "d_state": N, "batch": 1,
                                 "dtype": "float32", **extra})


@pytest.mark.parametrize("backend", ["reference", "chunked"])
@pytest.mark.parametrize("size", list(LENGTHS))
def test_scan_forward(benchmark, backend, size):
    L = LENGTHS[size]
    t = _inputs(L)
    benchmark.group = f"scan forward L={L}"

    def run():
        with torch.inference_mode():
            return selective_scan(**t, backend=backend)

    rounds = 5 if backend == "reference" else 30
    out = benchmark.pedantic(run, rounds=rounds, warmup_rounds=2, iterations=1)
    assert out.shape == (1, D_INNER, L) and scan_backend() == backend
    _info(benchmark, backend=backend, L=L, chunk_size=default_chunk_size(1, D_INNER, L, N, torch.device("cpu")),
          method=f"cpu wall clock (pytest-benchmark), {rounds} rounds after 2 warm-up, torch.inference_mode")


@pytest.mark.parametrize("chunk", [12, 23, 46, 92, 154])
@pytest.mark.parametrize("size", list(LENGTHS))
def test_chunk_size_sweep(benchmark, chunk, size):
    L = LENGTHS[size]
    t = _inputs(L)
    benchmark.group = f"chunked T sweep L={L} (default T={default_chunk_size(1, D_INNER, L, N, torch.device('cpu'))})"

    def run():
        with torch.inference_mode():
            return chunked_scan(**t, chunk_size=chunk)

    benchmark.pedantic(run, rounds=20, warmup_rounds=2, iterations=1)
    _info(benchmark, backend="chunked", L=L, chunk_size=chunk,
          method="cpu wall clock (pytest-benchmark), 20 rounds after 2 warm-up, torch.inference_mode")


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_scan_forward_backward(benchmark, backend):
    L = LENGTHS["32px"]
    t = _inputs(L, requires_grad=True)
    grad = torch.randn(1, D_INNER, L, generator=torch.Generator().manual_seed(1))
    benchmark.group = f"scan forward+backward L={L}"

    def run():
        out = selective_scan(**t, backend=backend)
        return torch.autograd.grad(out, list(t.values()), grad)

    benchmark.pedantic(run, rounds=5, warmup_rounds=1, iterations=1)
    _info(benchmark, backend=backend, L=L,
          method="cpu wall clock (pytest-benchmark), 5 rounds after 1 warm-up, forward + grads of all 8 inputs")


#: one Mamba layer of the tiny DiM of CPU training runs (see the module docstring): batch, d_inner, L.
TRAIN_BATCH, TRAIN_D_INNER, TRAIN_L = 64, 128, 54


@pytest.mark.parametrize("backend", ["reference", "chunked"])
@pytest.mark.parametrize("task", ["forward", "backward"])
def test_scan_training_shape(benchmark, backend, task):
    """Forward (with autograd recording, as in training) or backward alone: the backward of one saved forward,
    run with retain_graph so each round times the same backward op."""
    t = _inputs(TRAIN_L, batch=TRAIN_BATCH, requires_grad=True, d_inner=TRAIN_D_INNER)
    grad = torch.randn(TRAIN_BATCH, TRAIN_D_INNER, TRAIN_L, generator=torch.Generator().manual_seed(1))
    benchmark.group = f"scan training shape batch {TRAIN_BATCH} d_inner {TRAIN_D_INNER} L={TRAIN_L} {task}"
    if task == "forward":
        def run():
            return selective_scan(**t, backend=backend)
    else:
        out = selective_scan(**t, backend=backend)

        def run():
            return torch.autograd.grad(out, list(t.values()), grad, retain_graph=True)

    rounds = 5 if backend == "reference" else 20
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=2, iterations=1)
    _info(benchmark, backend=backend, L=TRAIN_L, batch=TRAIN_BATCH, d_inner=TRAIN_D_INNER, task=task,
          chunk_size=default_chunk_size(TRAIN_BATCH, TRAIN_D_INNER, TRAIN_L, N, torch.device("cpu")),
          method=f"cpu wall clock (pytest-benchmark), {rounds} rounds after 2 warm-up; forward with inputs "
                 "requiring grad; backward: grads of all 8 inputs from one saved forward (retain_graph)")


@pytest.mark.cuda
@pytest.mark.parametrize("batch,task", [(1, "forward"), (8, "forward"), (1, "forward+backward")])
def test_scan_cuda_1536px(benchmark, batch, task):
    """DiM-H/2 Mamba layer at 1536 px (d_inner 3072, L 9806, N 16) with the pure-PyTorch chunked backend on
    CUDA (what the GPU runs until a Triton kernel exists): time and peak memory of one call."""
    if not torch.cuda.is_available():
        pytest.skip("CUDA not available")
    d_inner, L = 3072, 9806
    g = torch.Generator(device="cuda").manual_seed(0)
    t = dict(
        u=torch.randn(batch, d_inner, L, device="cuda", generator=g),
        delta=torch.randn(batch, d_inner, L, device="cuda", generator=g) - 2.0,
        A=-torch.arange(1, N + 1, dtype=torch.float32, device="cuda").repeat(d_inner, 1),
        B=torch.randn(batch, N, L, device="cuda", generator=g),
        C=torch.randn(batch, N, L, device="cuda", generator=g),
        D=torch.ones(d_inner, device="cuda"),
        z=torch.randn(batch, d_inner, L, device="cuda", generator=g),
        delta_bias=torch.zeros(d_inner, device="cuda"),
    )
    backward = task == "forward+backward"
    for v in t.values():
        v.requires_grad_(backward)
    benchmark.group = "scan on CUDA at 1536 px (chunked)"

    def run():
        if backward:
            out = selective_scan(**t, backend="chunked")
            torch.autograd.grad(out, list(t.values()), torch.ones_like(out))
        else:
            with torch.inference_mode():
                selective_scan(**t, backend="chunked")
        torch.cuda.synchronize()

    run()  # warm-up
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(run, rounds=3, warmup_rounds=0, iterations=1)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    inputs = sum(v.numel() * v.element_size() for v in t.values()) / 2**30
    print(f"\n[{task} batch {batch}] torch.cuda.max_memory_allocated above the inputs: {peak:.2f} GiB "
          f"(inputs {inputs:.2f} GiB); device {torch.cuda.get_device_name()}")
    _info(benchmark, backend="chunked", L=L, task=task, peak_gib_above_inputs=round(peak, 3), batch=batch,
          d_inner=d_inner, device=torch.cuda.get_device_name(),
          method="wall clock around the call + torch.cuda.synchronize (pytest-benchmark), 3 rounds after 1 "
                 "warm-up; memory: torch.cuda.max_memory_allocated minus allocated before")
