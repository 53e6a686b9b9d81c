"""Diffusion processes for dimbench's models: schedules, losses, guidance and reference samplers.

    >>> from models.diffusion import make_schedule, model_eps, Guidance, dpm_solver_sample
    >>> sched = make_schedule("sd_scaled_linear")                   # DiM / U-ViT (DiT: "linear")
    >>> fn = model_eps(model, sched, family.timestep, y=y, guidance=Guidance.from_uvit(0.4), null_class=1000)
    >>> x0 = dpm_solver_sample(fn, sched, torch.randn(b, 4, 32, 32))  # DiM's sampler: DPM-Solver++ 50 steps
    >>> x0 = get_sampler("dpm_solver++").run(fn, sched, x_T, steps=50)  # the same, by its registered name

Conventions (time indices, continuous view, network time per family): :mod:`models.diffusion.schedules`.
Imports nothing from ``dimbench``.
"""

from .guidance import Guidance
from .losses import diffusion_loss, eps_mse, learned_variance_vlb
from .model_fn import EpsFn, eps_only, model_eps
from .registry import SAMPLERS, Sampler, get_sampler, register_sampler, sampler_names
from .samplers import (
    ddim_sample,
    ddpm_sample,
    dpm_solver_sample,
    euler_maruyama_sample,
    fast_orders,
    respaced_steps,
    upsample_guidance,
)
from .schedules import SCHEDULES, VPSDE, DiscreteSchedule, make_schedule

__all__ = [
    "SAMPLERS",
    "Sampler",
    "get_sampler",
    "register_sampler",
    "sampler_names",
    "SCHEDULES",
    "DiscreteSchedule",
    "VPSDE",
    "make_schedule",
    "eps_mse",
    "learned_variance_vlb",
    "diffusion_loss",
    "Guidance",
    "EpsFn",
    "eps_only",
    "model_eps",
    "ddpm_sample",
    "ddim_sample",
    "fast_orders",
    "dpm_solver_sample",
    "euler_maruyama_sample",
    "upsample_guidance",
    "respaced_steps",
]
