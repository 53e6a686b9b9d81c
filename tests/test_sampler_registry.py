"""The sampler registry (models/diffusion/registry.py): each sampler declared once, and everything that picks a
sampler by name (families' recipes, SamplerSpec, the metrics' options, generate) reads it."""

from __future__ import annotations

import pytest
import torch

import models
from dimbench.metrics import METRICS
from dimbench.schema import Problems, Record
from dimbench.training.sampling import SamplerSpec, generate, sampler_or_family
from models.diffusion import (
    SAMPLERS,
    Sampler,
    dpm_solver_sample,
    euler_maruyama_sample,
    get_sampler,
    make_schedule,
    register_sampler,
)
from models.diffusion.registry import unregister_sampler


def test_every_family_recipe_names_a_registered_sampler_that_steps_its_schedule():
    for fam in models.list_families():
        if fam.diffusion is None:
            continue
        sampler = get_sampler(fam.diffusion.sampler)
        assert sampler.accepts(make_schedule(fam.diffusion.schedule)), fam.name


def test_a_registered_name_runs_the_declared_function_with_its_settings():
    """The registry adds nothing to a sampler's numerics: running it by name is calling its function."""
    sched = make_schedule("sd_scaled_linear")
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))

    def eps(x, t):
        return 0.1 * x

    by_name = SamplerSpec("dpm_solver++", 6, 0.0).run(eps, sched, x_T, torch.Generator())
    assert torch.equal(by_name, dpm_solver_sample(eps, sched, x_T, steps=6, order=3, predict="data"))
    vp = make_schedule("vpsde")
    got = SamplerSpec("euler_maruyama", 5, 0.0).run(eps, vp, x_T, torch.Generator().manual_seed(3))
    assert torch.equal(got, euler_maruyama_sample(eps, vp, x_T, steps=5, generator=torch.Generator().manual_seed(3)))


def test_a_schedule_a_sampler_cannot_step_is_refused_naming_those_that_can():
    with pytest.raises(ValueError, match=r"sampler ddim steps a discrete schedule; this model was trained with the "
                       r"VP-SDE \(use dpm_solver\+\+, dpm_solver or euler_maruyama\)"):
        get_sampler("ddim").check_schedule(make_schedule("vpsde"))
    with pytest.raises(ValueError, match="unknown sampler 'heun'; known: ddpm, ddim"):
        SamplerSpec("heun", 10, 0.0)


def _halve(eps_fn, schedule, x_T, *, steps, generator=None, factor=0.5):
    return x_T * factor


def test_a_sampler_registered_once_is_known_everywhere():
    toy = register_sampler(Sampler("toy_halve", "halves the noise (a test's sampler)", _halve,
                                   settings={"factor": 0.5}, schedules=("discrete",)))
    try:
        assert "toy_halve" in sampler_or_family() and "toy_halve" in SAMPLERS
        problems = Problems()
        fields = [f for f in METRICS["quality"].option_record().fields if f.name == "sampler"]
        Record(fields, "options").check({"sampler": "toy_halve"}, (), problems)
        assert not problems
        spec = SamplerSpec("toy_halve", 3, 0.0)
        assert spec.describe() == "halves the noise (a test's sampler), 3 steps, no guidance"
        model = models.create_model("dim_tiny_4").eval()
        images = generate(model, schedule=make_schedule("sd_scaled_linear"), timestep=models.family("dim").timestep,
                          spec=spec, labels=None, count=2, shape=(1, 16, 16), seed=0)
        noise = torch.randn((2, 1, 16, 16), generator=torch.Generator().manual_seed(0))
        assert torch.equal(images, (noise * 0.5).clamp(-1, 1))
        with pytest.raises(ValueError, match="sampler toy_halve steps a discrete schedule"):
            toy.check_schedule(make_schedule("vpsde"))
    finally:
        unregister_sampler("toy_halve")
    assert "toy_halve" not in sampler_or_family()
