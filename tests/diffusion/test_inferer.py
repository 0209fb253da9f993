import pytest
import torch
from oracles import Oracle
from torch import nn

from wdm_bundle.diffusion import WaveletDiffusionInferer, make_scheduler
from wdm_bundle.wavelets import HaarWavelet3D


def _target(value_range=(-1, 1)):
    g = torch.Generator().manual_seed(0)
    lo, hi = value_range
    return torch.rand(1, 1, 8, 8, 8, generator=g) * (hi - lo) + lo


@pytest.mark.parametrize("sampler,steps", [("ddim", 10), ("ddim", 1), ("ddpm", None)])
def test_oracle_x0_is_recovered(sampler, steps):
    image = _target()
    model = Oracle(HaarWavelet3D(3.0).encode(image))
    scheduler = make_scheduler(sampler, steps)
    inferer = WaveletDiffusionInferer(scheduler)
    out = inferer.sample(torch.randn(2, 8, 4, 4, 4), model, verbose=False)
    assert out.shape == (2, 1, 8, 8, 8)
    assert model.calls == (steps or 1000)
    # DDPM's last step divides by 1 - alpha_bar_0 = beta_0 = 1e-4: exact only with float64 tables (as the reference)
    torch.testing.assert_close(out, image.expand(2, -1, -1, -1, -1), atol=1e-5, rtol=0)


def test_x0_is_clamped_in_image_space():
    image = _target() * 3  # outside [-1, 1]
    model = Oracle(HaarWavelet3D(3.0).encode(image))
    inferer = WaveletDiffusionInferer(make_scheduler("ddim", 5), data_range=(-1, 1))
    out = inferer.sample(torch.randn(1, 8, 4, 4, 4), model, verbose=False)
    torch.testing.assert_close(out, image.clamp(-1, 1), atol=1e-4, rtol=0)
    coeffs = inferer.sample(torch.randn(1, 8, 4, 4, 4), model, verbose=False, decode=False)
    assert HaarWavelet3D(3.0).decode(coeffs).abs().max() <= 1 + 1e-4


def test_schedulers_follow_the_paper():
    s = make_scheduler("ddpm")
    assert s.num_train_timesteps == 1000 and len(s.timesteps) == 1000
    assert s.prediction_type == "sample" and not s.clip_sample
    torch.testing.assert_close(s.betas[[0, -1]], torch.tensor([1e-4, 0.02], dtype=torch.float64))
    assert len(make_scheduler("ddim", 37).timesteps) == 37
    with pytest.raises(ValueError):
        make_scheduler("euler")
    with pytest.raises(ValueError, match="num_inference_steps"):
        make_scheduler("ddim", 0)


def test_training_forward_and_condition():
    class Echo(nn.Module):
        wavelet = HaarWavelet3D()

        def forward(self, x, timesteps, context=None):
            return x

    inferer = WaveletDiffusionInferer(make_scheduler("ddpm"))
    x0, noise = torch.randn(2, 8, 4, 4, 4), torch.randn(2, 8, 4, 4, 4)
    t = torch.tensor([0, 999])
    out = inferer(x0, Echo(), noise=noise, timesteps=t)
    torch.testing.assert_close(out, inferer.scheduler.add_noise(x0, noise, t))
    cond = torch.randn(2, 16, 4, 4, 4)
    out = inferer(x0, Echo(), noise=noise, timesteps=t, condition=cond)
    assert out.shape[1] == 24 and torch.equal(out[:, 8:], cond)


def test_rejects_epsilon_scheduler():
    from monai.networks.schedulers import DDPMScheduler

    with pytest.raises(ValueError, match="prediction_type"):
        WaveletDiffusionInferer(DDPMScheduler())
