"""What the Triton scan backends share: importing triton lazily, its mode (compiled or interpreter), whether a
kernel can run on a device, and loading a kernel file in triton's mode.

Interpreter and compiled modes. ``@triton.jit`` reads TRITON_INTERPRET when it decorates, and triton decorates its
own library (tl.zeros, the combine functions of tl.sum, ...) when it is first imported; an interpreted kernel cannot
call a compiled library function, nor the reverse. So the mode is one per process, fixed by TRITON_INTERPRET at
triton's first import (``interpreted``). ``status`` admits CPU tensors only when that mode is the interpreter (and
TRITON_INTERPRET=1 still set), and says why not otherwise; ``load_kernels`` executes a kernel file with
TRITON_INTERPRET set to that mode, so its kernels always match triton's library, whatever the variable says by
then. Tests therefore run the interpreter in a subprocess started with TRITON_INTERPRET=1.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


@functools.lru_cache(maxsize=1)
def import_triton() -> tuple[bool, str]:
    """(triton imports, reason). Tried once per process."""
    try:
        # optional dependency (not in CPU wheels of torch): imported only when a Triton backend is asked for
        import triton  # noqa: F401

        # see above
        import triton.language  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising something else
        return False, f"triton is not installed or does not import ({type(exc).__name__}: {exc})"
    return True, ""


def interpret_env() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def interpreted() -> bool:
    """Whether this process's triton was imported as the interpreter (TRITON_INTERPRET=1 at its first import)."""
    # optional dependency: see _import_triton
    from triton.language import zeros

    # optional dependency: see _import_triton
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(zeros, InterpretedFunction)


def status(device, what: str, slot: str | None = None) -> tuple[bool, str]:
    """(can a Triton kernel run on ``device``, reason); ``what`` names it in the CUDA reason ("fused Triton
    kernel"); ``slot``, if given, is the backend name for the hint on how to fill the slot with another kernel."""
    ok, reason = import_triton()
    if not ok:
        return False, reason
    device = torch.device(device)
    interp = interpreted()
    if device.type == "cuda":
        if interp:
            return True, "Triton interpreter on CUDA tensors (TRITON_INTERPRET=1; correctness only, slow)"
        return True, f"{what} on CUDA"
    if device.type == "cpu" and interpret_env():
        if interp:
            return True, "Triton interpreter (correctness only, slow)"
        return False, ("TRITON_INTERPRET=1 was set after this process imported triton in compiled mode; the "
                       "interpreter needs it set before triton's first import")
    hint = ("" if slot is None else "; another kernel can fill the slot with "
            f"models.scan.register_backend({slot!r}, fn, is_available)")
    return False, (f"no Triton kernel can run on {device}: it needs a CUDA device, or TRITON_INTERPRET=1 for "
                   f"Triton's interpreter on the CPU (correctness only, slow){hint}")


def load_kernels(path: Path, name: str, probe: str):
    """The module of kernel file ``path`` (as ``name``), executed in the mode triton was imported in; ``probe`` is
    one of its kernels, checked to have loaded in that mode."""
    ok, reason = import_triton()
    if not ok:
        raise RuntimeError(reason)
    interp = interpreted()
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    # @triton.jit reads TRITON_INTERPRET when it decorates: make it agree with triton's own library whatever the
    # variable says now (it may have changed since triton was imported), then restore it.
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interp else "0"
    try:
        sys.modules[name] = module  # triton looks kernels' globals up through their module
        spec.loader.exec_module(module)
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old
    # optional dependency: see _import_triton
    from triton.runtime.interpreter import InterpretedFunction

    if isinstance(getattr(module, probe), InterpretedFunction) != interp:
        sys.modules.pop(name, None)
        raise RuntimeError(f"{name}: the kernels did not load in triton's mode (triton.knobs.runtime.interpret "
                           "set in code overrides TRITON_INTERPRET)")
    return module


_TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int32: "i32",
                 torch.int64: "i64"}


def jit_specialization(fn, args: tuple, constexprs: dict) -> tuple[dict, dict, dict]:
    """(signature, constants, attributes) ``@triton.jit`` derives when ``fn`` is called with ``args`` (tensors,
    ints; meta tensors will do) and the keyword constexprs: an integer argument equal to 1 becomes a constant,
    integers and pointers divisible by 16 (bytes, for pointers) are marked so (``tt.divisibility``), as Triton's
    launcher does. The triple ``ASTSource`` takes."""
    params = [n for n in fn.arg_names if n not in constexprs]
    if len(params) != len(args):
        raise TypeError(f"{fn.__name__}: {len(args)} arguments for {len(params)} parameters")
    signature, constants, attrs = {}, {}, {}
    for name, value in zip(params, args, strict=True):
        index = fn.arg_names.index(name)
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + _TRITON_TYPES[value.dtype]
            if (value.storage_offset() * value.element_size()) % 16 == 0:   # allocations are 16-byte aligned
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{fn.__name__}: argument {name} = {value!r} is neither a tensor nor an int")
        elif value == 1:
            signature[name] = "constexpr"
            constants[(index,)] = 1
        else:
            signature[name] = "i32" if -2**31 <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
    for name, value in constexprs.items():
        signature[name] = "constexpr"
        constants[(fn.arg_names.index(name),)] = value
    return {n: signature[n] for n in fn.arg_names}, constants, attrs


def compile_for_gpu(fn, args: tuple, kwargs: dict, capability: int = 90):
    """Compile a ``@triton.jit`` kernel (triton in compiled mode) as a launch with these arguments would, for an
    NVIDIA GPU of compute capability ``capability`` (90: H100/H200), without a GPU: Triton's front end, its
    passes and ptxas. ``kwargs``: the constexprs and the launch options num_warps, num_stages. Returns Triton's
    compiled kernel (``.asm`` holds ttir, ttgir, llir, ptx, cubin; ``.metadata`` the shared memory)."""
    # optional dependency: compiling for a GPU target needs triton
    import triton

    # see above
    from triton.backends.compiler import GPUTarget

    # see above
    from triton.compiler import ASTSource

    options = {k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs}
    constexprs = {k: v for k, v in kwargs.items() if k not in options}
    signature, constants, attrs = jit_specialization(fn, args, constexprs)
    src = ASTSource(fn=fn, signature=signature, constexprs=constants, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", capability, 32), options=options)


def _bin(tool: str) -> str:
    # optional dependency: see _import_triton
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", tool)


def sass_and_resources(compiled) -> tuple[str, dict]:
    """(SASS text, {REG, STACK, SHARED, LOCAL}) of a kernel from ``compile_for_gpu``, by the ``cuobjdump`` Triton
    bundles."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(compiled.asm["cubin"])
        path = f.name
    try:
        sass = subprocess.run([_bin("cuobjdump"), "-sass", path], capture_output=True, text=True, check=True).stdout
        usage = subprocess.run([_bin("cuobjdump"), "-res-usage", path], capture_output=True, text=True,
                               check=True).stdout
    finally:
        os.unlink(path)
    return sass, {k: int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", usage)}
