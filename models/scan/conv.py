"""DiM's causal depthwise conv1d + SiLU on CUDA, fused in one Triton kernel when the ``triton`` scan backend runs.

    x = conv1d_silu(x, mixer.conv1d)       # (b, d_inner, S) -> silu(conv1d(x)[..., :S]), contiguous

In DiM (``models/dim.py``) x is a view of in_proj's product, time contiguous, channels strided by batch·S; torch's
path is ``F.silu(conv(x)[..., :S])``: the conv (cuDNN depthwise, on the strided view), an S + 2 output sliced,
then SiLU into a fresh tensor: three passes over (b, d_inner, S) or more. The kernel
(``conv_kernels.conv_silu_kernel``) reads x once through its strides and writes the activation once (float32
arithmetic, the output in x's dtype, or autocast's on CUDA when it is on).

When: CUDA tensors, triton importable in compiled mode, the selective scan resolving to ``triton`` on that device
(``registry.resolve_backend``), and no dispatch mode active (FlopCounterMode, FakeTensorMode): FLOP counting and
memory prediction (meta and fake tensors) always see torch's ``conv`` module call, so DiM's counts and its module
tree are unchanged. ``DIMBENCH_FUSED_CONV=0`` turns the kernel off. It is a ``torch.library`` custom op
(``dimbench_scan::causal_conv1d_silu``: opaque to torch.compile, with a fake kernel); its backward is torch's
(the conv's gradient through autograd of the same function, recomputed), exact.

On the CPU, when autograd records (training), the C kernels of ``models.scan.cpu_fused`` run instead, when they
build: their own op, ``dimbench_scan::causal_conv1d_silu_cpu``, with an analytic backward as a second op:
torch's depthwise conv backward (oneDNN, 2.3 ms a call) and the separate SiLU passes were a fifth of a tiny DiM's
training step (batch 32, d_inner 128, S 54). Inference on the CPU keeps torch's call (one pass, and the memory
dimbench predicts by tracing torch's conv is what runs); ``cpu_kernel_wanted`` says when.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

from models.scan.registry import resolve_backend

from . import cpu_fused, triton_runtime

ENV_VAR = "DIMBENCH_FUSED_CONV"
_KERNELS_FILE = Path(__file__).with_name("conv_kernels.py")
#: channels and steps per program (time contiguous: 512 steps, 16 bytes per thread at 4 warps in bf16).
BLOCK_C, BLOCK_T = 4, 512
#: warps per program on CUDA.
NUM_WARPS = 4


@functools.lru_cache(maxsize=1)
def _kernels():
    return triton_runtime.load_kernels(_KERNELS_FILE, f"{__package__}._conv_kernels", "conv_silu_kernel")


def fused_conv_available(x: Tensor) -> bool:
    """Whether ``conv1d_silu`` takes the Triton kernel for ``x`` (see the module docstring)."""
    return x.device.type == "cuda" and _fused_on(x.device)


@torch.compiler.assume_constant_result
def _fused_on(device: torch.device) -> bool:
    """The decision for a CUDA device, run as plain Python when torch.compile traces a call (its result becomes a
    constant of the graph), as the scan's backend is (``op._resolve_untraced``): traced, "auto" tries to import
    mamba_ssm and reads the dispatch mode, which break the graph at every block on CUDA."""
    if os.environ.get(ENV_VAR, "1") == "0" or _get_current_dispatch_mode() is not None:
        return False
    try:
        return resolve_backend(None, device) == "triton" and not triton_runtime.interpreted()
    except (RuntimeError, ValueError):
        return False


def cpu_kernel_wanted(x: Tensor, conv: nn.Conv1d) -> bool:
    """Whether ``conv1d_silu`` takes the C kernel: CPU tensors, autograd recording (training), the kernel built,
    no dispatch mode (see the module docstring)."""
    return (x.device.type == "cpu" and torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad)
            and _cpu_kernel_on())


@torch.compiler.assume_constant_result
def _cpu_kernel_on() -> bool:
    """The CPU decision's environment part, run as plain Python when torch.compile traces (as ``_fused_on``)."""
    if os.environ.get(ENV_VAR, "1") == "0" or _get_current_dispatch_mode() is not None:
        return False
    return cpu_fused.cpu_fused_status("cpu")[0]


def conv1d_silu(x: Tensor, conv: nn.Conv1d) -> Tensor:
    """silu(conv(x)[..., :S]) for DiM's causal depthwise ``conv`` (padding kernel - 1 both sides, the tail
    dropped): the Triton kernel when ``fused_conv_available(x)``, the C kernel when ``cpu_kernel_wanted``,
    else exactly torch's module call."""
    if not fused_conv_available(x):
        if cpu_kernel_wanted(x, conv):
            return torch.ops.dimbench_scan.causal_conv1d_silu_cpu(x, conv.weight, conv.bias)
        return F.silu(conv(x)[..., : x.shape[-1]])
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else x.dtype
    return torch.ops.dimbench_scan.causal_conv1d_silu(x.to(dtype), conv.weight, conv.bias)


def causal_conv1d_silu_reference(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The function the kernel computes, in torch (float32 arithmetic, the output in x's dtype)."""
    kw = weight.shape[-1]
    y = F.conv1d(x.float(), weight.float(), None if bias is None else bias.float(), padding=kw - 1,
                 groups=x.shape[1])
    return F.silu(y[..., : x.shape[-1]]).to(x.dtype)


def launch(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Run the kernel: x (b, D, S) any strides; weight (D, 1, KW); bias (D,) or None."""
    b, d, s = x.shape
    kw = weight.shape[-1]
    out = torch.empty((b, d, s), dtype=x.dtype, device=x.device)
    w = weight.detach().reshape(d, kw).float().contiguous()
    bf = None if bias is None else bias.detach().float().contiguous()
    interp = triton_runtime.interpreted()
    grid = (b, -(-d // BLOCK_C), -(-s // BLOCK_T))
    _kernels().conv_silu_kernel[grid](x, w, w if bf is None else bf, out, *x.stride(), d, s, KW=kw,
                                      HAS_BIAS=bf is not None, BC=BLOCK_C, BT=BLOCK_T,
                                      **({} if interp else {"num_warps": NUM_WARPS}))
    return out


@torch.library.custom_op("dimbench_scan::causal_conv1d_silu", mutates_args=())
def _conv_op(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return launch(x, weight, bias)


@_conv_op.register_fake
def _conv_fake(x, weight, bias):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:2], inputs[2] if inputs[2] is not None else None)
    ctx.has_bias = inputs[2] is not None


def _backward(ctx, grad_out):
    x, weight, bias = ctx.saved_tensors
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(need) for t, need in zip((x, weight), ctx.needs_input_grad[:2],
                                                                        strict=True)]
        b = bias.detach().requires_grad_(ctx.needs_input_grad[2]) if ctx.has_bias else None
        y = causal_conv1d_silu_reference(leaves[0], leaves[1], b)
        wrt = [t for t in (*leaves, b) if t is not None and t.requires_grad]
        grads = iter(torch.autograd.grad(y, wrt, grad_out.to(y.dtype)) if wrt else ())
    out = [next(grads) if t is not None and t.requires_grad else None for t in (*leaves, b)]
    return tuple(out)


_conv_op.register_autograd(_backward, setup_context=_setup_context)


# ---- the C kernels for CPU training (see the module docstring): an op of their own, so that the Triton op above
# keeps running its kernel on CPU tensors under TRITON_INTERPRET=1 (the interpreter tests and the GPU check's CPU
# dry run test it so).


@torch.library.custom_op("dimbench_scan::causal_conv1d_silu_cpu", mutates_args=())
def _cpu_conv_op(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return cpu_fused.cpu_conv_silu(x, weight, bias)


@_cpu_conv_op.register_fake
def _cpu_conv_fake(x, weight, bias):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.custom_op("dimbench_scan::causal_conv1d_silu_cpu_backward", mutates_args=())
def _cpu_conv_backward_op(grad_out: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None) -> list[Tensor]:
    """[dx, dweight] (+ [dbias] with a bias): the C kernel's analytic backward."""
    grads = cpu_fused.cpu_conv_silu_backward(grad_out, x, weight, bias)
    return grads[:2] if bias is None else grads


@_cpu_conv_backward_op.register_fake
def _cpu_conv_backward_fake(grad_out, x, weight, bias):
    return [torch.empty_like(t, memory_format=torch.contiguous_format) for t in (x, weight, bias) if t is not None]


def _cpu_backward(ctx, grad_out):
    x, weight, bias = ctx.saved_tensors
    grads = iter(torch.ops.dimbench_scan.causal_conv1d_silu_cpu_backward(grad_out, x, weight,
                                                                         bias if ctx.has_bias else None))
    out = [next(grads), next(grads), next(grads) if ctx.has_bias else None]
    return tuple(g if need else None for g, need in zip(out, ctx.needs_input_grad, strict=True))


_cpu_conv_op.register_autograd(_cpu_backward, setup_context=_setup_context)
