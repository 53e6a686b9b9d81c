"""Reference samplers: ancestral DDPM (with DiT's respacing and learned variance), DDIM, singlestep DPM-Solver /
DPM-Solver++, Euler–Maruyama for the VP-SDE, and Upsample Guidance as an ε-function wrapper.

Every sampler takes an :data:`~models.diffusion.model_fn.EpsFn` ``eps_fn(x, t)`` called with the schedule's
continuous time t (a (B,) float64 tensor on x's device; t_i = (i+1)/N for discrete index i), runs under
torch.no_grad, keeps x in float32 whatever the model computes in, and draws its noise from ``generator`` (seeded:
deterministic). Schedule coefficients are computed in float64 as Python numbers (every sample of a batch is at the
same time) and enter the float32 update as scalars. Written for reading, not speed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .model_fn import EpsFn, eps_only
from .registry import Sampler, register_sampler
from .schedules import VPSDE, DiscreteSchedule

__all__ = [
    "ddpm_sample",
    "ddim_sample",
    "fast_orders",
    "dpm_solver_fast_steps",
    "dpm_solver_sample",
    "euler_maruyama_sample",
    "upsample_guidance",
    "respaced_steps",
]


# ------------------------------------------------------------------------------------------------------ helpers
def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise of x's shape and dtype on x's device, drawn from ``generator`` (on its own device)."""
    if generator is None:
        return torch.randn_like(x)
    return torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)


def _times(x: Tensor, t: float) -> Tensor:
    """(B,) float64 tensor of time t on x's device: the ``t`` an EpsFn receives."""
    return torch.full((x.shape[0],), t, dtype=torch.float64, device=x.device)


def _split(out: Tensor | tuple[Tensor, Tensor | None]) -> tuple[Tensor, Tensor | None]:
    """(ε, v) in float32 from an EpsFn result (v None when the function gives ε only)."""
    if isinstance(out, tuple):
        eps, v = out
        return eps.float(), (None if v is None else v.float())
    return out.float(), None


def respaced_steps(num_steps: int, steps: int) -> list[int]:
    """The ``steps`` original indices (increasing) kept by DiT's even respacing of an N-step chain.

    As improved DDPM's ``space_timesteps(N, [steps])``: a float stride (N−1)/(steps−1) accumulated from 0 and
    rounded, so the first (0) and last (N−1) indices are always kept. ``steps == 1`` keeps only N−1 (improved
    DDPM would keep index 0, which cannot start from noise).
    """
    if not 1 <= steps <= num_steps:
        raise ValueError(f"steps must be in 1 … {num_steps} for a {num_steps}-step schedule, got {steps}")
    if steps == 1:
        return [num_steps - 1]
    stride = (num_steps - 1) / (steps - 1)
    kept, cur = [], 0.0
    for _ in range(steps):
        kept.append(round(cur))
        cur += stride
    return kept


# --------------------------------------------------------------------------------------------------------- DDPM
@torch.no_grad()
def ddpm_sample(
    eps_fn: EpsFn,
    schedule: DiscreteSchedule,
    x_T: Tensor,
    *,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    clip_x0: float | None = None,
) -> Tensor:
    """Ancestral DDPM sampling from x_T (B, C, ...) at index N−1 down to the x̂0 of index 0. Returns float32.

    ``steps`` < N respaces the chain as DiT does (250 steps): keep the indices of :func:`respaced_steps` and
    give the shorter chain the betas β'_j = 1 − ᾱ_{k_j} / ᾱ_{k_{j−1}} (ᾱ before the first = 1), so its
    marginals are the original ones at the kept steps; the network is still called at the original times.
    Each step: x̂0 from ε (clamped to ±clip_x0 if given), then the posterior mean of q(x_{j−1} | x_j, x̂0) plus
    noise of variance β̃_j (the posterior variance: "fixed small"), or, when eps_fn returns (ε, v) with v not
    None, exp(frac·log β'_j + (1 − frac)·log β̃_j), frac = (v+1)/2, on the respaced betas. No noise is added at
    the last step (index 0), whose result is the posterior mean = x̂0.
    """
    n = schedule.num_steps
    kept = respaced_steps(n, n if steps is None else steps)
    ab = schedule.alphas_cumprod[kept]  # float64 (S,) ᾱ of the respaced chain
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    betas = 1.0 - ab / ab_prev
    post_var = betas * (1.0 - ab_prev) / (1.0 - ab)  # β̃_j, 0 at j = 0
    # log β̃ with its zero first entry replaced by the second (only used at j >= 1 anyway).
    log_post_var = torch.log(torch.cat([post_var[1:2], post_var[1:]])) if len(kept) > 1 else torch.log(betas)
    coef_x0 = betas * torch.sqrt(ab_prev) / (1.0 - ab)
    coef_xt = (1.0 - ab_prev) * torch.sqrt(1.0 - betas) / (1.0 - ab)

    x = x_T.float()
    for j in reversed(range(len(kept))):
        eps, v = _split(eps_fn(x, _times(x, (kept[j] + 1) / n)))
        x0 = (x - math.sqrt(1.0 - ab[j].item()) * eps) / math.sqrt(ab[j].item())
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
        mean = coef_x0[j].item() * x0 + coef_xt[j].item() * x
        if j == 0:
            return mean
        if v is None:
            std = math.exp(0.5 * log_post_var[j].item())
        else:
            frac = (v + 1.0) / 2.0
            std = torch.exp(0.5 * (frac * math.log(betas[j].item()) + (1.0 - frac) * log_post_var[j].item()))
        x = mean + std * _randn_like(x, generator)
    return x  # not reached: the loop returns at j = 0


# --------------------------------------------------------------------------------------------------------- DDIM
@torch.no_grad()
def ddim_sample(
    eps_fn: EpsFn,
    schedule: DiscreteSchedule,
    x_T: Tensor,
    *,
    steps: int = 50,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """DDIM from x_T (B, C, ...) at index N−1 to x̂0 at index 0, on the :func:`respaced_steps` indices. float32.

    Step from kept index a to the previous kept index b (ᾱ_b = 1 after the last): x̂0 from ε, then
    x_b = √ᾱ_b x̂0 + √(1 − ᾱ_b − σ²) ε + σ z with σ = η √((1−ᾱ_b)/(1−ᾱ_a)) √(1 − ᾱ_a/ᾱ_b); η = 0 is the
    deterministic sampler (the first-order solver of the probability-flow ODE). The spacing includes index N−1,
    where x_T ~ N(0, I) starts (improved DDPM's "ddimN" stride spacing would start at index N − N/steps).
    """
    kept = respaced_steps(schedule.num_steps, steps)
    n = schedule.num_steps
    x = x_T.float()
    for j in reversed(range(len(kept))):
        a_t = schedule.alphas_cumprod[kept[j]].item()
        a_prev = schedule.alphas_cumprod[kept[j - 1]].item() if j > 0 else 1.0
        eps, _ = _split(eps_fn(x, _times(x, (kept[j] + 1) / n)))
        x0 = (x - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)
        sigma = eta * math.sqrt((1.0 - a_prev) / (1.0 - a_t)) * math.sqrt(1.0 - a_t / a_prev)
        x = math.sqrt(a_prev) * x0 + math.sqrt(max(1.0 - a_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * _randn_like(x, generator)
    return x


# ------------------------------------------------------------------------------------------------- DPM-Solver
def fast_orders(steps: int, order: int) -> list[int]:
    """The orders of DPM-Solver's singlestep "fast" schedule: ``steps`` evaluations in as many order-``order``
    steps as fit, the remainder in one or two lower-order steps. sum(result) == steps.

    order 3: steps = 3k → [3]*(k−1) + [2, 1]; 3k+1 → [3]*k + [1]; 3k+2 → [3]*k + [2] (50 → [3]*16 + [2]).
    order 2: even → [2]*(steps/2); odd → [2]*(steps//2) + [1]. order 1: [1]*steps.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if order == 1:
        return [1] * steps
    if order == 2:
        return [2] * (steps // 2) + [1] * (steps % 2)
    if order == 3:
        k, rest = divmod(steps, 3)
        if rest == 0:
            return [3] * (k - 1) + [2, 1]
        return [3] * k + ([1] if rest == 1 else [2])
    raise ValueError(f"DPM-Solver order must be 1, 2 or 3, got {order}")


class _At:
    """float64 scalars of a schedule at time t: log α, α, σ, λ."""

    def __init__(self, schedule: DiscreteSchedule | VPSDE, t: float):
        self.t = float(t)
        log_alpha = schedule.log_alpha(torch.tensor(self.t, dtype=torch.float64))
        self.log_alpha = log_alpha.item()
        self.alpha = math.exp(self.log_alpha)
        self.sigma = math.sqrt(-math.expm1(2.0 * self.log_alpha))
        self.lam = self.log_alpha - math.log(self.sigma)


def _time_grid(schedule: DiscreteSchedule | VPSDE, t_start: float, t_end: float, steps: int, skip: str) -> list[float]:
    """The steps+1 times of the skip type from t_start down to t_end: uniform in t ("time_uniform", dim.md §7),
    in √t ("time_quadratic") or in λ ("logSNR")."""
    if skip == "time_uniform":
        return torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64).tolist()
    if skip == "time_quadratic":
        return (torch.linspace(math.sqrt(t_start), math.sqrt(t_end), steps + 1, dtype=torch.float64) ** 2).tolist()
    if skip == "logSNR":
        lam = torch.linspace(_At(schedule, t_start).lam, _At(schedule, t_end).lam, steps + 1, dtype=torch.float64)
        ts = schedule.inverse_lambda(lam).tolist()
        ts[0], ts[-1] = t_start, t_end  # exact ends (inverse_lambda round-trips to ~1e-12)
        return ts
    raise ValueError(f"unknown DPM-Solver skip type {skip!r}; known: time_uniform, time_quadratic, logSNR")


def dpm_solver_fast_steps(
    schedule: DiscreteSchedule | VPSDE, steps: int = 50, order: int = 3, *, t_start: float | None = None,
    t_end: float = 1e-3, skip: str = "time_uniform",
) -> list[tuple[float, tuple[float, ...], float]]:
    """Where DPM-Solver's singlestep "fast" method evaluates: one (s, intermediate times, t) per step.

    As the official ``dpm_solver_pp.py`` (``DPM_Solver.sample(method="fast")``, used by U-ViT's and DiM's
    ``eval_ldm_discrete.py``) places them: the (steps+1)-point grid t_0 … t_steps of the skip type; the steps of
    :func:`fast_orders` take consecutive stretches of it, a step of order k from t_i to t_{i+k}; its intermediate
    points are the grid points in between, t_{i+1} (and t_{i+2}), i.e. at r1 = (λ(t_{i+1}) − λ(t_i))/h and
    r2 = (λ(t_{i+2}) − λ(t_i))/h with h = λ(t_{i+k}) − λ(t_i) — not at fixed fractions of h. (The official code
    passes r1, r2 and maps λ_s + r·h back to a time through the schedule's inverse λ; that lands on the grid
    point to float rounding, which this function returns directly.)
    """
    t_start = schedule.t_max if t_start is None else float(t_start)
    grid = _time_grid(schedule, t_start, float(t_end), steps, skip)
    out, i = [], 0
    for k in fast_orders(steps, order):
        out.append((grid[i], tuple(grid[i + 1:i + k]), grid[i + k]))
        i += k
    return out


def _ratios(s: _At, mids: list[_At], t: _At) -> list[float]:
    """r_j = (λ(mid_j) − λ_s) / h: where each intermediate point lies in the step, in units of h = λ_t − λ_s."""
    h = t.lam - s.lam
    return [(m.lam - s.lam) / h for m in mids]


def _dpm_solver_noise_step(eps_fn: EpsFn, x: Tensor, s: _At, mids: list[_At], t: _At) -> Tensor:
    """One singlestep DPM-Solver step (noise prediction) from s to t through the intermediate points ``mids``
    (order = len(mids) + 1 ε evaluations).

    Exact solution: x_t = (α_t/α_s) x_s − α_t ∫_{λ_s}^{λ_t} e^{−λ} ε dλ. With h = λ_t − λ_s, the zeroth-order
    term is σ_t (e^h − 1) ε_s; the first-order term in ε's λ-derivative is estimated from an intermediate point
    at λ_s + r·h (r from :func:`_ratios`): order 2 uses the paper's (0.5/r1)·σ_t (e^h − 1) form, order 3 the
    coefficient σ_t (e^h − 1 − h)/h · (1/r2) with the derivative from s2 (DPM-Solver-3).
    """

    def eps_at(xx: Tensor, at: _At) -> Tensor:
        return eps_only(eps_fn(xx, _times(xx, at.t))).float()

    def first_order(at: _At, e: Tensor) -> Tensor:  # DDIM's step from s to `at`
        return math.exp(at.log_alpha - s.log_alpha) * x - at.sigma * math.expm1(at.lam - s.lam) * e

    h = t.lam - s.lam
    e_s = eps_at(x, s)
    if not mids:
        return first_order(t, e_s)
    r = _ratios(s, mids, t)
    if len(mids) == 1:
        e_s1 = eps_at(first_order(mids[0], e_s), mids[0])
        return first_order(t, e_s) - (0.5 / r[0]) * t.sigma * math.expm1(h) * (e_s1 - e_s)
    if len(mids) == 2:
        (s1, s2), (r1, r2) = mids, r
        e_s1 = eps_at(first_order(s1, e_s), s1)
        phi_s2 = math.expm1(r2 * h) / (r2 * h) - 1.0
        x_s2 = first_order(s2, e_s) - (r2 / r1) * s2.sigma * phi_s2 * (e_s1 - e_s)
        e_s2 = eps_at(x_s2, s2)
        phi_t = math.expm1(h) / h - 1.0
        return first_order(t, e_s) - (1.0 / r2) * t.sigma * phi_t * (e_s2 - e_s)
    raise ValueError(f"DPM-Solver order must be 1, 2 or 3, got {len(mids) + 1}")


def _dpm_solver_pp_step(eps_fn: EpsFn, x: Tensor, s: _At, mids: list[_At], t: _At) -> Tensor:
    """One singlestep DPM-Solver++ step (data prediction x̂0 = (x − σε)/α) from s to t through ``mids``.

    Exact solution: x_t = (σ_t/σ_s) x_s + σ_t ∫_{λ_s}^{λ_t} e^{λ} x̂0 dλ. The zeroth-order term is
    −α_t (e^{−h} − 1) x̂0_s; order 2 adds the DPM-Solver++(2S) correction −(0.5/r1)·α_t (e^{−h} − 1)
    (x̂0_s1 − x̂0_s); order 3 the first-order coefficient α_t ((e^{−h} − 1)/h + 1) · (1/r2) with the derivative
    from s2 (r from :func:`_ratios`).
    """

    def x0_at(xx: Tensor, at: _At) -> Tensor:
        eps = eps_only(eps_fn(xx, _times(xx, at.t))).float()
        return (xx - at.sigma * eps) / at.alpha

    def first_order(at: _At, d: Tensor) -> Tensor:  # DDIM's step from s to `at`, written with x̂0
        return (at.sigma / s.sigma) * x - at.alpha * math.expm1(-(at.lam - s.lam)) * d

    h = t.lam - s.lam
    d_s = x0_at(x, s)
    if not mids:
        return first_order(t, d_s)
    r = _ratios(s, mids, t)
    if len(mids) == 1:
        d_s1 = x0_at(first_order(mids[0], d_s), mids[0])
        return first_order(t, d_s) - (0.5 / r[0]) * t.alpha * math.expm1(-h) * (d_s1 - d_s)
    if len(mids) == 2:
        (s1, s2), (r1, r2) = mids, r
        d_s1 = x0_at(first_order(s1, d_s), s1)
        phi_s2 = math.expm1(-r2 * h) / (r2 * h) + 1.0
        x_s2 = first_order(s2, d_s) + (r2 / r1) * s2.alpha * phi_s2 * (d_s1 - d_s)
        d_s2 = x0_at(x_s2, s2)
        phi_t = math.expm1(-h) / h + 1.0
        return first_order(t, d_s) + (1.0 / r2) * t.alpha * phi_t * (d_s2 - d_s)
    raise ValueError(f"DPM-Solver order must be 1, 2 or 3, got {len(mids) + 1}")


@torch.no_grad()
def dpm_solver_sample(
    eps_fn: EpsFn,
    schedule: DiscreteSchedule | VPSDE,
    x_T: Tensor,
    *,
    steps: int = 50,
    order: int = 3,
    predict: str = "data",
    t_start: float | None = None,
    t_end: float = 1e-3,
    skip: str = "time_uniform",
) -> Tensor:
    """Singlestep DPM-Solver (predict="noise") or DPM-Solver++ (predict="data") with the "fast" orders.

    x_T (B, C, ...) at t_start (default schedule.t_max) -> x at t_end, float32 (no final denoising step). The
    steps have the orders :func:`fast_orders` (steps, order) and evaluate where :func:`dpm_solver_fast_steps`
    says, as the official dpm_solver_pp.py's "fast" method does (dim.md §7: the (steps+1)-point grid of the
    skip type, "time_uniform" by default; each step spans as many grid intervals as its order and evaluates at
    the grid points it spans); each step of order k calls eps_fn k times, so eps_fn runs exactly ``steps``
    times. DiM's setting: 50 steps, order 3, predict="data", t from 1 to 1e-3, on the discrete schedule's
    continuous view or the VP-SDE.
    """
    if predict not in ("data", "noise"):
        raise ValueError(f"predict must be 'data' (DPM-Solver++) or 'noise' (DPM-Solver), got {predict!r}")
    t_start = schedule.t_max if t_start is None else float(t_start)
    if not t_start > t_end > 0:
        raise ValueError(f"need t_start > t_end > 0, got t_start={t_start}, t_end={t_end}")
    placed = dpm_solver_fast_steps(schedule, steps, order, t_start=t_start, t_end=float(t_end), skip=skip)
    step = _dpm_solver_pp_step if predict == "data" else _dpm_solver_noise_step
    x = x_T.float()
    for s, mids, t in placed:
        x = step(eps_fn, x, _At(schedule, s), [_At(schedule, m) for m in mids], _At(schedule, t))
    return x


# ------------------------------------------------------------------------------------------- Euler–Maruyama
@torch.no_grad()
def euler_maruyama_sample(
    eps_fn: EpsFn,
    schedule: VPSDE,
    x_T: Tensor,
    *,
    steps: int = 1000,
    t_end: float = 1e-3,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Euler–Maruyama on the reverse VP-SDE, x_T (B, C, ...) at t = schedule.t_max (1) -> x at t_end, float32.

    dx = [−½β(t) x − β(t)·score] dt + √β(t) dW̄ with score = −ε/σ(t), on ``steps`` steps of a grid uniform in t
    from 1 to t_end (dt < 0); drift and diffusion are evaluated at the step's start. The last step returns its
    mean (no noise), the usual convention: noise added there could not be removed.
    """
    grid = torch.linspace(schedule.t_max, float(t_end), steps + 1, dtype=torch.float64).tolist()
    x = x_T.float()
    for i in range(steps):
        t, dt = grid[i], grid[i + 1] - grid[i]
        beta = schedule.beta(torch.tensor(t, dtype=torch.float64)).item()
        sigma = schedule.sigma(torch.tensor(t, dtype=torch.float64)).item()
        score = -eps_only(eps_fn(x, _times(x, t))).float() / sigma
        mean = x + (-0.5 * beta * x - beta * score) * dt
        x = mean if i == steps - 1 else mean + math.sqrt(beta * -dt) * _randn_like(x, generator)
    return x


# ------------------------------------------------------------------------------------------ Upsample Guidance
def upsample_guidance(
    eps_hi: EpsFn, eps_lo: EpsFn, schedule: DiscreteSchedule, m: int, *, until: float = 0.7
) -> EpsFn:
    """Upsample Guidance (Hwang et al., arXiv 2404.01709) as DiM runs it (dim.md §8): an EpsFn at high resolution.

    eps_hi: the (guided) model at the full resolution (B, C, m·h, m·w); eps_lo: the same model at the training
    resolution (B, C, h, w); both take continuous times and only their ε is used. For samples with t >= until:

    * ᾱ_t and SNR(t) = ᾱ_t/(1 − ᾱ_t) are read at DDPM step k = ⌊N·t⌋ in the official numbering: a table of steps
      0 … N with ᾱ_0 = 1 (β_0 = 0 prepended), so step k is ``alphas_cumprod[k − 1]`` (t = 1 reads step N);
    * x_lo = AvgPool_m(x_t)/√P_t with P_t = ᾱ_t + (1 − ᾱ_t)/m²: averaging m² pixels keeps the signal and divides
      the noise variance by m², so dividing by √P_t gives a unit-variance input of SNR m²·SNR(t);
    * τ: the step whose SNR is closest to m²·SNR(t), searched over steps N−1 … 0 of that table (step 0: SNR = ∞)
      with τ = 1 − idx/(N−1) for search position idx (= step/(N−1)), clamped to τ ≤ t;
    * ε̂ = ε_hi + NearestUp_m(ε_lo(x_lo, τ)/m − AvgPool_m(ε_hi)), so AvgPool_m(ε̂) = ε_lo/m exactly.

    Other samples get ε_hi unchanged (eps_lo is not called when no sample needs it).
    """
    n = schedule.num_steps
    # The official tables are indexed by DDPM step 0 … N, with step 0 the clean data (ᾱ = 1, SNR = ∞).
    ab_steps = torch.cat([torch.ones(1, dtype=torch.float64), schedule.alphas_cumprod.to(torch.float64)])
    snr_steps = ab_steps / (1.0 - ab_steps)  # (N+1,), inf at step 0
    snr_search = snr_steps[:n].flip(0)  # position idx holds step N-1-idx: the official search order 999 … 0

    def low_res_time(t: Tensor) -> tuple[Tensor, Tensor]:
        """(ᾱ_t, τ) as float64 (B,) on the CPU for continuous times t (B,)."""
        t = t.detach().to("cpu", torch.float64)
        k = torch.floor(n * t).clamp(1, n).long()  # t >= until > 0: step 0 (no noise) never applies
        ab = ab_steps[k]
        target = m**2 * snr_steps[k]
        idx = torch.argmin((snr_search[None, :] - target[:, None]).abs(), dim=1).to(torch.float64)
        tau = torch.minimum(1.0 - idx / (n - 1), t)
        return ab, tau

    def fn(x: Tensor, t: Tensor) -> Tensor:
        eps = eps_only(eps_hi(x, t)).float()
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device).expand(x.shape[0])
        active = t >= until
        if not bool(active.any()):
            return eps
        ab, tau = low_res_time(t)
        shape = (-1,) + (1,) * (x.ndim - 1)
        p = (ab + (1.0 - ab) / m**2).reshape(shape).to(device=x.device, dtype=torch.float32)
        x_lo = F.avg_pool2d(x.float(), m) / torch.sqrt(p)
        e_lo = eps_only(eps_lo(x_lo, tau.to(x.device))).float()
        correction = e_lo / m - F.avg_pool2d(eps, m)
        guided = eps + correction.repeat_interleave(m, dim=-2).repeat_interleave(m, dim=-1)
        return torch.where(active.reshape(shape), guided, eps)

    return fn


# ----------------------------------------------------------------------------------------------------------------
# Registry: each sampler above declared once, with the settings it runs at (models.diffusion.registry)

register_sampler(Sampler("ddpm", "DDPM ancestral", ddpm_sample, schedules=("discrete",), learned_variance=True))
register_sampler(Sampler("ddim", "DDIM (eta 0)", ddim_sample, schedules=("discrete",)))
register_sampler(Sampler("dpm_solver++", "DPM-Solver++ (data prediction, singlestep fast, order 3)", dpm_solver_sample,
                         settings={"order": 3, "predict": "data"}, uses_generator=False))
register_sampler(Sampler("dpm_solver", "DPM-Solver (noise prediction, singlestep fast, order 3)", dpm_solver_sample,
                         settings={"order": 3, "predict": "noise"}, uses_generator=False))
register_sampler(Sampler("euler_maruyama", "Euler-Maruyama (VP-SDE)", euler_maruyama_sample,
                         schedules=("continuous",)))
