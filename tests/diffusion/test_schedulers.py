"""Scheduler vocabulary: the training objective (`Diffusion`) builds the training scheduler, the sampler
(`Sampler`) the sampling one; unknown names list the allowed values."""

import numpy as np
import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, RFlowScheduler
from oracles import Oracle

from wdm_bundle.diffusion import (
    DDIMScheduler64,
    DDPMScheduler64,
    Diffusion,
    Sampler,
    TimestepSampling,
    TimestepSpacing,
    VarianceType,
    WaveletDiffusionInferer,
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
        (lambda: make_scheduler("ddim", 5, timestep_spacing="even"), "use one of linspace, leading, trailing."),
        (lambda: make_scheduler("ddpm", timestep_spacing="even"), "timestep_spacing: 'even' is not a valid"),
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
    assert [v.value for v in TimestepSpacing] == ["linspace", "leading", "trailing"]
    assert Sampler("ddim") == "ddim" and Diffusion(Diffusion.RFLOW_X0) is Diffusion.RFLOW_X0


@pytest.mark.parametrize(
    "spacing, t_max, steps, expected",
    [
        ("linspace", 1000, 2, [999, 0]),
        ("leading", 1000, 2, [500, 0]),
        ("trailing", 1000, 2, [999, 499]),
        ("leading", 1000, 5, [800, 600, 400, 200, 0]),
        ("trailing", 1000, 5, [999, 799, 599, 399, 199]),
        ("leading", 1000, 3, [666, 333, 0]),
        ("trailing", 1000, 3, [999, 666, 332]),  # round(666.7) - 1, round(333.3) - 1
        ("trailing", 20, 8, [19, 17, 14, 11, 9, 7, 4, 1]),  # 17.5 -> 18, 12.5 -> 12, 7.5 -> 8, 2.5 -> 2 (half even)
        ("trailing", 20, 20, list(range(19, -1, -1))),
    ],
)
def test_ddim_timestep_spacings_match_hand_written_lists(spacing, t_max, steps, expected):
    s = make_scheduler("ddim", steps, num_train_timesteps=t_max, timestep_spacing=spacing)
    assert s.timesteps.dtype == torch.long and s.timesteps.tolist() == expected
    if spacing != "linspace":  # each step goes to the next listed timestep, the last to x0
        assert [s.previous_timestep(t) for t in expected] == expected[1:] + [-1]
    s.set_timesteps(steps)  # a second call keeps the spacing
    assert s.timesteps.tolist() == expected


def _alpha_bar64(t_max=1000):
    """The paper's linear schedule, float64 numpy, written out independently of the scheduler."""
    return np.cumprod(1.0 - np.linspace(1e-4, 0.02, t_max, dtype=np.float64))


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("steps", [2, 5, 7])
def test_spaced_ddim_chain_is_the_float64_ddim_formula(spacing, steps):
    """x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev) (x_t - sqrt(ab_t) x0) / sqrt(1 - ab_t), ab_prev of the next
    listed timestep (1 after the last), along a whole chain with a float64 stand-in x0 prediction."""
    s = make_scheduler("ddim", steps, timestep_spacing=spacing)
    ab = _alpha_bar64()
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 8, 3, 3, 3, generator=g, dtype=torch.float64) * 2 - 1
    x = ref = torch.randn(2, 8, 3, 3, 3, generator=g, dtype=torch.float64)
    times = s.timesteps.tolist()
    for t, prev in zip(times, times[1:] + [-1]):
        x0 = target + 0.1 * x
        x, pred = s.step(x0, t, x)
        x0_ref = target.numpy() + 0.1 * ref.numpy()
        eps = (ref.numpy() - np.sqrt(ab[t]) * x0_ref) / np.sqrt(1 - ab[t])
        ab_prev = ab[prev] if prev >= 0 else 1.0
        ref = torch.from_numpy(np.sqrt(ab_prev) * x0_ref + np.sqrt(1 - ab_prev) * eps)
        assert x.dtype == torch.float64 and torch.equal(pred, x0)
        torch.testing.assert_close(x, ref, atol=1e-12, rtol=1e-12)
    assert torch.equal(x, x0)  # the last step lands on its x0 exactly, also in float32:
    x32, _ = s.step(target.float(), times[-1], torch.randn(2, 8, 3, 3, 3, generator=g))
    assert x32.dtype == torch.float32 and torch.equal(x32, target.float())  # the last step lands on x0 exactly


def test_linspace_spacing_is_monais_ddim_bit_for_bit():
    """The default keeps MONAI's timesteps linspace(T - 1, 0, N) and its step from t to t - T // N."""
    for steps in (2, 5, 50):
        ours, default = make_scheduler("ddim", steps, timestep_spacing="linspace"), make_scheduler("ddim", steps)
        monai = DDIMScheduler(prediction_type="sample", clip_sample=False)
        monai.set_timesteps(steps)
        monai.alphas_cumprod, monai.final_alpha_cumprod = ours.alphas_cumprod, ours.final_alpha_cumprod  # float64
        assert torch.equal(ours.timesteps, monai.timesteps) and torch.equal(default.timesteps, monai.timesteps)
        g = torch.Generator().manual_seed(steps)
        x = torch.randn(1, 8, 4, 4, 4, generator=g)
        for t in ours.timesteps.tolist():
            assert ours.previous_timestep(t) == t - 1000 // steps
            x0 = torch.rand(1, 8, 4, 4, 4, generator=g)
            for eta in (0.0, 0.7):
                a = ours.step(x0, t, x, eta, torch.Generator().manual_seed(t))
                b = monai.step(x0, t, x, eta, torch.Generator().manual_seed(t))
                assert all(torch.equal(u, v) for u, v in zip(a, b))
            x = a[0]


def test_leading_spacing_steps_as_monai_does_from_its_timesteps():
    """MONAI's step (t -> t - T // N) already lands on the "leading" timesteps: the same result, eta > 0 included."""
    ours = make_scheduler("ddim", 4, timestep_spacing="leading")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 8, 4, 4, 4, generator=g)
    for t in ours.timesteps.tolist():
        x0 = torch.rand(1, 8, 4, 4, 4, generator=g)
        a = ours.step(x0, t, x, 0.5, torch.Generator().manual_seed(t))
        b = DDIMScheduler.step(ours, x0, t, x, 0.5, torch.Generator().manual_seed(t))
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
        x = a[0]


def test_spacing_is_a_sampling_choice_not_a_training_setting():
    s = make_scheduler("ddim", 5, num_train_timesteps=400, beta_end=0.03, timestep_spacing="trailing")
    assert isinstance(s, DDIMScheduler64) and s.timestep_spacing == "trailing"
    assert "timestep_spacing" not in s.schedule_config
    again = make_scheduler("ddim", 5, timestep_spacing="trailing", **s.schedule_config)
    assert torch.equal(again.timesteps, s.timesteps) and torch.equal(again.alphas_cumprod, s.alphas_cumprod)
    assert make_scheduler("ddim", 5, **s.schedule_config).timestep_spacing == "linspace"
    ddpm = make_scheduler("ddpm", None, timestep_spacing="trailing", **s.schedule_config)
    assert torch.equal(ddpm.timesteps, make_scheduler("ddpm", None, **s.schedule_config).timesteps)  # ignored
    with pytest.raises(ValueError, match="steps_offset"):
        DDIMScheduler64(steps_offset=1, timestep_spacing="leading")


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_sampling_with_each_spacing_returns_a_right_models_x0(spacing):
    target = torch.rand(1, 8, 4, 4, 4, generator=torch.Generator().manual_seed(0)) - 0.5
    model = Oracle(target)
    scheduler = make_scheduler("ddim", 2, timestep_spacing=spacing)
    out = WaveletDiffusionInferer(scheduler).sample(torch.randn(1, 8, 4, 4, 4), model, verbose=False, decode=False)
    assert model.calls == 2
    torch.testing.assert_close(out, model.wavelet.encode(model.wavelet.decode(target).clamp(-1, 1)), atol=1e-6, rtol=0)
