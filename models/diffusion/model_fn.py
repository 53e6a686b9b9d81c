"""Wrap a network ``model(x, t, y)`` as the ε-function the samplers call, in continuous time.

Every sampler calls ``eps_fn(x, t)`` with ``t`` the continuous time (B,) of the schedule's continuous view
(t_i = (i+1)/N for discrete index i); :func:`model_eps` maps it to the family's network time, applies
classifier-free guidance and splits a learned-sigma output.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
from torch import Tensor

from ..registry import Timestep
from .guidance import Guidance
from .schedules import VPSDE, DiscreteSchedule

__all__ = ["EpsFn", "model_eps", "eps_only"]

#: (x (B, C, ...), t_cont (B,) float) -> ε (B, C, ...), or (ε, v) where the model learns its variance (v: the
#: interpolation output in [-1, 1], (B, C, ...), or None when it does not).
EpsFn = Callable[[Tensor, Tensor], Tensor | tuple[Tensor, Tensor | None]]


def eps_only(out: Tensor | tuple[Tensor, Tensor | None]) -> Tensor:
    """ε from an :data:`EpsFn`'s result, whichever of its two forms it returned."""
    return out[0] if isinstance(out, tuple) else out


def model_eps(
    model: nn.Module | Callable[..., Tensor],
    schedule: DiscreteSchedule | VPSDE,
    timestep: Timestep,
    *,
    y: Tensor | None = None,
    guidance: Guidance | None = None,
    null_class: int | None = None,
    with_variance: bool = False,
) -> EpsFn:
    """An :data:`EpsFn` calling ``model(x, schedule.continuous_network_time(t, timestep), y)``.

    * ``y``: (B,) class labels, or None (unconditional / the model's own default).
    * ``guidance`` with s != 0: ONE forward on the doubled batch [x, x] with labels [y, null_class] (so the two
      halves see identical numerics and batch-dependent kernels run once), combined by ``guidance.combine``.
      Needs ``y`` and ``null_class`` (ValueError otherwise). s = 0 is a plain conditional forward.
    * A learned-sigma output (2C channels for C-channel x) is split: ε = the first C channels; with
      ``with_variance=True`` the function returns (ε, v) with v the last C channels of the conditional half
      (guidance acts on ε only, as in DiT). A C-channel output gives (ε, None) with ``with_variance``.

    The model is called as is (no torch.no_grad here: the samplers run under it, training may not).
    """
    guided = guidance is not None and guidance.s != 0
    if guided:
        if y is None or null_class is None:
            raise ValueError(
                "classifier-free guidance needs the class labels y and the model's null_class (the label of the "
                f"unconditional branch); got y={'None' if y is None else 'a tensor'}, null_class={null_class}"
            )

    def split(out: Tensor, channels: int) -> tuple[Tensor, Tensor | None]:
        if out.shape[1] == channels:
            return out, None
        if out.shape[1] == 2 * channels:
            return out[:, :channels], out[:, channels:]
        raise ValueError(
            f"model output has {out.shape[1]} channels for a {channels}-channel input; expected {channels} (ε) or "
            f"{2 * channels} (ε and the learned variance)"
        )

    def eps_fn(x: Tensor, t: Tensor) -> Tensor | tuple[Tensor, Tensor | None]:
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        net_t = schedule.continuous_network_time(t, timestep).to(x.device)
        channels = x.shape[1]
        if guided:
            labels = torch.cat([y, torch.full_like(y, null_class)])
            out = model(torch.cat([x, x]), torch.cat([net_t, net_t]), labels)
            out_c, out_u = out.chunk(2)
            eps_c, v = split(out_c, channels)
            eps_u, _ = split(out_u, channels)
            eps = guidance.combine(eps_c, eps_u)
        else:
            eps, v = split(model(x, net_t, y), channels)
        return (eps, v) if with_variance else eps

    return eps_fn
