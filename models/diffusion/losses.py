"""Training losses: plain ε-MSE (DiM, U-ViT) and DiT's ε-MSE + learned-variance VLB term.

DiT (after improved DDPM) predicts, besides ε, an interpolation v ∈ [-1, 1] between the two natural reverse-step
variances, log Σ = frac·log β_t + (1 − frac)·log β̃_t with frac = (v + 1)/2, and trains v with the variational
bound term L_t = KL(q(x_{t−1} | x_t, x_0) ‖ p(x_{t−1} | x_t)) (the decoder NLL at the first step), in bits per
dimension. The mean in that term uses a *detached* ε, so the VLB only trains the variance and the MSE alone trains
the mean. Total: loss = mse + vb, no rescaling.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .schedules import VPSDE, DiscreteSchedule

__all__ = ["eps_mse", "learned_variance_vlb", "diffusion_loss"]


def eps_mse(eps_pred: Tensor, noise: Tensor) -> Tensor:
    """Scalar mean over every element of (ε_pred − noise)², computed in float32.

    Equal to DiT's per-sample mean then batch mean (all samples have the same size).
    """
    return torch.mean((eps_pred.float() - noise.float()) ** 2)


def _gather(table: Tensor, time: Tensor, like: Tensor) -> Tensor:
    """table[time] (float64 CPU table, (B,) long indices) -> float32 on like's device, shaped (B, 1, ...)."""
    vals = table.to(time.device)[time.long()].to(device=like.device, dtype=torch.float32)
    return vals.reshape((-1,) + (1,) * (like.ndim - 1))


def _posterior_tables(schedule: DiscreteSchedule) -> dict[str, Tensor]:
    """float64 (N,) tables of q(x_{i−1} | x_i, x_0) for a discrete schedule (ᾱ before index 0 is 1).

    mean = coef_x0·x_0 + coef_xt·x_t; variance β̃_i = β_i (1 − ᾱ_{i−1}) / (1 − ᾱ_i), which is 0 at i = 0, so its
    log is "clipped": the first entry replaced by the second, as improved DDPM / DiT do.
    """
    betas, ab = schedule.betas, schedule.alphas_cumprod
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    var = betas * (1.0 - ab_prev) / (1.0 - ab)
    return {
        "coef_x0": betas * torch.sqrt(ab_prev) / (1.0 - ab),
        "coef_xt": (1.0 - ab_prev) * torch.sqrt(1.0 - betas) / (1.0 - ab),
        "log_var_clipped": torch.log(torch.cat([var[1:2], var[1:]])),
        "log_beta": torch.log(betas),
        "sqrt_recip_ab": torch.sqrt(1.0 / ab),
        "sqrt_recipm1_ab": torch.sqrt(1.0 / ab - 1.0),
    }


def _normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """Elementwise KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _discretized_gaussian_nll(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """Elementwise −log P(x) in nats for data x in [-1, 1] quantised to 256 levels (bins of width 2/255).

    The probability is the Gaussian N(mean, e^{2·log_scale}) mass of x's bin; the edge bins extend to ±∞.
    Uses the exact normal CDF (DiT uses a tanh approximation of it; the two differ by < 1e-3 in the CDF).
    """
    inv_std = torch.exp(-log_scale)
    upper = inv_std * (x - mean + 1.0 / 255.0)
    lower = inv_std * (x - mean - 1.0 / 255.0)
    log_cdf_upper = torch.special.log_ndtr(upper)  # log P(X <= upper edge), the lowest bin's mass
    log_sf_lower = torch.special.log_ndtr(-lower)  # log P(X >= lower edge), the highest bin's mass
    mass = (torch.special.ndtr(upper) - torch.special.ndtr(lower)).clamp_min(1e-12)
    log_p = torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_sf_lower, torch.log(mass)))
    return -log_p


def learned_variance_vlb(
    schedule: DiscreteSchedule, model_output: Tensor, x0: Tensor, x_t: Tensor, time: Tensor
) -> Tensor:
    """(B,) DiT's VLB term in bits per dimension, float32.

    model_output: (B, 2C, ...) = [ε | v]; x0, x_t: (B, C, ...) (data in [-1, 1]); time: (B,) long indices.
    For time > 0: mean over dimensions of KL(q(x_{t−1} | x_t, x0) ‖ p_θ(x_{t−1} | x_t)) / ln 2, where p_θ has the
    posterior mean at x̂0(x_t, ε.detach()) and the log variance interpolated by v; for time = 0: the discretised
    Gaussian decoder NLL of x0 under p_θ(x_0 | x_1). Gradients reach v only. Computed in float32 (the
    exponentials of log variances are too coarse in bf16).
    """
    channels = x0.shape[1]
    if model_output.shape[1] != 2 * channels:
        raise ValueError(
            f"learned_variance_vlb needs a {2 * channels}-channel model output (ε and v) for {channels}-channel "
            f"data; got {model_output.shape[1]} channels"
        )
    tables = _posterior_tables(schedule)
    x0, x_t = x0.float(), x_t.float()
    eps = model_output[:, :channels].detach().float()  # frozen mean: the VLB must not train ε
    v = model_output[:, channels:].float()

    def g(name: str) -> Tensor:
        return _gather(tables[name], time, x_t)

    # True posterior q(x_{t−1} | x_t, x0).
    true_mean = g("coef_x0") * x0 + g("coef_xt") * x_t
    true_log_var = g("log_var_clipped")
    # Model: x̂0 from ε (not clipped, as in DiT's training), variance interpolated between β̃_t and β_t.
    x0_pred = g("sqrt_recip_ab") * x_t - g("sqrt_recipm1_ab") * eps
    model_mean = g("coef_x0") * x0_pred + g("coef_xt") * x_t
    frac = (v + 1.0) / 2.0
    model_log_var = frac * g("log_beta") + (1.0 - frac) * true_log_var

    dims = tuple(range(1, x0.ndim))
    kl = _normal_kl(true_mean, true_log_var, model_mean, model_log_var).mean(dim=dims) / math.log(2.0)
    nll = _discretized_gaussian_nll(x0, model_mean, 0.5 * model_log_var).mean(dim=dims) / math.log(2.0)
    return torch.where(time.to(kl.device) == 0, nll, kl)


def diffusion_loss(
    schedule: DiscreteSchedule | VPSDE, model_output: Tensor, x0: Tensor, x_t: Tensor, time: Tensor, noise: Tensor
) -> dict[str, Tensor]:
    """The training loss for ``model_output`` at (x_t, time), x_t built from (x0, noise).

    C-channel output (ε only): {"loss": mse, "mse": mse}. 2C-channel output (learned sigma, discrete schedule
    only): {"loss": mse + vb, "mse": mse, "vb": batch mean of :func:`learned_variance_vlb`}. A learned-sigma
    output with a :class:`VPSDE` is refused (ValueError): the VLB term is defined for a discrete chain only.
    All values are float32 scalars.
    """
    channels = x0.shape[1]
    out_channels = model_output.shape[1]
    if out_channels not in (channels, 2 * channels):
        raise ValueError(
            f"model output has {out_channels} channels for {channels}-channel data; expected {channels} or "
            f"{2 * channels}"
        )
    mse = eps_mse(model_output[:, :channels], noise)
    if out_channels == channels:
        return {"loss": mse, "mse": mse}
    if not isinstance(schedule, DiscreteSchedule):
        raise ValueError(
            f"a learned-variance (2C-channel) output needs a discrete schedule; {schedule!r} is continuous and "
            "trains ε-MSE only"
        )
    vb = learned_variance_vlb(schedule, model_output, x0, x_t, time).mean()
    return {"loss": mse + vb, "mse": mse, "vb": vb}
