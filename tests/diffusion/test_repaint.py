"""RePaint inpainting (`RePaintInferer`): exactness with an always-right network, schedule, noise, inputs."""

import math

import numpy as np
import pytest
import torch
from oracles import AffineOracle, Oracle

from wdm_bundle.diffusion import RePaintInferer, WaveletDiffusionInferer, make_scheduler, resampling_schedule
from wdm_bundle.wavelets import HaarWavelet3D

T = 20
CODER = HaarWavelet3D(3.0)


def _image(batch=2, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, size, size, size, generator=g) * 2 - 1


def _mask(batch=1, size=8):
    """A box from voxel 3 to 6: its border cuts 2x2x2 wavelet blocks, so known and unknown share coefficients."""
    mask = torch.zeros(batch, 1, size, size, size)
    mask[..., 3:7, 2:7, 3:6] = 1
    return mask


def _alpha_bar64():
    """The paper's linear schedule for T steps, in float64 numpy, written out independently of the scheduler."""
    return np.cumprod(1.0 - np.linspace(1e-4, 0.02, T, dtype=np.float64)).tolist()


def test_schedule_matches_hand_written_lists():
    # DDPM, T = 5, L = 2, r = 2: jumps after the steps j = 2 and j = 0 (counted from the end), once each
    assert resampling_schedule(range(4, -1, -1), 2, 2) == [4, 3, 2, 1, 3, 2, 1, 0, -1, 1, 0, -1]
    # the model is called where the level goes down, as in diffusers' RePaint list [4,3,2,3,4,3,2,1,0,1,2,1,0]
    # (whose rises are single-level undo steps): at 4, 3, 2, 3, 2, 1, 0, 1, 0
    ddim = RePaintInferer.timesteps_of(make_scheduler("ddim", 5, num_train_timesteps=T))
    assert ddim == [16, 12, 8, 4, 0]  # each of MONAI's DDIM steps (t -> t - T // N) lands on the next
    assert resampling_schedule(ddim, 1, 3) == (
        [16, 12, 8, 12, 8, 12, 8, 4, 8, 4, 8, 4, 0, 4, 0, 4, 0, -1, 0, -1, 0, -1]
    )
    assert resampling_schedule([4, 3, 2, 1, 0], 3, 1) == [4, 3, 2, 1, 0, -1]  # r = 1: plain sampling
    for bad in [(0, 2), (2, 0), (5, 2)]:
        with pytest.raises(ValueError, match="jump"):
            resampling_schedule(range(4, -1, -1), *bad)


@pytest.mark.parametrize("sampler,steps,jump", [("ddpm", None, (3, 2)), ("ddim", 5, (2, 3)), ("ddpm", None, (1, 1))])
def test_oracle_fills_the_truth_and_keeps_the_rest(sampler, steps, jump):
    truth = _image()
    image = truth.clone()
    mask = _mask()  # batch 1, broadcast to the image's 2
    image[mask.expand_as(image).bool()] = 0.0  # voided region
    model = Oracle(CODER.encode(truth))  # always predicts the whole ground truth
    scheduler = make_scheduler(sampler, steps, num_train_timesteps=T)
    out = RePaintInferer(scheduler, jump_length=jump[0], jump_n_sample=jump[1]).inpaint(
        image, mask, model, generator=torch.Generator().manual_seed(0), verbose=False
    )
    levels = resampling_schedule(RePaintInferer.timesteps_of(scheduler), *jump)
    assert model.calls == sum(b < a for a, b in zip(levels, levels[1:]))
    inside = mask.expand_as(image).bool()
    torch.testing.assert_close(out[inside], truth[inside], atol=1e-5, rtol=0)
    assert torch.equal(out[~inside], image[~inside])


def test_known_region_is_q_xt_given_x0_and_the_rest_the_models_step():
    image, mask = _image(batch=1), _mask()
    x0 = CODER.encode(image)
    model = AffineOracle(x0 * 0.5, num_train_timesteps=T)
    scheduler = make_scheduler("ddpm", None, num_train_timesteps=T)
    inferer = RePaintInferer(scheduler, jump_length=2, jump_n_sample=2)
    x = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    inside = mask.bool()
    for level, to in [(10, 9), (0, -1)]:
        out = inferer.reverse_step(
            x, level, to, x0, inside, model, scheduler, generator=torch.Generator().manual_seed(2)
        )
        g = torch.Generator().manual_seed(2)  # documented order: the known noise first, then the model's
        eps = torch.randn(x0.shape, generator=g).double()
        ab = 1.0 if to < 0 else _alpha_bar64()[to]
        known = CODER.decode(math.sqrt(ab) * x0.double() + (0.0 if to < 0 else math.sqrt(1 - ab)) * eps)
        generated = CODER.decode(inferer.denoise_step(x, level, max(to, 0), model, scheduler, generator=g))
        img = CODER.decode(out)
        torch.testing.assert_close(img[~inside].double(), known[~inside], atol=1e-6, rtol=0)
        torch.testing.assert_close(img[inside], generated[inside], atol=1e-6, rtol=0)


def test_jump_renoising_has_the_forward_marginal():
    """q(x_to | x_level) applied to a draw of q(x_level | x0) gives q(x_to | x0): mean sqrt(ab_to) x0, var 1 - ab_to."""
    scheduler = make_scheduler("ddpm", None, num_train_timesteps=T)
    inferer = RePaintInferer(scheduler, jump_length=2, jump_n_sample=2)
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(4, 8, 16, 16, 16, generator=g) * 2 - 1
    ab = _alpha_bar64()
    for level, to in [(5, 8), (-1, 3), (0, 19)]:
        x = inferer.noise_known(x0, level, scheduler, g)
        residual = (inferer.renoise(x, level, to, scheduler, g) - math.sqrt(ab[to]) * x0).double()
        assert abs(residual.mean()) < 0.01
        assert abs(residual.var() / (1 - ab[to]) - 1) < 0.02
    # the jump's coefficients are the float64 ones, with the same draw
    x = torch.randn(1, 8, 4, 4, 4, generator=g)
    state = g.get_state()
    out = inferer.renoise(x, 4, 7, scheduler, g)
    g.set_state(state)
    ratio = ab[7] / ab[4]
    ref = math.sqrt(ratio) * x.double() + math.sqrt(1 - ratio) * torch.randn(x.shape, generator=g).double()
    torch.testing.assert_close(out.double(), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_empty_mask_returns_the_input(dtype):
    image = _image(batch=1).to(dtype)
    model = AffineOracle(CODER.encode(_image(batch=1, seed=5)), num_train_timesteps=T)
    inferer = RePaintInferer(make_scheduler("ddpm", None, num_train_timesteps=T), jump_length=2, jump_n_sample=2)
    out = inferer.inpaint(image, torch.zeros(1, 1, 8, 8, 8), model, verbose=False)
    assert out.dtype == dtype and torch.equal(out, image)


def test_full_mask_without_jumps_is_unconditional_sampling():
    image = _image(batch=2)
    model = AffineOracle(CODER.encode(_image(batch=2, seed=5)), num_train_timesteps=T)
    scheduler = make_scheduler("ddpm", None, num_train_timesteps=T)
    out = RePaintInferer(scheduler, jump_length=1, jump_n_sample=1).inpaint(
        image, torch.ones(2, 1, 8, 8, 8), model, generator=torch.Generator().manual_seed(4), verbose=False
    )
    g = torch.Generator().manual_seed(4)
    noise = torch.randn(2, 8, 4, 4, 4, generator=g)
    ref = WaveletDiffusionInferer(scheduler).sample(noise, model, generator=g, verbose=False)
    assert torch.equal(out, ref)


def _bad_inputs():
    image, mask = _image(batch=2), _mask(batch=2)
    nan = image.clone()
    nan[0, 0, 0, 0, 0] = float("nan")
    half = mask.clone()
    half[0, 0, 4, 4, 4] = 0.5
    return [
        (image[0], mask, "image must be"),
        (image.long(), mask, "floating point"),
        (image, mask[..., :4], "mask"),
        (image, torch.cat([mask] * 3), "batch"),
        (image, torch.cat([mask] * 2, dim=1), "channels"),
        (image, half, "binary"),
        (image * 1.5, mask, "data_range"),
        (nan, mask, "data_range"),
        (image[..., :7], mask[..., :7], "even"),
    ]


@pytest.mark.parametrize("image,mask,match", _bad_inputs())
def test_bad_inputs_are_refused(image, mask, match):
    inferer = RePaintInferer(make_scheduler("ddim", 4, num_train_timesteps=T), jump_length=1, jump_n_sample=2)
    model = Oracle(CODER.encode(_image(batch=2)))
    with pytest.raises(ValueError, match=match):
        inferer.inpaint(image, mask, model, verbose=False)
    assert model.calls == 0


def test_bad_samplers_and_sizes_are_refused():
    image, mask = _image(batch=1), _mask()
    model = Oracle(CODER.encode(image))
    inferer = RePaintInferer(make_scheduler("ddpm", None, num_train_timesteps=T), jump_length=2, jump_n_sample=2)
    with pytest.raises(ValueError, match="all 20 steps"):
        inferer.inpaint(image, mask, model, scheduler=make_scheduler("ddpm", 10, num_train_timesteps=T))
    with pytest.raises(ValueError, match="DDPM or DDIM"):
        inferer.inpaint(image, mask, model, scheduler=make_scheduler("rflow", 10, num_train_timesteps=T))
    with pytest.raises(ValueError, match="diffusion='ddpm'"):
        RePaintInferer(make_scheduler("rflow", 10, num_train_timesteps=T))
    with pytest.raises(ValueError, match="jump_length"):
        RePaintInferer(make_scheduler("ddim", 4, num_train_timesteps=T), jump_length=4, jump_n_sample=2)
    with pytest.raises(ValueError, match="all 20 steps"):
        RePaintInferer(make_scheduler("ddpm", 10, num_train_timesteps=T))

    def refuse(size, name="image"):
        raise ValueError(f"{name}: spatial size {tuple(size)} is not divisible by 16")

    model.check_image_size = refuse
    with pytest.raises(ValueError, match="divisible by 16"):
        inferer.inpaint(image, mask, model, verbose=False)
    assert model.calls == 0


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_spaced_ddim_noises_the_known_region_to_the_chains_level(spacing, monkeypatch):
    """With "leading"/"trailing" DDIM RePaint uses the scheduler's own timesteps; each reverse step calls the model at
    the chain's level, lands (float64 DDIM formula) on the next listed one, where the known region is noised."""
    scheduler = make_scheduler("ddim", 4, num_train_timesteps=T, timestep_spacing=spacing)
    times = RePaintInferer.timesteps_of(scheduler)
    assert times == scheduler.timesteps.tolist() == ([19, 14, 9, 4] if spacing == "trailing" else [15, 10, 5, 0])
    assert RePaintInferer.timesteps_of(make_scheduler("ddim", 4, num_train_timesteps=T)) == [15, 10, 5, 0]  # linspace
    image, mask = _image(batch=1), _mask()
    x0 = CODER.encode(image)
    model = AffineOracle(x0 * 0.5, num_train_timesteps=T)
    inferer = RePaintInferer(scheduler, jump_length=1, jump_n_sample=2)
    calls, known_levels = [], []
    forward, noise_known = model.forward, inferer.noise_known
    monkeypatch.setattr(model, "forward", lambda x, timesteps: calls.append(int(timesteps[0])) or forward(x, timesteps))
    monkeypatch.setattr(
        inferer, "noise_known", lambda x, level, *a: known_levels.append(level) or noise_known(x, level, *a)
    )
    inferer.inpaint(image, mask, model, generator=torch.Generator().manual_seed(0), verbose=False)
    levels = resampling_schedule(times, 1, 2)
    downs = [(a, b) for a, b in zip(levels, levels[1:]) if b < a]
    assert calls == [a for a, _ in downs] and known_levels == [b for _, b in downs]
    assert all(scheduler.previous_timestep(a) == b for a, b in downs)
    # one step from the first level: generated region = DDIM to the next level, known region = q(x_next | x0)
    level, to = times[0], times[1]
    x = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    out = CODER.decode(
        inferer.reverse_step(x, level, to, x0, mask.bool(), model, scheduler, torch.Generator().manual_seed(2))
    )
    ab = _alpha_bar64()
    pred = model.reference(x.double().numpy(), level)
    pred = CODER.encode(CODER.decode(torch.from_numpy(pred)).clamp(-1, 1)).double()  # the image-space clamp
    eps_hat = (x.double() - math.sqrt(ab[level]) * pred) / math.sqrt(1 - ab[level])
    generated = CODER.decode(math.sqrt(ab[to]) * pred + math.sqrt(1 - ab[to]) * eps_hat)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2)).double()
    known = CODER.decode(math.sqrt(ab[to]) * x0.double() + math.sqrt(1 - ab[to]) * eps)
    inside = mask.bool()
    torch.testing.assert_close(out[inside].double(), generated[inside], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[~inside].double(), known[~inside], atol=1e-6, rtol=0)
