"""The sampler registry, beside the schedules (:data:`models.diffusion.SCHEDULES`): each sampler declared once.

A :class:`Sampler` states its name, a description for method strings, the function that runs it with the
settings it is run at, which kinds of schedule it can step (``"discrete"``: the DDPM schedules;
``"continuous"``: the VP-SDE; a schedule says its own ``kind``), whether it takes a seeded generator (its noise),
and whether it uses a learned variance (DiT's learned σ in the ancestral DDPM step). Everything that picks a
sampler by name (the quality and fid metrics, ``dimbench train``, the FID pipeline, families' recipes) asks
here; :mod:`models.diffusion.samplers` registers the reference samplers, and a plugin registers its own with
:func:`register_sampler`. Imports nothing from ``dimbench``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

#: The kinds of schedule (``schedule.kind``) and how a sampler that steps only one kind says what it needs.
SCHEDULE_KINDS = {"discrete": "steps a discrete schedule", "continuous": "needs the continuous VP-SDE"}


@dataclasses.dataclass(frozen=True)
class Sampler:
    """One sampler: ``fn(eps_fn, schedule, x_T, steps=..., [generator=...], **settings) -> x_0``.

    ``settings``: fixed keyword arguments it runs with (DPM-Solver++: order 3, data prediction). ``schedules``:
    the schedule kinds it steps (:data:`SCHEDULE_KINDS`). ``uses_generator``: it draws noise (or accepts a
    generator) and is given the seeded one. ``learned_variance``: it uses the variance a learned-σ model
    returns beside ε (the model function is asked for it).
    """

    name: str
    description: str
    fn: Callable[..., Tensor]
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    schedules: tuple[str, ...] = tuple(SCHEDULE_KINDS)
    uses_generator: bool = True
    learned_variance: bool = False

    def __post_init__(self) -> None:
        unknown = [k for k in self.schedules if k not in SCHEDULE_KINDS]
        if not self.schedules or unknown:
            raise ValueError(f"sampler {self.name!r}: schedules must name kinds among {', '.join(SCHEDULE_KINDS)}, "
                             f"got {self.schedules!r}")

    def accepts(self, schedule: Any) -> bool:
        """Whether it can step ``schedule`` (by the schedule's ``kind``)."""
        return schedule.kind in self.schedules

    def check_schedule(self, schedule: Any) -> None:
        """ValueError, naming the samplers that would do, when it cannot step ``schedule``."""
        if self.accepts(schedule):
            return
        needs = SCHEDULE_KINDS[self.schedules[0]] if len(self.schedules) == 1 else \
            f"steps {' or '.join(self.schedules)} schedules"
        trained = "the VP-SDE" if schedule.kind == "continuous" else f"the {schedule.name} schedule"
        others = [s.name for s in SAMPLERS.values() if s.accepts(schedule)]
        use = ", ".join(others[:-1]) + " or " + others[-1] if len(others) > 1 else "".join(others) or "none here"
        raise ValueError(f"sampler {self.name} {needs}; this model was trained with {trained} (use {use})")

    def run(self, eps_fn: Callable, schedule: Any, x_T: Tensor, *, steps: int,
            generator: torch.Generator | None = None) -> Tensor:
        """x_0 from x_T in ``steps`` function evaluations (per guidance pass)."""
        noise = {"generator": generator} if self.uses_generator else {}
        return self.fn(eps_fn, schedule, x_T, steps=steps, **noise, **self.settings)


#: name -> Sampler, in registration order.
SAMPLERS: dict[str, Sampler] = {}


def register_sampler(sampler: Sampler) -> Sampler:
    """Add a sampler; its name must be new. Returns it."""
    if sampler.name in SAMPLERS and SAMPLERS[sampler.name] is not sampler:
        raise ValueError(f"sampler {sampler.name!r} registered twice")
    SAMPLERS[sampler.name] = sampler
    return sampler


def unregister_sampler(name: str) -> None:
    """Remove a sampler (tests and plugins that register for a while)."""
    SAMPLERS.pop(name, None)


def sampler_names() -> tuple[str, ...]:
    """The registered samplers' names, in registration order."""
    return tuple(SAMPLERS)


def get_sampler(name: str) -> Sampler:
    """The registered sampler ``name`` (ValueError naming the known ones otherwise)."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}") from None
