"""DiM's causal depthwise conv1d + SiLU (``models/scan/conv.py``): the Triton kernel against torch's conv1d under
the interpreter (float32 and bfloat16, DiM's strided input, partial channel and time blocks, with and without bias,
gradients through the custom op); the C kernels CPU training takes (values and gradients against torch's); when
each kernel is used and when torch's module call is kept (FLOP counting and meta/fake tensors always see torch's);
the Triton kernel compiled for sm_90; and, marked ``cuda``, DiM-H's shapes.

The interpreter tests run in a subprocess with TRITON_INTERPRET=1 (``tests/scan_cases.py`` says why).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from scan_cases import IN_INTERPRETER, compiled, interpreted, rel_err, run_interpreted
from torch.utils.flop_counter import FlopCounterMode

from models.scan import available_backends, conv, triton_runtime

needs_c_kernel = pytest.mark.skipif(not available_backends("cpu")["cpu_fused"][0], reason="no C compiler: "
                                    f"{available_backends('cpu')['cpu_fused'][1]}")


@compiled
def test_interpreter_tests_in_a_subprocess():
    run_interpreted(__file__, globals(), timeout=600)


def dim_like(batch, d, S, dtype=torch.float32, seed=0, kw=3, bias=True):
    """x as DiM hands it (a time-contiguous view of in_proj's (2·d, b, S) product) and its conv module."""
    g = torch.Generator().manual_seed(seed)
    xz = torch.randn(2 * d, batch, S, generator=g).to(dtype).transpose(0, 1)
    module = torch.nn.Conv1d(d, d, kw, groups=d, padding=kw - 1, bias=bias)
    with torch.no_grad():
        module.weight.copy_(torch.randn(module.weight.shape, generator=g))
        if bias:
            module.bias.copy_(torch.randn(d, generator=g))
    return xz[:, :d], module


def torch_path(x, module):
    """What models/dim.py computed before the kernel: the module call, the tail dropped, SiLU."""
    return F.silu(module(x)[..., : x.shape[-1]])


@interpreted
@pytest.mark.parametrize("dtype,kw,bias", [(torch.float32, 3, True), (torch.bfloat16, 3, True),
                                           (torch.float32, 4, False)])
def test_kernel_matches_torch(dtype, kw, bias):
    """Batch 2, d_inner 6 (two channel blocks of 4, the last partial), S = 600 (two time blocks of 512), x a strided
    view; against float32 arithmetic on the same inputs: float32 to its rounding, bfloat16 to the rounding of the
    output (2^-9)."""
    x, module = dim_like(2, 6, 600, dtype, kw=kw, bias=bias)
    assert not x.is_contiguous()
    out = conv.launch(x, module.weight, module.bias)
    ref = conv.causal_conv1d_silu_reference(x.float(), module.weight, module.bias)
    assert out.dtype == dtype and out.is_contiguous()
    assert rel_err(out, ref) <= (1e-6 if dtype == torch.float32 else 4e-3), rel_err(out, ref)
    if dtype == torch.float32:
        torch.testing.assert_close(out, torch_path(x, module), rtol=1e-5, atol=1e-6)


@interpreted
def test_gradients_through_the_op():
    """The custom op's backward (torch's, recomputed) gives torch's gradients for x, weight and bias."""
    x, module = dim_like(2, 5, 37, seed=1)
    x = x.detach().requires_grad_()
    out = torch.ops.dimbench_scan.causal_conv1d_silu(x, module.weight, module.bias)
    go = torch.randn(out.shape)
    grads = torch.autograd.grad(out, (x, module.weight, module.bias), go)
    x2 = x.detach().requires_grad_()
    ref = torch.autograd.grad(torch_path(x2, module), (x2, module.weight, module.bias), go)
    for g, r in zip(grads, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_torch_path_everywhere_but_cuda(monkeypatch):
    """On the CPU and the meta device conv1d_silu is torch's module call itself (same values, same FLOP count);
    under a dispatch mode (FakeTensorMode, FlopCounterMode) it is too, whatever the device; and the environment
    variable turns the kernel off."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    x, module = dim_like(2, 4, 20)
    with torch.no_grad():  # inference: torch's call itself (training on the CPU: test_cpu_training_shifted_sums)
        assert torch.equal(conv.conv1d_silu(x, module), torch_path(x, module))
    meta_x, meta_conv = x.to("meta"), module.to("meta")
    with FlopCounterMode(display=False) as ours:
        conv.conv1d_silu(meta_x, meta_conv)
    with FlopCounterMode(display=False) as theirs:
        torch_path(meta_x, meta_conv)
    assert ours.get_total_flops() == theirs.get_total_flops() > 0
    assert not conv.fused_conv_available(meta_x)
    with FakeTensorMode():
        fake = torch.empty(2, 4, 20, device="cuda")
        assert not conv.fused_conv_available(fake)
    monkeypatch.setenv(conv.ENV_VAR, "0")
    assert not conv.fused_conv_available(x)


@needs_c_kernel
@pytest.mark.parametrize("kw, bias", [(3, True), (4, False), (1, True)])
def test_cpu_training_takes_the_c_kernel(kw, bias):
    """Training on the CPU (autograd recording) takes the custom op's C kernels, which give torch's values and
    gradients for x, weight and bias at DiM's strided input and a transposed output gradient; without autograd,
    under a dispatch mode (FLOP counting) or with DIMBENCH_FUSED_CONV=0, torch's call is taken."""
    x, module = dim_like(3, 5, 17, seed=2, kw=kw, bias=bias)
    x = x.detach().requires_grad_()
    assert conv.cpu_kernel_wanted(x, module)
    with torch.no_grad():
        assert not conv.cpu_kernel_wanted(x, module)
    with FlopCounterMode(display=False):
        assert not conv.cpu_kernel_wanted(x, module)
    with torch.profiler.profile() as prof:
        out = conv.conv1d_silu(x, module)
    assert "dimbench_scan::causal_conv1d_silu_cpu" in {e.name for e in prof.events()}
    params = [x, module.weight] + ([module.bias] if bias else [])
    go = torch.randn(3, 17, 5).transpose(1, 2)
    with torch.profiler.profile() as prof:
        grads = torch.autograd.grad(out, params, go)
    assert "dimbench_scan::causal_conv1d_silu_cpu_backward" in {e.name for e in prof.events()}
    x2 = x.detach().requires_grad_()
    ref_out = torch_path(x2, module)
    ref = torch.autograd.grad(ref_out, [x2] + params[1:], go)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


@needs_c_kernel
def test_cpu_kernel_refuses_a_weight_that_is_not_depthwise():
    """The C kernel reads D·KW weights and D biases: other shapes are refused before it runs."""
    from models.scan import cpu_fused

    x, module = dim_like(2, 4, 9)
    with pytest.raises(ValueError, match=r"weight \(D, 1, KW\) expected, got x \(2, 4, 9\) and weight \(4, 2, 3\)"):
        cpu_fused.cpu_conv_silu(x, torch.zeros(4, 2, 3), None)
    with pytest.raises(ValueError, match=r"bias \(4,\) expected, got \(3,\)"):
        cpu_fused.cpu_conv_silu(x, module.weight, torch.zeros(3))


def test_cpu_kernel_off_by_environment(monkeypatch):
    x, module = dim_like(2, 4, 9)
    monkeypatch.setenv(conv.ENV_VAR, "0")
    assert not conv.cpu_kernel_wanted(x.detach().requires_grad_(), module)


@compiled
def test_kernel_compiles_for_sm90():
    """bfloat16 at DiM-H's 1536 px shapes with DiM's strides (x a view: batch 1, d_inner 3072, S = 9806): it
    compiles, without spills."""
    x = torch.empty(2 * 3072, 1, 9806, dtype=torch.bfloat16, device="meta").transpose(0, 1)[:, :3072]
    w, bias = torch.empty(3072, 3, device="meta"), torch.empty(3072, device="meta")
    out = torch.empty(1, 3072, 9806, dtype=torch.bfloat16, device="meta")
    args = (x, w, bias, out, *x.stride(), 3072, 9806)
    kw = dict(KW=3, HAS_BIAS=True, BC=conv.BLOCK_C, BT=conv.BLOCK_T, num_warps=4, num_stages=1)
    compiled_kernel = triton_runtime.compile_for_gpu(conv._kernels().conv_silu_kernel, args, kw)
    sass, _ = triton_runtime.sass_and_resources(compiled_kernel)
    assert "STL" not in sass and "LDL" not in sass and "EXIT" in sass


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
@pytest.mark.parametrize("batch,S,dtype", [(1, 9806, torch.bfloat16), (2, 1230, torch.float32)])
def test_cuda_matches_torch_at_dim_shapes(batch, S, dtype, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not IN_INTERPRETER
    x, module = dim_like(batch, 3072, S, dtype, seed=S)
    x, module = x.cuda(), module.cuda()
    prev = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        ref = conv.causal_conv1d_silu_reference(x.float(), module.weight, module.bias)
    finally:
        torch.backends.cudnn.allow_tf32 = prev
    out = conv.launch(x, module.weight, module.bias)
    assert rel_err(out, ref) <= (1e-6 if dtype == torch.float32 else 4e-3)
