"""The ``cpu_fused`` scan backend (models/scan/cpu_fused.c, a C kernel built on first use): values and every
gradient against the float64 recurrence, channel counts that are and are not multiples of its block of 8, work
split over threads, strong decays (flushed to zero like the chunked backend's), and the build: two builders at
once into one private cache, a damaged cached file rebuilt, a cache others may write refused, and a missing
compiler making it unavailable with the reason (auto then takes chunked, and says so)."""

from __future__ import annotations

import os
import shutil
import stat
import threading

import pytest
import torch
from scan_oracle import recurrence64
from test_scan import NAMES, _analytic_vs_float64, assert_matches_float64, make_inputs

import models
from dimbench.environment import scan_choice
from models.scan import available_backends, resolve_backend, scan_backend_reason, selective_scan
from models.scan import cpu_fused as cf

#: the tests that run the kernel; the build's failure paths are tested whether or not a compiler exists
needs_kernel = pytest.mark.skipif(not available_backends("cpu")["cpu_fused"][0],
                                  reason=f"cpu_fused unavailable: {available_backends('cpu')['cpu_fused'][1]}")


@needs_kernel
@pytest.mark.parametrize("d_inner", [1, 5, 8, 13])
@pytest.mark.parametrize("L", [1, 2, 37])
def test_values_and_gradients_match_float64(d_inner, L):
    """Through the op: d_inner padded to the kernel's block of 8 (a partial block, one exact block, two)."""
    inputs = make_inputs(batch=3, d_inner=d_inner, L=L, N=5, seed=d_inner + L)
    assert_matches_float64(lambda **kw: selective_scan(**kw, backend="cpu_fused"), inputs)


@needs_kernel
@pytest.mark.parametrize("options", [dict(D=False, z=False, delta_bias=False), dict(D=True, z=False)])
def test_analytic_backward_without_softplus_and_gate(options):
    inputs = make_inputs(L=19, **options)
    inputs["delta"] = inputs["delta"].abs() * 0.3  # without softplus Δ must already be positive
    _analytic_vs_float64(inputs, delta_softplus=False, backward=cf.cpu_fused_scan_backward)


@needs_kernel
def test_strong_decay_underflows_to_zero_like_the_recurrence():
    """Large Δ·|A|: decays far below 2**-126 (flushed to 0 by the kernel) still give the recurrence's values."""
    inputs = make_inputs(L=40, N=4, seed=3)
    inputs["A"] = inputs["A"] * 60.0
    inputs["delta"] = inputs["delta"] + 2.5
    _analytic_vs_float64(inputs, backward=cf.cpu_fused_scan_backward)
    out = cf.cpu_fused_scan(**inputs)
    ref = recurrence64(**{k: None if v is None else v.double() for k, v in inputs.items()})
    torch.testing.assert_close(out.double(), ref, rtol=2e-5, atol=2e-5)


@needs_kernel
def test_threads_split_the_work_without_changing_the_result(monkeypatch):
    """Work items (batch element, channel block) split over 1, 2 and 3 threads (torch's count; 15 items, so a
    thread's range ends inside a batch element and its lane sums of dB, dC are flushed there): the same outputs
    (bitwise) and the same gradients up to the order of the per-thread sums; a small problem stays on one thread."""
    inputs = make_inputs(batch=5, d_inner=20, L=23, N=4, seed=11)
    grad_out = torch.randn(5, 20, 23, generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(cf, "MIN_WORK_PER_THREAD", 1)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            assert len(cf._ranges(15, 23 * 4 * 8)) == threads
            out = cf.cpu_fused_scan(**inputs)
            grads = cf.cpu_fused_scan_backward(grad_out, *[inputs[k] for k in NAMES], True, [True] * 8)
            results.append((out, grads))
        monkeypatch.setattr(cf, "MIN_WORK_PER_THREAD", 1 << 17)
        assert len(cf._ranges(15, 23 * 4 * 8)) == 1
    finally:
        torch.set_num_threads(before)
    for out, grads in results[1:]:
        torch.testing.assert_close(out, results[0][0], rtol=0, atol=0)
        for g, g1 in zip(grads, results[0][1], strict=True):
            torch.testing.assert_close(g, g1, rtol=1e-6, atol=1e-6)


@needs_kernel
def test_views_at_dims_strides_read_in_place():
    """The kernel reads its inputs at their strides (no copies): u, delta and z as slices of a (b, 3·d, L) tensor,
    z as DiM hands it too (channels strided by batch·L), grad_out as a transposed (b, L, d) product, B and C as
    slices of x_proj's (b, R + 2N, L): outputs and every gradient bitwise those of the contiguous copies."""
    batch, d, length, n = 3, 13, 21, 5
    g = torch.Generator().manual_seed(7)
    base = make_inputs(batch=batch, d_inner=d, L=length, N=n, seed=5)
    udz = torch.randn(batch, 3 * d, length, generator=g)
    udz[:, d : 2 * d].mul_(0.5).sub_(1.0)  # delta's third: a moderate Δ after softplus
    xz = torch.randn(3 * d, batch, length, generator=g).transpose(0, 1)  # DiM's in_proj layout
    x_dbl = torch.randn(batch, 2 + 2 * n, length, generator=g)
    views = dict(base, u=udz[:, :d], delta=udz[:, d : 2 * d], z=xz[:, 2 * d :],
                 B=x_dbl[:, 2 : 2 + n], C=x_dbl[:, 2 + n :])
    grad_out = torch.randn(batch, length, d, generator=g).transpose(1, 2)
    assert not any(views[k].is_contiguous() for k in ("u", "delta", "z", "B", "C")) and not grad_out.is_contiguous()
    copies = {k: None if v is None else v.contiguous() for k, v in views.items()}
    out_v, out_c = cf.cpu_fused_scan(**views), cf.cpu_fused_scan(**copies)
    assert out_v.is_contiguous()
    torch.testing.assert_close(out_v, out_c, rtol=0, atol=0)
    grads_v = cf.cpu_fused_scan_backward(grad_out, *[views[k] for k in NAMES], True, [True] * 8)
    grads_c = cf.cpu_fused_scan_backward(grad_out.contiguous(), *[copies[k] for k in NAMES], True, [True] * 8)
    for gv, gc in zip(grads_v, grads_c, strict=True):
        assert gv.is_contiguous()
        torch.testing.assert_close(gv, gc, rtol=0, atol=0)


FAKE_CC = """#!/bin/sh
# Writes half a library where the real compiler will write, says it started, waits for the other builder to
# start too, then runs the real compiler.
[ "$1" = "--version" ] && exec {cc} --version
for a; do out=$a; done
printf 'half a library' > "$out"
touch "{marks}/$$"
i=0
while [ "$(ls {marks} | wc -l)" -lt 2 ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i + 1)); done
exec {cc} "$@"
"""


@needs_kernel
def test_two_builders_at_once_leave_one_complete_private_library(tmp_path, monkeypatch):
    """Two builds of the same key running at the same time (each writes its own temporary file, renamed into
    place): one library file, no temporary left, the folder private, both builders load a kernel that computes
    the scan; a later process state loads the cached file instead of building."""
    marks, cache = tmp_path / "marks", tmp_path / "kernels"
    marks.mkdir()
    script = tmp_path / "slow-cc"
    script.write_text(FAKE_CC.format(cc=shutil.which(os.environ.get("CC") or "cc"), marks=marks))
    script.chmod(0o755)
    monkeypatch.setenv("CC", str(script))
    monkeypatch.setenv("DIMBENCH_KERNEL_CACHE", str(cache))
    libs, errors = [], []

    def build():
        try:
            libs.append(cf._build())
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    builders = [threading.Thread(target=build) for _ in range(2)]
    for b in builders:
        b.start()
    for b in builders:
        b.join()
    assert not errors and len(libs) == 2
    assert len(list(marks.iterdir())) == 2, "both compilers ran at the same time"
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".so")] == [], "no temporary file is left"
    built = list(cache.glob("scan_cpu_fused_*.so"))
    assert len(built) == 1 and stat.S_IMODE(cache.stat().st_mode) == 0o700
    monkeypatch.setattr(cf, "_state", {"lib": libs[1]})
    inputs = make_inputs(batch=2, d_inner=9, L=6, N=3, seed=5)
    ref = recurrence64(**{k: None if v is None else v.double() for k, v in inputs.items()})
    torch.testing.assert_close(cf.cpu_fused_scan(**inputs).double(), ref, rtol=2e-5, atol=2e-5)
    mtime = built[0].stat().st_mtime_ns
    monkeypatch.setattr(cf, "_state", {})
    assert cf.cpu_fused_status("cpu")[0]
    assert built[0].stat().st_mtime_ns == mtime, "the cached library is loaded, not rebuilt"
    assert cf.cpu_fused_status("meta") == (False, "a CPU kernel: it runs on CPU tensors only")


@needs_kernel
def test_a_damaged_cached_library_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("DIMBENCH_KERNEL_CACHE", str(tmp_path))
    path = cf._library_path(cf.SOURCE.read_bytes(), (*cf._BASE_FLAGS, *cf._arch_flags()))
    path.write_bytes(b"not a shared library")
    monkeypatch.setattr(cf, "_state", {})
    ok, reason = cf.cpu_fused_status("cpu")
    assert ok, reason
    assert path.read_bytes()[:4] == b"\x7fELF"


def test_a_cache_folder_others_may_write_is_refused(tmp_path, monkeypatch):
    """A library loaded from the cache runs as this process: a folder others may write to is not used."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("DIMBENCH_KERNEL_CACHE", str(shared))
    monkeypatch.setattr(cf, "_state", {})
    ok, reason = cf.cpu_fused_status("cpu")
    if "no C compiler" not in reason:
        assert not ok and f"the kernel cache {shared} may be written by others (mode 777)" in reason
    assert list(shared.iterdir()) == [], "nothing was built there"


def test_a_failing_compiler_makes_it_unavailable_and_auto_takes_chunked(tmp_path, monkeypatch):
    monkeypatch.setenv("DIMBENCH_KERNEL_CACHE", str(tmp_path / "kernels"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.delenv("DIMBENCH_SCAN_BACKEND", raising=False)
    monkeypatch.setattr(cf, "_state", {})
    ok, reason = cf.cpu_fused_status("cpu")
    assert not ok and "no C compiler" in reason and "no-such-compiler" in reason
    assert resolve_backend(None, "cpu") == "chunked"
    with pytest.raises(RuntimeError, match="scan backend 'cpu_fused' .*cannot run on cpu: the C kernel could not"):
        selective_scan(**make_inputs(L=4), backend="cpu_fused")
    # No silent fallback: what ran, and why, is what the rows and `dimbench env` say.
    selective_scan(**make_inputs(L=4))
    assert models.scan_backend() == "chunked"
    why = scan_backend_reason()
    assert why.startswith("auto chose chunked on cpu") and "cpu_fused unavailable" in why and "no C compiler" in why
    assert scan_choice("cpu") == why
