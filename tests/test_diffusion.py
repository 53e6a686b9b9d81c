"""models.diffusion: schedules, losses, guidance, the ε-function wrapper and the reference samplers.

The samplers are checked on Gaussian data, where everything is known in closed form: for x0 ~ N(μ, diag s²) the
noised marginal at time t is N(α_t μ, α_t² s² + σ_t²) and the exact noise prediction is
ε(x_t, t) = σ_t (x_t − α_t μ) / (α_t² s² + σ_t²). The probability-flow ODE of such data keeps the standardised
coordinate (x_t − α_t μ)/√(α_t² s² + σ_t²) of each sample constant, so deterministic samplers have an exact
per-sample answer, and the moments they produce differ from the truth by solver error only.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import models
from models.diffusion import (
    SCHEDULES,
    VPSDE,
    DiscreteSchedule,
    Guidance,
    ddim_sample,
    ddpm_sample,
    diffusion_loss,
    dpm_solver_sample,
    eps_mse,
    euler_maruyama_sample,
    fast_orders,
    learned_variance_vlb,
    make_schedule,
    model_eps,
    respaced_steps,
    upsample_guidance,
)

# One intra-op thread: the tensors are small and the machine is shared.
pytestmark = pytest.mark.usefixtures("one_thread")

DIM = models.family("dim").timestep  # n in 1 … 1000
DIT = models.family("dit").timestep  # index in 0 … 999

# ------------------------------------------------------------------------------------------ Gaussian data
# Four dimensions with different means and spreads, in the range of unit-scaled latents. (Spreads well below
# 0.5 make every sampler's error near t = 0 grow quickly: the data's "transition" in log-SNR then falls into the
# last, widest steps of a time-uniform grid.)
MU = torch.tensor([1.0, -0.5, 0.0, 0.3], dtype=torch.float64)
S = torch.tensor([0.5, 1.0, 2.0, 0.7], dtype=torch.float64)
N_SAMPLES = 20_000
# Monte-Carlo standard errors of the sample mean (in units of the output's std) and of the sample variance
# (relative) for the noise the stochastic samplers inject; their tolerances allow 4 of them.
SE_MEAN = 1.0 / math.sqrt(N_SAMPLES)  # 0.0071
SE_VAR = math.sqrt(2.0 / N_SAMPLES)  # 0.0100


def _at(schedule, t: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(α, σ, marginal variance α² s² + σ²) at time t, float64."""
    tt = torch.tensor(t, dtype=torch.float64)
    a, s = schedule.alpha(tt), schedule.sigma(tt)
    return a, s, a**2 * S**2 + s**2


def exact_eps(schedule, calls: list | None = None):
    """The exact ε of the Gaussian data under ``schedule``'s continuous α(t), σ(t), as an EpsFn."""

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if calls is not None:
            calls.append(t)
        # Every sample of a sampler's batch is at the same time: scalar coefficients (float64), float32 update.
        a, s = float(schedule.alpha(t[:1])), float(schedule.sigma(t[:1]))
        return (x - (a * MU).float()) * (s / (a**2 * S**2 + s**2)).float()

    return fn


def standard_noise(n: int = N_SAMPLES, seed: int = 0) -> torch.Tensor:
    """(n, 4) float64 draws standardised to mean exactly 0 and variance exactly 1 per dimension.

    Deterministic samplers on Gaussian data are affine maps of this noise, so its standardisation removes the
    Monte-Carlo error from their output moments entirely.
    """
    z = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (z - z.mean(0)) / z.std(0, unbiased=False)


def start(schedule, z: torch.Tensor) -> torch.Tensor:
    """x at t = 1 drawn from the data's true marginal there (float32).

    Not N(0, I): the SD schedule keeps ᾱ = 0.0047 at its last step, and that prior mismatch (a schedule property,
    up to 0.07·μ·s in the mean) would otherwise hide in the samplers' tolerances.
    """
    a, _, var = _at(schedule, 1.0)
    return (a * MU + var.sqrt() * z).float()


def marginal(schedule, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of x_t (what DPM-Solver and Euler–Maruyama return at t_end)."""
    a, _, var = _at(schedule, t)
    return a * MU, var


def denoised(schedule, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of E[x0 | x_t] (what DDPM and DDIM return: x̂0 at index 0): μ and s⁴α²/(α²s² + σ²)."""
    a, _, var = _at(schedule, t)
    return MU, S**4 * a**2 / var


def moment_errors(out: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean error in units of the expected std, relative variance error), per dimension."""
    out = out.double()
    return (out.mean(0) - mean) / var.sqrt(), out.var(0, unbiased=False) / var - 1.0


def ddpm_variance_bias(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    """Relative error of ancestral DDPM's output variance on the Gaussian data, exactly, per dimension.

    DDPM with the posterior variance β̃ ("fixed small") under-disperses: the true reverse step's variance is
    β̃ + coef_x0²·Var(x0 | x_t). With the exact ε each step is x ← A x + b + √β̃ z, so Var ← A² Var + β̃,
    A = coef_x0·α s²/(α² s² + σ²) + coef_xt; this is that recursion on the respaced chain (an independent
    derivation of the sampler's step, not a call to it).
    """
    ab = schedule.alphas_cumprod[respaced_steps(schedule.num_steps, steps)]
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    beta = 1 - ab / ab_prev
    var = ab[-1] * S**2 + 1 - ab[-1]
    for j in reversed(range(len(ab))):
        a = ab[j].sqrt()
        gain = beta[j] * ab_prev[j].sqrt() / (1 - ab[j]) * a * S**2 / (ab[j] * S**2 + 1 - ab[j])
        gain = gain + (1 - ab_prev[j]) * (1 - beta[j]).sqrt() / (1 - ab[j])
        var = gain**2 * var + (beta[j] * (1 - ab_prev[j]) / (1 - ab[j]) if j > 0 else 0.0)
    return var / denoised(schedule, schedule.t_min)[1] - 1


# ------------------------------------------------------------------------------------------------ schedules
def test_discrete_betas_match_closed_forms():
    sd = DiscreteSchedule.sd_scaled_linear()
    assert sd.num_steps == 1000 and sd.betas.shape == (1000,) and sd.betas.dtype == torch.float64
    assert sd.betas[0].item() == pytest.approx(0.00085, rel=1e-12)
    assert sd.betas[-1].item() == pytest.approx(0.012, rel=1e-12)
    i = torch.arange(1000, dtype=torch.float64)
    root = math.sqrt(0.00085) + i / 999 * (math.sqrt(0.012) - math.sqrt(0.00085))
    torch.testing.assert_close(sd.betas, root**2, rtol=1e-12, atol=0)
    lin = DiscreteSchedule.linear()
    torch.testing.assert_close(lin.betas, 1e-4 + i / 999 * (0.02 - 1e-4), rtol=1e-12, atol=0)
    for sched in (sd, lin):
        assert sched.alphas_cumprod.shape == (1000,) and sched.alphas_cumprod.dtype == torch.float64
        torch.testing.assert_close(sched.alphas_cumprod[0], 1 - sched.betas[0])
        torch.testing.assert_close(sched.alphas_cumprod, torch.cumprod(1 - sched.betas, 0))
    assert sd.alphas_cumprod[-1].item() == pytest.approx(0.00466, rel=1e-2)  # SD's well-known terminal ᾱ
    assert DiscreteSchedule.sd_scaled_linear(num_steps=10).betas.shape == (10,)


def test_make_schedule_names():
    assert SCHEDULES == ("sd_scaled_linear", "linear", "vpsde")
    assert make_schedule("sd_scaled_linear").name == "sd_scaled_linear"
    assert make_schedule("linear", 500).num_steps == 500
    assert isinstance(make_schedule("vpsde"), VPSDE)
    with pytest.raises(ValueError, match="sd_scaled_linear, linear, vpsde"):
        make_schedule("cosine")


@pytest.mark.parametrize("name", ["sd_scaled_linear", "linear"])
def test_continuous_view_passes_through_the_discrete_schedule(name):
    sched = make_schedule(name)
    assert sched.t_min == 1e-3 and sched.t_max == 1.0
    i = torch.tensor([0, 1, 17, 500, 998, 999])
    t_i = (i + 1).double() / 1000
    torch.testing.assert_close(sched.log_alpha(t_i), 0.5 * torch.log(sched.alphas_cumprod[i]), rtol=0, atol=1e-14)
    # Piecewise linear in t between knots.
    mid = (t_i[2] + 0.5e-3).reshape(1)
    expected = 0.25 * (torch.log(sched.alphas_cumprod[17]) + torch.log(sched.alphas_cumprod[18]))
    torch.testing.assert_close(sched.log_alpha(mid)[0], expected, rtol=0, atol=1e-14)
    t = torch.linspace(1e-3, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(sched.alpha(t) ** 2 + sched.sigma(t) ** 2, torch.ones_like(t))
    torch.testing.assert_close(sched.lambda_(t), torch.log(sched.alpha(t)) - torch.log(sched.sigma(t)))
    assert bool((sched.lambda_(t).diff() < 0).all())
    assert sched.index_of(t_i).tolist() == i.tolist()
    assert sched.index_of(torch.tensor([0.0, 0.0104, 2.0])).tolist() == [0, 9, 999]


@pytest.mark.parametrize("sched", [make_schedule("sd_scaled_linear"), make_schedule("linear"), VPSDE()])
def test_inverse_lambda_inverts_lambda(sched):
    t = torch.cat([torch.linspace(1e-3, 1, 997, dtype=torch.float64), torch.tensor([0.0123456, 0.5005, 0.7])])
    torch.testing.assert_close(sched.inverse_lambda(sched.lambda_(t)), t, rtol=0, atol=1e-9)
    assert sched.inverse_lambda(sched.lambda_(0.25)).item() == pytest.approx(0.25, abs=1e-12)  # Python floats too


def test_vpsde_closed_forms():
    vp = VPSDE()
    assert (vp.beta_min, vp.beta_max, vp.t_min, vp.t_max, vp.name) == (0.1, 20.0, 1e-3, 1.0, "vpsde")
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    torch.testing.assert_close(vp.beta(t), 0.1 + 19.9 * t)
    # log α(t) = −½ ∫_0^t β(u) du.
    torch.testing.assert_close(vp.log_alpha(t), -0.5 * (0.1 * t + 19.9 * t**2 / 2))
    torch.testing.assert_close(vp.alpha(t[1:]) ** 2 + vp.sigma(t[1:]) ** 2, torch.ones(10, dtype=torch.float64))
    times = vp.sample_training_time(1000, generator=torch.Generator().manual_seed(0))
    assert times.dtype == torch.float32 and times.shape == (1000,)
    assert float(times.min()) >= VPSDE.TRAIN_T_EPS and float(times.max()) < 1
    x0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    tt = torch.tensor([0.1, 0.5, 1.0])
    a, s = vp.alpha(tt).float()[:, None, None, None], vp.sigma(tt).float()[:, None, None, None]
    torch.testing.assert_close(vp.add_noise(x0, tt, noise), a * x0 + s * noise)


def test_network_time_conventions():
    sched = make_schedule("sd_scaled_linear")
    idx = torch.tensor([0, 1, 998, 999])
    assert sched.network_time(idx, DIM).tolist() == [1.0, 2.0, 999.0, 1000.0]  # DiM / U-ViT: n in 1 … 1000
    assert sched.network_time(idx, DIT).tolist() == [0.0, 1.0, 998.0, 999.0]  # DiT: the index
    assert sched.network_time(idx, DIM).dtype == torch.float32
    t = torch.tensor([1e-3, 0.5, 1.0], dtype=torch.float64)
    assert sched.continuous_network_time(t, DIM).tolist() == [1.0, 500.0, 1000.0]  # t·1000 (dim.md §7)
    assert sched.continuous_network_time(t, DIT).tolist() == [0.0, 499.0, 999.0]  # t·N − 1 (DPM-Solver)
    # The grid time of index i gives exactly the discrete convention's input, also in float32 t.
    grid = (torch.arange(1000) + 1).double() / 1000
    assert torch.equal(sched.continuous_network_time(grid, DIT), sched.network_time(torch.arange(1000), DIT))
    vp = VPSDE()
    assert vp.network_time(torch.tensor([0.0, 1.0]), DIM).tolist() == [0.0, 999.0]  # 999·t whatever the family
    assert vp.continuous_network_time(torch.tensor([0.5]), DIT).tolist() == [499.5]


def test_training_time_and_add_noise():
    sched = make_schedule("linear")
    gen = torch.Generator().manual_seed(0)
    time_ = sched.sample_training_time(5000, generator=gen)
    assert time_.dtype == torch.long and int(time_.min()) == 0 and int(time_.max()) == 999
    again = sched.sample_training_time(5000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(time_, again)
    x0, noise = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    t = torch.tensor([0, 10, 500, 999])
    ab = sched.alphas_cumprod[t].float()[:, None, None, None]
    torch.testing.assert_close(sched.add_noise(x0, t, noise), ab.sqrt() * x0 + (1 - ab).sqrt() * noise)
    assert sched.add_noise(x0.bfloat16(), t, noise).dtype == torch.bfloat16


# --------------------------------------------------------------------------------- samplers on Gaussian data
def test_ddpm_1000_steps_recovers_the_data():
    """Ancestral DDPM, SD schedule, all 1000 steps.

    Tolerance: mean within 4 MC standard errors (no bias: the mean recursion is exact); variance within 4 MC
    standard errors (4 %) of the data variance shifted by the sampler's exact small-variance bias (−0.5 … −1.6 %).
    """
    sched = make_schedule("sd_scaled_linear")
    x_T = start(sched, standard_noise())
    out = ddpm_sample(exact_eps(sched), sched, x_T, generator=torch.Generator().manual_seed(1))
    assert out.dtype == torch.float32
    mean_err, var_err = moment_errors(out, *denoised(sched, sched.t_min))
    bias = ddpm_variance_bias(sched, 1000)
    assert bool((bias.abs() < 0.02).all()), bias
    assert bool((mean_err.abs() < 4 * SE_MEAN).all()), mean_err
    assert bool(((var_err - bias).abs() < 4 * SE_VAR).all()), (var_err, bias)


def test_ddpm_respaced_250_steps_recovers_the_data():
    """DiT's sampler: linear schedule respaced to 250 steps. Same tolerances; the small-variance bias is −2.5 …
    −5.6 % here (four times fewer, wider steps), which is why DiT learns its variance."""
    sched = make_schedule("linear")
    out = ddpm_sample(
        exact_eps(sched), sched, start(sched, standard_noise()), steps=250, generator=torch.Generator().manual_seed(1)
    )
    mean_err, var_err = moment_errors(out, *denoised(sched, sched.t_min))
    bias = ddpm_variance_bias(sched, 250)
    assert bool((bias.abs() < 0.06).all()), bias
    assert bool((mean_err.abs() < 4 * SE_MEAN).all()), mean_err
    assert bool(((var_err - bias).abs() < 4 * SE_VAR).all()), (var_err, bias)


def test_respaced_steps_as_dit():
    kept = respaced_steps(1000, 250)
    assert len(kept) == 250 and kept[0] == 0 and kept[-1] == 999
    assert kept == sorted(set(kept))  # strictly increasing
    assert kept[:6] == [0, 4, 8, 12, 16, 20]
    assert respaced_steps(1000, 1000) == list(range(1000))
    assert respaced_steps(1000, 1) == [999]
    with pytest.raises(ValueError):
        respaced_steps(1000, 1001)


def test_ddpm_learned_variance_path_and_determinism():
    """v = −1 selects the posterior variance: same result as the fixed-small sampler with the same generator;
    v = +1 (β_t, larger) spreads more; and a seeded generator makes the sampler deterministic."""
    sched = make_schedule("linear")
    eps = exact_eps(sched)
    x_T = start(sched, standard_noise(2000))

    def with_v(value):
        return lambda x, t: (eps(x, t), torch.full_like(x, value))

    def run(fn, clip=None):
        return ddpm_sample(fn, sched, x_T, steps=50, generator=torch.Generator().manual_seed(3), clip_x0=clip)

    small = run(eps)
    assert torch.equal(small, run(eps))
    torch.testing.assert_close(run(with_v(-1.0)), small, rtol=0, atol=1e-5)
    assert bool((run(with_v(1.0)).var(0) > small.var(0)).all())
    assert torch.equal(run(eps, clip=1e9), small) and not torch.allclose(run(eps, clip=0.1), small)


@pytest.mark.parametrize(
    "steps, var_tol",
    [
        (50, 0.15),  # first order in the step: −4 … −10 % measured
        (1000, 0.01),  # −0.2 … −0.6 % measured
    ],
)
def test_ddim_recovers_the_data(steps, var_tol):
    """Deterministic DDIM (η = 0). Tolerance: no Monte-Carlo error (an affine map of standardised noise), so the
    mean is exact to float32 rounding and the variance off by solver error only (bound = measured × ~1.5)."""
    sched = make_schedule("sd_scaled_linear")
    out = ddim_sample(exact_eps(sched), sched, start(sched, standard_noise()), steps=steps)
    mean_err, var_err = moment_errors(out, *denoised(sched, sched.t_min))
    assert bool((mean_err.abs() < 1e-5).all()), mean_err
    assert bool((var_err.abs() < var_tol).all()), var_err


def test_ddim_with_eta_is_stochastic_and_seeded():
    sched = make_schedule("sd_scaled_linear")
    x_T = start(sched, standard_noise(500))
    a = ddim_sample(exact_eps(sched), sched, x_T, steps=20, eta=1.0, generator=torch.Generator().manual_seed(0))
    b = ddim_sample(exact_eps(sched), sched, x_T, steps=20, eta=1.0, generator=torch.Generator().manual_seed(0))
    c = ddim_sample(exact_eps(sched), sched, x_T, steps=20, eta=0.0)
    assert torch.equal(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize(
    "schedule_name, predict, order, steps, var_tol",
    [
        # DiM's sampler and its variants, 50 steps on the time-uniform grid with the official step placement
        # (intermediate points at the grid points): measured |var error| ≤ 3.0 % (data) and ≤ 9.4 % (noise),
        # largest for the smallest spread; bounds ~1.5 × that.
        ("sd_scaled_linear", "data", 3, 50, 0.045),
        ("sd_scaled_linear", "data", 2, 50, 0.045),
        ("sd_scaled_linear", "noise", 3, 50, 0.14),
        ("sd_scaled_linear", "noise", 2, 50, 0.14),
        ("vpsde", "data", 3, 50, 0.035),  # measured ≤ 2.0 %
        # ~20 steps, loosely: measured ≤ 11 % (data) and ≤ 33 % (noise).
        ("sd_scaled_linear", "data", 3, 20, 0.16),
        ("sd_scaled_linear", "noise", 3, 20, 0.5),
    ],
)
def test_dpm_solver_recovers_the_data(schedule_name, predict, order, steps, var_tol):
    """DPM-Solver(++) returns x at t_end = 1e-3, so the target is the data's marginal there. Tolerance: as DDIM
    (no Monte-Carlo error; the mean path x = α μ is reproduced exactly), the variance off by solver error."""
    sched = make_schedule(schedule_name)
    calls: list = []
    out = dpm_solver_sample(
        exact_eps(sched, calls), sched, start(sched, standard_noise()), steps=steps, order=order, predict=predict
    )
    assert len(calls) == steps
    assert out.dtype == torch.float32
    mean_err, var_err = moment_errors(out, *marginal(sched, 1e-3))
    assert bool((mean_err.abs() < 1e-5).all()), mean_err
    assert bool((var_err.abs() < var_tol).all()), var_err


@pytest.mark.parametrize("predict", ["data", "noise"])
def test_dpm_solver_converges_at_its_order(predict):
    """Per-sample error against the exact ODE solution on a log-SNR grid (no wide last step), where the
    asymptotic rates show: doubling the steps divides the error by ≥ 3 (order 2, ideally 4) and ≥ 5 (order 3,
    ideally 8). The time-uniform grid of DiM is also checked to converge (by ≥ 2 per doubling past 100 steps)."""
    sched = make_schedule("sd_scaled_linear")
    z = standard_noise(500)
    x_T = start(sched, z)
    a, _, var = _at(sched, 1e-3)
    exact = a * MU + var.sqrt() * z

    def err(order, steps, skip):
        out = dpm_solver_sample(exact_eps(sched), sched, x_T, steps=steps, order=order, predict=predict, skip=skip)
        return float(((out.double() - exact).abs() / S).max())

    # Order 3 ends in a second-order step one grid interval shorter than the others (the official placement on
    # the (steps+1)-point grid), which keeps the first doubling pre-asymptotic (measured 4.8 and 6.7 for data
    # prediction, ideally 8): each doubling must beat order 2's ideal 4, two of them order 2's 16 (> 25).
    for order, ratio, ladder in [(2, 3.0, (24, 48, 96)), (3, 4.0, (23, 47, 95))]:
        errors = [err(order, steps, "logSNR") for steps in ladder]
        assert errors[0] / errors[1] > ratio and errors[1] / errors[2] > ratio, (order, errors)
        assert order == 2 or errors[0] / errors[2] > 25, (order, errors)
    # 101 and 200 steps both end in a second-order step (202 would end in a first-order one, whose error dominates)
    assert err(3, 101, "time_uniform") / err(3, 200, "time_uniform") > 2.0


def test_dpm_solver_plus_plus_50_matches_ddim_1000_per_sample():
    """Same initial noise. DDIM ends with x̂0 at index 0 (t = 1/N) and DPM-Solver++ with x at t_end = 1/N, so the
    latter gets the same final x̂0 = (x − σε)/α before comparing. Tolerance: DDIM-1000 sits within 0.1 % of the
    exact solution, so the difference is DPM-Solver++-50's own error: measured RMS ≤ 1.9 %·s and max ≤ 8 %·s in
    the smallest-spread dimension (0.05 %·s and 0.3 %·s in the widest); bounds 3 %·s and 12 %·s."""
    sched = make_schedule("sd_scaled_linear")
    eps = exact_eps(sched)
    x_T = start(sched, standard_noise())
    ref = ddim_sample(eps, sched, x_T, steps=1000).double()
    x = dpm_solver_sample(eps, sched, x_T, steps=50, order=3, predict="data", t_end=sched.t_min)
    t_end = torch.full((x.shape[0],), sched.t_min, dtype=torch.float64)
    x0 = (x.double() - sched.sigma(t_end)[:, None] * eps(x, t_end).double()) / sched.alpha(t_end)[:, None]
    diff = (x0 - ref) / S
    assert bool((diff.pow(2).mean(0).sqrt() < 0.03).all()), diff.pow(2).mean(0).sqrt()
    assert bool((diff.abs().max(0).values < 0.12).all()), diff.abs().max(0).values


def test_euler_maruyama_recovers_the_data():
    """Euler–Maruyama, VP-SDE, 1000 steps, to x at t_end = 1e-3. Tolerance: 4 MC standard errors plus the
    solver's weak error, measured with 400k samples at ≤ 0.3 % in the variance and within MC noise in the mean
    (allowance 0.5 % for each)."""
    vp = VPSDE()
    out = euler_maruyama_sample(
        exact_eps(vp), vp, start(vp, standard_noise()), generator=torch.Generator().manual_seed(3)
    )
    assert out.dtype == torch.float32
    mean_err, var_err = moment_errors(out, *marginal(vp, 1e-3))
    assert bool((mean_err.abs() < 4 * SE_MEAN + 0.005).all()), mean_err
    assert bool((var_err.abs() < 4 * SE_VAR + 0.005).all()), var_err


# ------------------------------------------------------------------------------------------------ fast orders
def test_fast_orders():
    assert fast_orders(50, 3) == [3] * 16 + [2]
    assert fast_orders(51, 3) == [3] * 16 + [2, 1]
    assert fast_orders(49, 3) == [3] * 16 + [1]
    assert fast_orders(20, 2) == [2] * 10 and fast_orders(21, 2) == [2] * 10 + [1]
    assert fast_orders(7, 1) == [1] * 7
    for steps in range(1, 60):
        for order in (1, 2, 3):
            orders = fast_orders(steps, order)
            assert sum(orders) == steps and max(orders) <= order
    with pytest.raises(ValueError):
        fast_orders(10, 4)


@pytest.mark.parametrize("steps, order, skip", [(50, 3, "time_uniform"), (10, 2, "logSNR"), (7, 3, "time_quadratic")])
def test_dpm_solver_calls_eps_fn_steps_times(steps, order, skip):
    sched = make_schedule("linear")
    for predict in ("data", "noise"):
        calls: list = []
        dpm_solver_sample(
            exact_eps(sched, calls), sched, torch.randn(3, 4), steps=steps, order=order, predict=predict, skip=skip
        )
        assert len(calls) == steps
        times = [float(t[0]) for t in calls]
        assert times[0] == 1.0 and 1e-3 < min(times) and all(t.dtype == torch.float64 for t in calls)


def _official_fast_table(sched, steps: int, order: int, t_T: float = 1.0, t_0: float = 1e-3):
    """(s, r1, r2, t) per step as the official dpm_solver_pp.py computes them (U-ViT's and DiM's copy,
    DPM_Solver.get_time_steps_for_dpm_solver_fast and sample(method="fast"), skip_type "time_uniform"), written
    out here independently of dimbench's sampler: K outer steps with the fast orders, the (steps+1)-point uniform
    grid, a step of order k from grid point i to i+k, r1 and r2 from the λ of the grid points i+1 and i+2."""
    if order == 3:
        k = steps // 3 + 1
        orders = ([3] * (k - 2) + [2, 1] if steps % 3 == 0 else [3] * (k - 1) + [1] if steps % 3 == 1
                  else [3] * (k - 1) + [2])
    else:
        k = steps // 2
        orders = [2] * k + ([1] if steps % 2 else [])
    grid = torch.linspace(t_T, t_0, steps + 1, dtype=torch.float64)

    def lam(i):
        return float(sched.lambda_(grid[i]))

    table, i = [], 0
    for o in orders:
        h = lam(i + o) - lam(i)
        r1 = None if o <= 1 else (lam(i + 1) - lam(i)) / h
        r2 = None if o <= 2 else (lam(i + 2) - lam(i)) / h
        table.append((float(grid[i]), r1, r2, float(grid[i + o])))
        i += o
    return table


@pytest.mark.parametrize("steps, order", [(20, 2), (20, 3), (50, 2), (50, 3)])
def test_dpm_solver_step_placement_is_the_official_fast_method(steps, order):
    """dimbench's (s, r1, r2, t) equal the official formula's, and the sampler evaluates ε exactly there: at s,
    then at λ_s + r1·h (and λ_s + r2·h), mapped back to time, which are the grid points the step spans."""
    from models.diffusion.samplers import dpm_solver_fast_steps

    sched = make_schedule("sd_scaled_linear")
    official = _official_fast_table(sched, steps, order)
    ours = []
    for s, mids, t in dpm_solver_fast_steps(sched, steps, order):
        lam_s, lam_t = (float(sched.lambda_(torch.tensor(x, dtype=torch.float64))) for x in (s, t))
        r = [(float(sched.lambda_(torch.tensor(m, dtype=torch.float64))) - lam_s) / (lam_t - lam_s) for m in mids]
        ours.append((s, *(r + [None] * (2 - len(r))), t))
    for mine, theirs in zip(ours, official, strict=True):
        assert [m is None for m in mine] == [t is None for t in theirs], (mine, theirs)
        assert [m for m in mine if m is not None] == pytest.approx([t for t in theirs if t is not None], rel=1e-12,
                                                                   abs=1e-12), (mine, theirs)
    # What the sampler calls, for both parametrisations: each step's s, then inverse_lambda(λ_s + r·h).
    expected = []
    for s, r1, r2, t in official:
        lam_s, lam_t = (sched.lambda_(torch.tensor(x, dtype=torch.float64)) for x in (s, t))
        expected += [s] + [float(sched.inverse_lambda(lam_s + r * (lam_t - lam_s))) for r in (r1, r2) if r]
    for predict in ("data", "noise"):
        calls: list = []
        dpm_solver_sample(exact_eps(sched, calls), sched, torch.randn(2, 4), steps=steps, order=order,
                          predict=predict)
        assert [float(c[0]) for c in calls] == pytest.approx(expected, abs=1e-9)
    if (steps, order) == (50, 3):  # sixteen 3rd-order steps, then one 2nd-order step from t_48 to t_50
        assert [len(m) + 1 for _, m, _ in dpm_solver_fast_steps(sched, 50, 3)] == [3] * 16 + [2]
        s, r1, r2, t = official[-1]
        assert (s, t, r2) == (pytest.approx(0.04096), pytest.approx(1e-3), None)
        assert expected[-1] == pytest.approx(0.02098, abs=1e-5)  # grid point 49 (a λ-midpoint would be 0.0067)
        assert r1 == pytest.approx(0.1908, abs=1e-4)  # not ½: λ changes fastest near t = 0


# --------------------------------------------------------------------------------------------------- guidance
def test_guidance_conventions():
    g = Guidance.from_dit(1.5)
    assert g.s == 0.5 and g.w == 1.5
    assert Guidance.from_uvit(0.4).w == pytest.approx(1.4)
    assert Guidance.from_dit(1.4, channels=3).channels == 3
    e_c, e_u = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    g = Guidance.from_uvit(0.7)
    torch.testing.assert_close(g.combine(e_c, e_u), e_c + 0.7 * (e_c - e_u))  # U-ViT / DiM
    torch.testing.assert_close(g.combine(e_c, e_u), e_u + 1.7 * (e_c - e_u))  # DiT with w = 1.7
    part = Guidance.from_dit(4.0, channels=3).combine(e_c, e_u)
    torch.testing.assert_close(part[:, :3], e_u[:, :3] + 4.0 * (e_c[:, :3] - e_u[:, :3]))
    assert torch.equal(part[:, 3:], e_c[:, 3:])  # unguided channels stay conditional
    assert Guidance.from_uvit(0.4).describe() == "classifier-free guidance s = 0.4 (w = 1.4 in DiT's convention)"
    assert "first 3 channels" in Guidance.from_dit(1.5, channels=3).describe()


# ------------------------------------------------------------------------------------------------ model_eps
class Recorder(nn.Module):
    """A fake network that records its inputs: ε = 0.5·x + 0.1·y (+ v = tanh(x) when learning the variance)."""

    def __init__(self, learned_sigma: bool = False):
        super().__init__()
        self.learned_sigma = learned_sigma
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

    def forward(self, x, t, y=None):
        self.calls.append((x, t, y))
        eps = 0.5 * x + (0.0 if y is None else 0.1 * y.float()[:, None, None, None])
        return torch.cat([eps, torch.tanh(x)], dim=1) if self.learned_sigma else eps


def test_model_eps_time_convention_and_plain_call():
    x = torch.randn(3, 4, 2, 2)
    t = torch.tensor([1.0, 0.5, 1e-3], dtype=torch.float64)
    for timestep, expected in [(DIM, [1000.0, 500.0, 1.0]), (DIT, [999.0, 499.0, 0.0])]:
        net = Recorder()
        out = model_eps(net, make_schedule("sd_scaled_linear"), timestep)(x, t)
        assert len(net.calls) == 1 and net.calls[0][2] is None
        assert net.calls[0][1].dtype == torch.float32 and net.calls[0][1].tolist() == expected
        torch.testing.assert_close(out, 0.5 * x)
    net = Recorder()
    model_eps(net, VPSDE(), DIM)(x, torch.tensor([1.0, 0.5, 0.0]))
    assert net.calls[0][1].tolist() == [999.0, 499.5, 0.0]


def test_model_eps_guidance_is_one_doubled_forward():
    x, y = torch.randn(3, 4, 2, 2), torch.tensor([7, 1, 3])
    t = torch.full((3,), 0.5, dtype=torch.float64)
    g = Guidance.from_uvit(0.4)
    net = Recorder()
    eps = model_eps(net, make_schedule("sd_scaled_linear"), DIM, y=y, guidance=g, null_class=1000)(x, t)
    assert len(net.calls) == 1
    x_in, t_in, y_in = net.calls[0]
    assert torch.equal(x_in, torch.cat([x, x])) and y_in.tolist() == [7, 1, 3, 1000, 1000, 1000]
    assert t_in.tolist() == [500.0] * 6
    e_c, e_u = 0.5 * x + 0.1 * y.float()[:, None, None, None], 0.5 * x + 100.0
    torch.testing.assert_close(eps, g.combine(e_c, e_u))
    with pytest.raises(ValueError, match="null_class"):
        model_eps(net, make_schedule("sd_scaled_linear"), DIM, y=y, guidance=g)
    # s = 0 is no guidance: one plain conditional forward, no null class needed.
    net = Recorder()
    model_eps(net, make_schedule("sd_scaled_linear"), DIM, y=y, guidance=Guidance(0.0))(x, t)
    assert net.calls[0][0].shape[0] == 3 and net.calls[0][2].tolist() == [7, 1, 3]


def test_model_eps_learned_sigma_split():
    x, y = torch.randn(2, 4, 2, 2), torch.tensor([5, 6])
    t = torch.full((2,), 0.25, dtype=torch.float64)
    sched = make_schedule("linear")
    plain = model_eps(Recorder(learned_sigma=True), sched, DIT, y=y)(x, t)
    torch.testing.assert_close(plain, 0.5 * x + 0.1 * y.float()[:, None, None, None])
    g = Guidance.from_dit(1.5, channels=3)
    eps, v = model_eps(Recorder(learned_sigma=True), sched, DIT, y=y, guidance=g, null_class=1000,
                       with_variance=True)(x, t)
    assert eps.shape == x.shape and v.shape == x.shape
    torch.testing.assert_close(v, torch.tanh(x))  # the conditional half's v
    e_c = 0.5 * x + 0.1 * y.float()[:, None, None, None]
    torch.testing.assert_close(eps, g.combine(e_c, 0.5 * x + 100.0))
    eps_only_c, v_none = model_eps(Recorder(), sched, DIT, with_variance=True)(x, t)
    assert v_none is None and eps_only_c.shape == x.shape


# --------------------------------------------------------------------------------------------------- losses
def _batch(sched, time_, channels=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, 256, (len(time_), channels, 4, 4), generator=gen).float() / 127.5 - 1  # 8-bit data
    noise = torch.randn(x0.shape, generator=gen)
    return x0, noise, sched.add_noise(x0, time_, noise)


def test_eps_mse_and_plain_loss():
    a, b = torch.randn(4, 3, 4, 4), torch.randn(4, 3, 4, 4)
    torch.testing.assert_close(eps_mse(a, b), ((a - b) ** 2).mean())
    sched = make_schedule("sd_scaled_linear")
    t = torch.tensor([0, 5, 500, 999])
    x0, noise, x_t = _batch(sched, t)
    out = diffusion_loss(sched, a, x0, x_t, t, noise)
    assert set(out) == {"loss", "mse"} and torch.equal(out["loss"], out["mse"])
    vp = VPSDE()
    assert set(diffusion_loss(vp, a, x0, x_t, torch.rand(4), noise)) == {"loss", "mse"}
    with pytest.raises(ValueError, match="discrete"):
        diffusion_loss(vp, torch.randn(4, 6, 4, 4), x0, x_t, torch.rand(4), noise)


def test_vlb_is_zero_for_the_true_posterior_and_positive_otherwise():
    """ε = the true noise gives x̂0 = x0, so p's mean is q's; v = −1 gives p q's (clipped) variance: KL = 0."""
    sched = make_schedule("linear")
    t = torch.tensor([1, 10, 300, 999])
    x0, noise, x_t = _batch(sched, t)
    v = torch.full_like(x0, -1.0)
    vb = learned_variance_vlb(sched, torch.cat([noise, v], 1), x0, x_t, t)
    assert vb.shape == (4,)
    torch.testing.assert_close(vb, torch.zeros(4), rtol=0, atol=2e-5)
    wrong_v = learned_variance_vlb(sched, torch.cat([noise, v + 2], 1), x0, x_t, t)
    wrong_eps = learned_variance_vlb(sched, torch.cat([noise + 0.1, v], 1), x0, x_t, t)
    # A wrong variance costs where β_t and β̃_t differ, i.e. at small t (they coincide as ᾱ → 0: t = 999 costs 0).
    assert float(wrong_v[0]) > 0.1 and float(wrong_v[1]) > 1e-3 and bool((wrong_v >= 0).all())
    assert bool((wrong_eps > 1e-6).all()), wrong_eps
    random = learned_variance_vlb(sched, torch.randn(4, 6, 4, 4).clamp(-1, 1), x0, x_t, t)
    assert bool((random >= 0).all())


def _normal_cdf(u: float, std: float) -> float:
    return 0.5 * (1 + math.erf(u / (std * math.sqrt(2))))


def test_vlb_at_index_zero_is_the_decoder_nll():
    """At index 0 the mean is x̂0 = x0 (ε exact) and the term is −log₂ of the Gaussian mass of x0's 8-bit bin."""
    sched = make_schedule("linear")
    t = torch.zeros(2, dtype=torch.long)
    x0, noise, x_t = _batch(sched, t, seed=1)
    x0[0, 0, 0, 0], x0[0, 0, 0, 1] = -1.0, 1.0  # the two open-ended edge bins
    x_t = sched.add_noise(x0, t, noise)
    beta, ab = sched.betas.tolist(), sched.alphas_cumprod.tolist()
    log_beta0 = math.log(beta[0])  # v = +1: β_1
    log_post1 = math.log(beta[1] * (1 - ab[0]) / (1 - ab[1]))  # v = −1: β̃ clipped to its second entry
    for v_value, log_var in [(1.0, log_beta0), (-1.0, log_post1)]:
        vb = learned_variance_vlb(sched, torch.cat([noise, torch.full_like(x0, v_value)], 1), x0, x_t, t)
        std = math.exp(0.5 * log_var)
        inner = -math.log2(_normal_cdf(1 / 255, std) - _normal_cdf(-1 / 255, std))
        edge = -math.log2(_normal_cdf(1 / 255, std))
        is_edge = (x0.abs() > 0.999).float()
        assert float(is_edge[0].sum()) >= 2
        expected = (is_edge * edge + (1 - is_edge) * inner).mean(dim=(1, 2, 3))
        torch.testing.assert_close(vb, expected.float(), rtol=2e-3, atol=0)


def test_vlb_trains_v_only_and_total_loss():
    sched = make_schedule("linear")
    t = torch.tensor([0, 3, 400, 999])
    x0, noise, x_t = _batch(sched, t)
    out = torch.randn(4, 6, 4, 4).clamp(-1, 1).requires_grad_()
    learned_variance_vlb(sched, out, x0, x_t, t).sum().backward()
    assert float(out.grad[:, :3].abs().max()) == 0.0 and float(out.grad[:, 3:].abs().max()) > 0
    losses = diffusion_loss(sched, out, x0, x_t, t, noise)
    assert set(losses) == {"loss", "mse", "vb"}
    torch.testing.assert_close(losses["loss"], losses["mse"] + losses["vb"])
    torch.testing.assert_close(losses["mse"], eps_mse(out[:, :3], noise))
    torch.testing.assert_close(losses["vb"], learned_variance_vlb(sched, out, x0, x_t, t).mean())
    with pytest.raises(ValueError):
        diffusion_loss(sched, torch.randn(4, 5, 4, 4), x0, x_t, t, noise)


# ----------------------------------------------------------------------------------------- upsample guidance
class Spy:
    """An EpsFn recording its calls: ε = f(x) elementwise (so nothing in it depends on resolution)."""

    def __init__(self, scale: float):
        self.scale, self.calls = scale, []

    def __call__(self, x, t):
        self.calls.append((x.clone(), t.clone()))
        return torch.sin(self.scale * x)


@pytest.mark.parametrize("m", [2, 3])
def test_upsample_guidance(m):
    sched = make_schedule("sd_scaled_linear")
    x = torch.randn(2, 4, 6 * m, 6 * m)
    hi, lo = Spy(1.0), Spy(0.7)
    fn = upsample_guidance(hi, lo, sched, m)  # until = 0.7

    below = fn(x, torch.full((2,), 0.69, dtype=torch.float64))
    assert torch.equal(below, torch.sin(x)) and not lo.calls  # ε_hi exactly, no low-resolution pass

    for t_value in (0.7, 0.85, 1.0):
        lo.calls.clear()
        t = torch.full((2,), t_value, dtype=torch.float64)
        eps = fn(x, t)
        (x_lo, tau), = lo.calls
        # dim.md §8 / the official code: ᾱ at DDPM step ⌊N·t⌋ of the table over steps 0 … N (step 0: ᾱ = 1),
        # i.e. step n is alphas_cumprod[n - 1] here (t = 1 reads step 1000 = the last entry)
        k = math.floor(1000 * t_value)
        ab = float(sched.alphas_cumprod[k - 1])
        torch.testing.assert_close(x_lo, F.avg_pool2d(x, m) / math.sqrt(ab + (1 - ab) / m**2))
        # By construction the pooled guided ε is the low-resolution ε over m.
        torch.testing.assert_close(F.avg_pool2d(eps, m), torch.sin(0.7 * x_lo) / m, rtol=0, atol=1e-6)
        assert bool((tau <= t).all()) and bool((tau == tau[0]).all())
        # τ = step/999 for the step whose SNR is closest to m²·SNR(t) (for m >= 2 that step is well below
        # ⌊N·t⌋, so the clamp τ <= t does not bind; test_upsample_guidance_clamps_tau covers it).
        ab_steps = [1.0] + sched.alphas_cumprod.tolist()  # steps 0 … 1000
        snr = torch.tensor([a / (1 - a) if a < 1 else math.inf for a in ab_steps], dtype=torch.float64)
        target = m**2 * snr[k]
        step = round(float(tau[0]) * 999)  # τ = 1 − idx/999 with idx searching steps 999 … 0
        assert float(tau[0]) < t_value and float(tau[0]) == pytest.approx(step / 999, abs=1e-12)
        assert float((snr[step] - target).abs()) == float((snr[:1000] - target).abs().min())

    # A mixed batch: only the samples at t >= until are guided.
    lo.calls.clear()
    mixed = fn(x, torch.tensor([0.9, 0.3], dtype=torch.float64))
    assert torch.equal(mixed[1], torch.sin(x[1])) and not torch.equal(mixed[0], torch.sin(x[0]))


def test_upsample_guidance_clamps_tau():
    """m = 1 asks for the SNR of step ⌊N·t⌋ itself, found at τ = ⌊N·t⌋/999 > t: the clamp gives τ = t, and the
    pooled input is x itself (P_t = 1)."""
    sched = make_schedule("sd_scaled_linear")
    lo = Spy(0.7)
    x = torch.randn(1, 4, 4, 4)
    upsample_guidance(Spy(1.0), lo, sched, 1)(x, torch.full((1,), 0.8, dtype=torch.float64))
    (x_lo, tau), = lo.calls
    assert tau.tolist() == [0.8] and torch.equal(x_lo, x)


def test_real_models_run_through_model_eps_and_the_samplers():
    """Smoke test on tiny registered models: DiT (learned sigma, guidance on 3 of 4 channels, respaced DDPM) and
    DiM (guided DPM-Solver++), each receiving its family's time convention."""
    torch.manual_seed(0)
    seen: list[torch.Tensor] = []

    def record(module, args):
        seen.append(args[1].detach().clone())

    dit = models.create_model("dit_s_2", input_size=8, depth=1, num_classes=10).eval()
    dit.register_forward_pre_hook(record)
    sched = make_schedule("linear")
    fn = model_eps(dit, sched, DIT, y=torch.tensor([1, 2]), guidance=Guidance.from_dit(1.5, channels=3),
                   null_class=10, with_variance=True)
    out = ddpm_sample(fn, sched, torch.randn(2, 4, 8, 8), steps=4, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 4, 8, 8) and out.dtype == torch.float32 and bool(out.isfinite().all())
    assert [t[0].item() for t in seen] == [999.0, 666.0, 333.0, 0.0] and all(t.shape == (4,) for t in seen)

    seen.clear()
    dim = models.create_model("dim_l_2", input_size=8, depth=3, width=32, num_classes=10).eval()
    dim.register_forward_pre_hook(record)
    sched = make_schedule("sd_scaled_linear")
    fn = model_eps(dim, sched, DIM, y=torch.tensor([3, 4]), guidance=Guidance.from_uvit(0.4), null_class=10)
    out = dpm_solver_sample(fn, sched, torch.randn(2, 4, 8, 8), steps=5)
    assert out.shape == (2, 4, 8, 8) and bool(out.isfinite().all()) and len(seen) == 5
    assert seen[0].tolist() == [1000.0] * 4 and all(1.0 < float(t[0]) <= 1000.0 for t in seen)
