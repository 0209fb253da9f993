"""Scheduler vocabulary: the training objective (`Diffusion`) builds the training scheduler, the sampler
(`Sampler`) the sampling one; unknown names list the allowed values."""

import pytest
import torch
from monai.networks.schedulers import RFlowScheduler

from wdm_bundle.diffusion import (
    DDPMScheduler64,
    Diffusion,
    Sampler,
    TimestepSampling,
    VarianceType,
    make_scheduler,
    training_scheduler,
)


@pytest.mark.parametrize("diffusion, sampler", [("ddpm", "ddpm"), ("rflow", "rflow"), ("rflow_x0", "rflow")])
def test_training_scheduler_is_the_objectives_default_sampler(diffusion, sampler):
    kwargs = dict(num_train_timesteps=400, beta_end=0.03, timestep_sampling="logit-normal", timestep_loc=0.5)
    trained, sampling = training_scheduler(diffusion, **kwargs), make_scheduler(sampler, None, **kwargs)
    assert type(trained) is type(sampling) and trained.schedule_config == sampling.schedule_config
    assert torch.equal(trained.timesteps, sampling.timesteps)
    assert isinstance(trained, RFlowScheduler if sampler == "rflow" else DDPMScheduler64)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: make_scheduler("euler"), "sampler: 'euler' is not a valid Sampler; use one of ddpm, ddim, rflow."),
        (lambda: training_scheduler("ddim"), "'ddim' is not a valid Diffusion; use one of ddpm, rflow, rflow_x0."),
        (lambda: make_scheduler("ddpm", variance_type="learned"), "use one of fixed_small, fixed_large."),
        (lambda: make_scheduler("rflow", timestep_sampling="cosine"), "use one of uniform, logit-normal."),
        (lambda: make_scheduler("rflow_x0"), "'rflow_x0' is a training objective (Diffusion), not a Sampler"),
    ],
)
def test_unknown_names_list_the_allowed_values(call, message):
    with pytest.raises(ValueError) as err:
        call()
    assert message in str(err.value)


def test_closed_sets():
    assert [s.value for s in Sampler] == ["ddpm", "ddim", "rflow"]
    assert [d.value for d in Diffusion] == ["ddpm", "rflow", "rflow_x0"]
    assert [t.value for t in TimestepSampling] == ["uniform", "logit-normal"]
    assert [v.value for v in VarianceType] == ["fixed_small", "fixed_large"]
    assert Sampler("ddim") == "ddim" and Diffusion(Diffusion.RFLOW_X0) is Diffusion.RFLOW_X0
