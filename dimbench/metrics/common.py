"""Helpers every metric shares: build the model for a point, make its inputs, resolve device and dtype, and say
which attention and scan kernels actually ran.

The model is always built in float32; a bfloat16/float16 point runs it under ``torch.autocast`` (the way these
models are trained and sampled), so the dtype of a point is an autocast dtype, not a parameter dtype.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from typing import Any

import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import TorchDispatchMode

import models
from dimbench.points import SweepPoint
from models import model_info

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# The aten kernels scaled_dot_product_attention can resolve to, and the name a reader knows them by.
ATTENTION_KERNELS = {
    "_scaled_dot_product_flash_attention": "flash",
    "_scaled_dot_product_efficient_attention": "efficient",
    "_scaled_dot_product_cudnn_attention": "cudnn",
    "_scaled_dot_product_flash_attention_for_cpu": "cpu_flash",
    "_scaled_dot_product_fused_attention_overrideable": "overrideable",
    "_scaled_dot_product_attention_math": "math",
}


def resolve_device(point: SweepPoint) -> torch.device:
    """The point's device; a CUDA point on a machine without CUDA is an error, not a silent CPU run.

    On CUDA it also pins TF32 (:func:`pin_tf32`), so every model computes float32 the same way."""
    device = torch.device(point.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"point {point.key} asks for {point.device} but CUDA is not available here")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        pin_tf32()
    return device


#: What :func:`pin_tf32` guarantees, for the timed rows' methods.
TF32_PINNED = "TF32 off for matmuls and cuDNN convolutions alike (pinned together)"


def pin_tf32() -> None:
    """TF32 off for CUDA matmuls and for cuDNN convolutions, together.

    torch's defaults differ (matmul TF32 off, cuDNN TF32 on): a convolutional model (DiCo, whose own harness timed
    it that way) would run its convolutions in TF32 while a transformer runs true float32. Both off is the
    float32 the papers' "fp32" tables claim; the rows record the flags (extra.tf32)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # newer torch prefers its fp32_precision settings; the flags still rule
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def resolve_dtype(point: SweepPoint) -> torch.dtype:
    try:
        return DTYPES[point.dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {point.dtype!r}; known: {', '.join(DTYPES)}") from None


def autocast_context(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """float32 runs as is; a lower precision runs under torch.autocast on the point's device type."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def precision_label(dtype: torch.dtype) -> str:
    """How the point's dtype was applied, for method strings."""
    if dtype == torch.float32:
        return "float32 weights and activations"
    return f"float32 weights, torch.autocast({str(dtype).replace('torch.', '')})"


def model_kwargs(point: SweepPoint) -> dict[str, Any]:
    """create_model keyword arguments for a point: its input size and the family options it sets."""
    for option, value in point.options.items():
        problem = models.option_problem(point.model, option, value)
        if problem:
            raise ValueError(f"{point.model}: {problem}")
    return {"input_size": point.input_size, **point.options}


def build_model(point: SweepPoint, device: torch.device | str, *, load_weights: bool = True) -> nn.Module:
    """Build the point's model on ``device`` in float32, in eval mode.

    Elsewhere than on the meta device the point's checkpoint, if any, is loaded (models.load_checkpoint: strict,
    position embedding adapted to the point's input size). On the meta device nothing is allocated and no
    checkpoint is read: counts depend on the architecture only, which is the registered configuration.
    """
    device = torch.device(device)
    if point.checkpoint and load_weights and device.type != "meta":
        model = models.load_checkpoint(
            point.model, point.checkpoint, input_size=point.input_size, options=point.options, map_location=device,
        )
    else:
        with torch.device(device):
            model = models.create_model(point.model, **model_kwargs(point))
    return model.eval()


#: torch.compile modes a suite's ``compile`` key may name (besides "eager": not compiled).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


#: Environment variable naming another torch.compile backend than inductor ("aot_eager", "eager": for tests and
#: debugging; the mode then does not apply). Recorded in every compiled row's method.
COMPILE_BACKEND_ENV = "DIMBENCH_COMPILE_BACKEND"


def compile_backend() -> str:
    return os.environ.get(COMPILE_BACKEND_ENV) or "inductor"


def compile_label(point: SweepPoint) -> str:
    """How the point runs its model, for method strings: ``torch.compile(mode='default', whole model)`` or
    ``eager (not compiled)``."""
    if not point.compile:
        return "eager (not compiled)"
    backend = compile_backend()
    return f"torch.compile(mode={point.compile!r}, whole model" + (
        ")" if backend == "inductor" else f", backend={backend!r} from ${COMPILE_BACKEND_ENV}: mode not applied)")


def compile_model(model: nn.Module, point: SweepPoint) -> nn.Module:
    """What a timed metric runs at this point: the model itself at an eager point; at a compiled point
    ``torch.compile(model, mode=point.compile)``, a wrapper that shares its parameters and compiles on its first
    call (the metrics make that call outside the timed region, see :func:`first_call`).

    Counting metrics never compile: a count or a FakeTensor prediction is the same for the compiled model."""
    if not point.compile:
        return model
    if point.compile not in COMPILE_MODES:
        raise ValueError(f"unknown torch.compile mode {point.compile!r}; known: {', '.join(COMPILE_MODES)}")
    backend = compile_backend()
    if backend != "inductor":
        return torch.compile(model, backend=backend)
    return torch.compile(model, mode=point.compile)


def first_call(fn, point: SweepPoint, device: torch.device) -> dict[str, Any]:
    """At a compiled point, make the first (compiling) call of ``fn`` untimed and say how long it took: extra
    fields {compile, compile_first_call_s}. Nothing at an eager point."""
    if not point.compile:
        return {}

    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return {"compile": point.compile, "compile_backend": compile_backend(),
            "compile_first_call_s": time.perf_counter() - t0}


def num_classes(model_name: str) -> int:
    """Real classes of a class-conditional model; 0 for an unconditional one."""
    return int(model_info(model_name).defaults.get("num_classes") or 0)


def make_inputs(
    model_name: str,
    batch: int,
    input_size: int,
    device: torch.device | str,
    *,
    in_channels: int | None = None,
    classes: int | None = None,
    seed: int = 0,
    shapes_only: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(x, t, y) for one denoising forward pass of ``model_name``.

    x: (batch, in_channels, input_size, input_size) standard normal; t: in the family's convention; y: random
    labels for a class-conditional model, None (the null class) for an unconditional one. ``in_channels`` and
    ``classes`` default to the registered configuration's (a checkpoint may differ). With ``shapes_only``
    (implied on the meta device; needed under FakeTensorMode, where no random generator may be created) the
    tensors are uninitialised: right shapes and dtypes, no values.
    """
    info = model_info(model_name)
    channels = int(in_channels if in_channels is not None else info.defaults["in_channels"])
    device = torch.device(device)
    timestep = models.family(info.family).timestep
    classes = num_classes(model_name) if classes is None else int(classes)
    if shapes_only or device.type == "meta":
        x = torch.empty(batch, channels, input_size, input_size, device=device)
        t = timestep.empty(batch, device)
        y = torch.empty(batch, device=device, dtype=torch.long) if classes > 0 else None
        return x, t, y
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(batch, channels, input_size, input_size, device=device, generator=gen)
    t = timestep.sample(batch, device, gen)
    y = torch.randint(0, classes, (batch,), device=device, generator=gen) if classes > 0 else None
    return x, t, y


def point_inputs(point: SweepPoint, model: nn.Module, device: torch.device | str, **kwargs: Any):
    """make_inputs for a point, with the channel and class counts of the model actually built."""
    in_channels, classes = getattr(model, "in_channels", None), getattr(model, "num_classes", None)
    return make_inputs(
        point.model, point.batch, point.input_size, device, in_channels=in_channels, classes=classes, **kwargs
    )


class KernelRecorder(TorchDispatchMode):
    """Records which attention kernels and custom ops a pass dispatched to; the base of every dispatch mode here.

    scaled_dot_product_attention reaches a dispatch mode as one composite op; decomposing it (as
    FlopCounterMode does) reveals the backend kernel the dispatcher picked for these tensors. Subclasses see
    each op in :meth:`observe` (before it runs) and each result in :meth:`produced`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.attention: set[str] = set()
        self.custom_ops: set[str] = set()

    def observe(self, func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> None:
        name = func._overloadpacket.__name__
        if name in ATTENTION_KERNELS:
            self.attention.add(ATTENTION_KERNELS[name])
        elif func.namespace not in ("aten", "prim"):
            self.custom_ops.add(f"{func.namespace}::{name}")

    def produced(self, out: Any) -> Any:
        return out

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if isinstance(func, torch._ops.OpOverload):  # higher-order ops: nothing to record, run as is
            self.observe(func, args, kwargs)
            if func is not torch.ops.prim.device.default:
                with self:
                    out = func.decompose(*args, **kwargs)
                if out is not NotImplemented:
                    return out
        return self.produced(func(*args, **kwargs))


def probe_backends(run_once) -> dict[str, Any]:
    """Run ``run_once()`` (one untimed forward) recording the attention kernel and the scan backend that ran.

    Raises if the pass returned a FakeTensor (see :func:`ensure_real`). Returns extra fields: attention_backend
    ("none" when the model has no SDPA call), scan_backend (None when no scan ran) and scan_backend_why (why that
    one: the environment variable, or auto's choice with every backend passed over and its reason), gla_backend
    (DiG's gated linear attention, models.gla; None when none ran), custom_ops.
    """
    recorder = KernelRecorder()
    with recorder:
        out = run_once()
    ensure_real(out)
    scan_ran = any(op.startswith("dimbench_scan::") for op in recorder.custom_ops)
    gla_ran = any(op.startswith("dimbench_gla::") for op in recorder.custom_ops)
    return {
        "attention_backend": ",".join(sorted(recorder.attention)) or "none",
        "scan_backend": models.scan_backend() if scan_ran else None,
        "scan_backend_why": models.scan.scan_backend_reason() if scan_ran else None,
        "gla_backend": models.gla.gla_backend() if gla_ran else None,
        "custom_ops": sorted(recorder.custom_ops),
    }


def ensure_real(out: Any) -> None:
    """Raise if a forward that should have computed returned FakeTensors.

    A model that caches tensors made during a FakeTensorMode run (a memory prediction) and reuses them in a
    later real run silently turns that run fake: no compute, bogus timings. Better an error row than that.
    """
    leaves = torch.utils._pytree.tree_leaves(out)
    if any(isinstance(leaf, FakeTensor) for leaf in leaves):
        raise RuntimeError(
            "the forward pass returned a FakeTensor outside FakeTensorMode: the model reused fake tensors cached "
            "during an earlier prediction, so nothing was computed"
        )


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
