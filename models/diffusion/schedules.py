"""Noise schedules: the discrete DDPM schedules of DiM / U-ViT (SD "scaled linear") and DiT ("linear"), and the
continuous VP-SDE of the CIFAR-10 models.

Conventions (docs/method.md and the DiM spec §5, §7):

* A :class:`DiscreteSchedule` with N steps indexes its tables by ``i = 0 … N-1``; index ``i`` stands for the DDPM
  step ``n = i + 1`` (β_0 = 0 is implicit), so ``alphas_cumprod[i] = ᾱ_{i+1} = Π_{k<=i} (1 - betas[k])``.
  A family's network receives the index shifted by its :class:`~models.registry.Timestep` ``first``: DiM and
  U-ViT get ``n = i + 1`` in 1 … 1000, DiT gets ``i`` in 0 … 999.
* Its *continuous view* is DPM-Solver's reading of a discrete schedule: time ``t_i = (i + 1) / N`` carries
  ``log α(t_i) = ½ log ᾱ_i``, with log α piecewise linear in t between (and linearly extrapolated beyond) those
  points. α(t)² + σ(t)² = 1 and λ(t) = log α − log σ (half the log-SNR).
* :class:`VPSDE` is the continuous VP-SDE with linear β(t); its networks take ``999·t`` whatever their family.

Tables are float64 on the CPU; every function of ``t`` returns float64 on ``t``'s device (so that α, σ are exact
to float32 after the caller's cast), while :meth:`add_noise` returns its result in ``x0``'s dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..registry import Timestep

__all__ = ["SCHEDULES", "DiscreteSchedule", "VPSDE", "make_schedule"]

SCHEDULES = ("sd_scaled_linear", "linear", "vpsde")


def _as_time(t: Tensor | float, device: torch.device | str | None = None) -> Tensor:
    """``t`` as a float64 tensor (on its own device, or ``device`` for a Python number)."""
    if isinstance(t, Tensor):
        return t.to(torch.float64)
    return torch.as_tensor(t, dtype=torch.float64, device=device)


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation of (xp, fp) at x, linearly extrapolated beyond the ends.

    x: any shape, float64; xp: (K,) increasing, fp: (K,), both float64 on x's device. Same shape as x.
    Extrapolation (rather than clamping) is DPM-Solver's choice: it keeps log α(t) strictly monotone just outside
    [t_min, t_max], e.g. for t_end = 1e-3 on a schedule with N != 1000.
    """
    # Segment k covers [xp[k], xp[k+1]]; points beyond the ends use the first / last segment.
    k = torch.searchsorted(xp, x.contiguous(), right=False).clamp(1, xp.numel() - 1) - 1
    x0, x1, f0, f1 = xp[k], xp[k + 1], fp[k], fp[k + 1]
    return f0 + (x - x0) * (f1 - f0) / (x1 - x0)


def _sigma_from_log_alpha(log_alpha: Tensor) -> Tensor:
    # σ = sqrt(1 - α²); expm1 keeps precision where α is close to 1 (small t).
    return torch.sqrt(-torch.expm1(2.0 * log_alpha))


def _lambda_from_log_alpha(log_alpha: Tensor) -> Tensor:
    return log_alpha - 0.5 * torch.log(-torch.expm1(2.0 * log_alpha))


def _log_alpha_from_lambda(lam: Tensor) -> Tensor:
    # α² = sigmoid(2λ)  =>  log α = -½ log(1 + e^{-2λ}), written with logaddexp to stay finite for any λ.
    return -0.5 * torch.logaddexp(torch.zeros_like(lam), -2.0 * lam)


class _ContinuousView:
    """α(t), σ(t) and λ(t) of a schedule, from its ``log_alpha(t)`` (both schedules share these)."""

    def log_alpha(self, t: Tensor | float) -> Tensor:
        raise NotImplementedError

    def alpha(self, t: Tensor | float) -> Tensor:
        """α(t) = exp(log α(t)), float64."""
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: Tensor | float) -> Tensor:
        """σ(t) = √(1 − α(t)²), float64."""
        return _sigma_from_log_alpha(self.log_alpha(t))

    def lambda_(self, t: Tensor | float) -> Tensor:
        """λ(t) = log α(t) − log σ(t), float64 (decreasing in t)."""
        return _lambda_from_log_alpha(self.log_alpha(t))


class DiscreteSchedule(_ContinuousView):
    """N-step DDPM schedule. Index i = 0..N-1 stands for β_{i+1}; alphas_cumprod[i] = Π_{k<=i} (1-β_k).

    Attributes: ``name``; ``num_steps`` = N; ``betas`` and ``alphas_cumprod``, float64 (N,) on the CPU;
    ``t_min = 1/N`` and ``t_max = 1`` bound the continuous view (the times of index 0 and index N-1).
    """

    kind = "discrete"  # which samplers can step it (models.diffusion.registry.SCHEDULE_KINDS)

    def __init__(self, name: str, betas: Tensor):
        betas = torch.as_tensor(betas, dtype=torch.float64).cpu()
        if betas.ndim != 1 or betas.numel() < 2 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(f"schedule {name!r}: betas must be a 1-D table of at least 2 values in (0, 1)")
        self.name = name
        self.num_steps = int(betas.numel())
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        n = self.num_steps
        self.t_min = 1.0 / n
        self.t_max = 1.0
        # The continuous view's knots: t_i = (i+1)/N and log α(t_i) = ½ log ᾱ_i.
        self._t_knots = torch.arange(1, n + 1, dtype=torch.float64) / n
        self._log_alpha_knots = 0.5 * torch.log(self.alphas_cumprod)

    def __repr__(self) -> str:
        return f"DiscreteSchedule({self.name!r}, num_steps={self.num_steps})"

    # ----------------------------------------------------------------------------------------------- builders
    @classmethod
    def sd_scaled_linear(cls, num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012):
        """Stable Diffusion's "scaled linear" betas, β = linspace(√start, √end, N)² (DiM, U-ViT)."""
        root = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), num_steps, dtype=torch.float64)
        return cls("sd_scaled_linear", root**2)

    @classmethod
    def linear(cls, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        """DDPM's linear betas, β = linspace(start, end, N) (DiT).

        The endpoints are taken as given for any N (improved-DDPM would rescale them by 1000/N; DiT only ever
        trains with N = 1000, where both agree).
        """
        return cls("linear", torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64))

    # ----------------------------------------------------------------------------------------------- training
    def sample_training_time(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> Tensor:
        """(batch,) long indices drawn uniformly from 0 … N-1 (the DDPM steps 1 … N)."""
        return torch.randint(0, self.num_steps, (batch,), generator=generator, device=device)

    def add_noise(self, x0: Tensor, time: Tensor, noise: Tensor) -> Tensor:
        """x_t = √ᾱ x0 + √(1-ᾱ) noise with ᾱ = alphas_cumprod[time].

        x0, noise: (B, ...); time: (B,) long indices. Coefficients in float64, cast to x0's dtype for the update;
        the result is in x0's dtype.
        """
        ab = self.alphas_cumprod.to(time.device)[time.long()].to(x0.device)
        shape = (-1,) + (1,) * (x0.ndim - 1)
        a = ab.sqrt().reshape(shape).to(x0.dtype)
        s = (1.0 - ab).sqrt().reshape(shape).to(x0.dtype)
        return a * x0 + s * noise.to(x0.dtype)

    def network_time(self, time: Tensor, timestep: Timestep) -> Tensor:
        """The network's time input for indices ``time`` (B,): float32 ``time + timestep.first``.

        DiM / U-ViT (first = 1) get n in 1 … N, DiT (first = 0) the index itself in 0 … N-1.
        """
        return (time.to(torch.float64) + timestep.first).to(torch.float32)

    # ------------------------------------------------------------------------------------- continuous view
    def log_alpha(self, t: Tensor | float) -> Tensor:
        """log α(t), float64 of t's shape: piecewise linear in t through (t_i, ½ log ᾱ_i)."""
        t = _as_time(t)
        return _interp(t, self._t_knots.to(t.device), self._log_alpha_knots.to(t.device))

    def inverse_lambda(self, lam: Tensor | float) -> Tensor:
        """The t with λ(t) = lam, float64: log α from λ in closed form, then the piecewise-linear t(log α)."""
        log_alpha = _log_alpha_from_lambda(_as_time(lam))
        dev = log_alpha.device
        # log α decreases with t; flip both tables so the abscissa increases.
        return _interp(log_alpha, self._log_alpha_knots.flip(0).to(dev), self._t_knots.flip(0).to(dev))

    def continuous_network_time(self, t: Tensor | float, timestep: Timestep) -> Tensor:
        """The network's time input for continuous t: float32 ``t·N − 1 + timestep.first``.

        t = t_i = (i+1)/N maps to the same input as index i in :meth:`network_time`. DiM / U-ViT get t·N, in
        [1, N] over [t_min, t_max] (DiM spec §7: "the network receives t_cont·1000"); DiT gets t·N − 1, DPM-Solver's
        convention for discrete-time models. Computed in float64 so that grid times give whole numbers exactly.
        """
        t = _as_time(t)
        return (t * self.num_steps - 1.0 + timestep.first).to(torch.float32)

    def index_of(self, t: Tensor | float) -> Tensor:
        """long tensor of t's shape: the index i whose t_i = (i+1)/N is nearest to t (clamped into 0 … N-1)."""
        t = _as_time(t)
        return torch.round(t * self.num_steps - 1.0).clamp(0, self.num_steps - 1).to(torch.long)


class VPSDE(_ContinuousView):
    """Continuous VP-SDE (DiM-S / U-ViT on CIFAR-10): β(t) = β_min + t(β_max − β_min),
    log α(t) = −(β_max−β_min)t²/4 − β_min t/2.

    ``t_min`` (1e-3) is where sampling ends, ``t_max`` (1) where it starts. Functions of t return float64 on t's
    device.
    """

    name = "vpsde"
    kind = "continuous"  # which samplers can step it (models.diffusion.registry.SCHEDULE_KINDS)
    #: Training times are drawn from U(TRAIN_T_EPS, 1) instead of U(0, 1) so that σ(t) > 0 (σ(1e-5) ≈ 1e-3).
    TRAIN_T_EPS = 1e-5

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3, t_max: float = 1.0):
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)
        self.t_min = float(t_min)
        self.t_max = float(t_max)

    def __repr__(self) -> str:
        return f"VPSDE(beta_min={self.beta_min}, beta_max={self.beta_max})"

    def beta(self, t: Tensor | float) -> Tensor:
        """β(t) = β_min + t (β_max − β_min), float64."""
        t = _as_time(t)
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t: Tensor | float) -> Tensor:
        """log α(t) = −¼ (β_max − β_min) t² − ½ β_min t (= −½ ∫_0^t β), float64."""
        t = _as_time(t)
        return -0.25 * (self.beta_max - self.beta_min) * t**2 - 0.5 * self.beta_min * t

    def inverse_lambda(self, lam: Tensor | float) -> Tensor:
        """Closed form: with L = log(1 + e^{−2λ}) = −2 log α, solve ½(β_max−β_min)t² + β_min t = L for t ≥ 0.

        Written as t = 2L / (β_min + √(β_min² + 2(β_max−β_min)L)), the root without cancellation.
        """
        lam = _as_time(lam)
        big_l = torch.logaddexp(torch.zeros_like(lam), -2.0 * lam)
        d = self.beta_max - self.beta_min
        return 2.0 * big_l / (self.beta_min + torch.sqrt(self.beta_min**2 + 2.0 * d * big_l))

    def sample_training_time(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> Tensor:
        """(batch,) float32 times, uniform on [TRAIN_T_EPS, 1): u ~ U(0, 1) mapped affinely, t = ε + (1 − ε) u.

        The affine map (rather than a clamp) keeps the draw uniform and never returns exactly 0, where σ = 0 and
        ε-prediction is undefined.
        """
        u = torch.rand(batch, generator=generator, device=device, dtype=torch.float32)
        return self.TRAIN_T_EPS + (1.0 - self.TRAIN_T_EPS) * u

    def add_noise(self, x0: Tensor, time: Tensor, noise: Tensor) -> Tensor:
        """x_t = α(t) x0 + σ(t) noise; time (B,) float in (0, 1]; the result in x0's dtype."""
        t = _as_time(time).to(x0.device)
        shape = (-1,) + (1,) * (x0.ndim - 1)
        a = self.alpha(t).reshape(shape).to(x0.dtype)
        s = self.sigma(t).reshape(shape).to(x0.dtype)
        return a * x0 + s * noise.to(x0.dtype)

    def network_time(self, time: Tensor, timestep: Timestep | None = None) -> Tensor:
        """float32 ``999·t``: the official CIFAR-10 (U-ViT / DiM-S) convention.

        ``timestep`` is accepted for a uniform call signature and ignored: the family's discrete-step convention
        (1 … 1000 or 0 … 999) describes its discrete-schedule models, not these.
        """
        return (_as_time(time) * 999.0).to(torch.float32)

    def continuous_network_time(self, t: Tensor | float, timestep: Timestep | None = None) -> Tensor:
        """Same as :meth:`network_time` (999·t, float32): this schedule is continuous already."""
        return self.network_time(_as_time(t), timestep)


def make_schedule(name: str, num_steps: int = 1000) -> DiscreteSchedule | VPSDE:
    """The schedule called ``name`` (one of :data:`SCHEDULES`) with its published constants.

    ``num_steps`` sets N for the discrete schedules; the continuous VP-SDE has no step count and ignores it.
    """
    if name == "sd_scaled_linear":
        return DiscreteSchedule.sd_scaled_linear(num_steps)
    if name == "linear":
        return DiscreteSchedule.linear(num_steps)
    if name == "vpsde":
        return VPSDE()
    raise ValueError(f"unknown diffusion schedule {name!r}; known schedules: {', '.join(SCHEDULES)}")
