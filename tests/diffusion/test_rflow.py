"""Rectified flow (MONAI `RFlowScheduler`, velocity target) as a training option, and sampler/objective checks."""

import pytest
import torch
from monai.networks.schedulers import RFlowScheduler
from oracles import Oracle as X0Oracle
from torch import nn

from wdm_bundle.diffusion import WaveletDiffusionInferer, check_sampler, diffusion_of, make_scheduler
from wdm_bundle.diffusion.schedulers import RFLOW_X0_MIN_T
from wdm_bundle.engines import TrainingCheckpointer, WaveletPrepareBatch, atomic_save, load_weights, trained_diffusion
from wdm_bundle.networks import WaveletDiffusionUNet
from wdm_bundle.wavelets import HaarWavelet3D


class VelocityOracle(nn.Module):
    """Returns the exact velocity that carries x_t to a fixed x0: v = (x0 - x_t) / (t/T)."""

    def __init__(self, target_coeffs, num_train_timesteps=1000):
        super().__init__()
        self.wavelet = HaarWavelet3D(3.0)
        self.target = target_coeffs
        self.T = num_train_timesteps
        self.calls = 0

    def forward(self, x, timesteps, context=None):
        self.calls += 1
        frac = timesteps.float().view(-1, 1, 1, 1, 1) / self.T
        return (self.target - x[:, : self.target.shape[1]]) / frac


def test_rflow_scheduler_settings():
    s = make_scheduler("rflow")
    assert isinstance(s, RFlowScheduler) and s.prediction_type == "v_prediction"
    assert len(s.timesteps) == 30 and int(s.timesteps[0]) == 1000 and int(s.timesteps[-1]) >= 1
    assert len(make_scheduler("rflow", 7).timesteps) == 7
    assert diffusion_of(s) == "rflow" and diffusion_of("rflow") == "rflow"
    assert diffusion_of(make_scheduler("ddim", 5)) == "ddpm" and diffusion_of("ddpm") == "ddpm"
    with pytest.raises(ValueError, match="num_inference_steps"):
        make_scheduler("rflow", 1001)


@pytest.mark.parametrize("steps", [30, 1])
def test_rflow_oracle_reaches_x0_and_shapes(steps):
    image = torch.rand(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    model = VelocityOracle(HaarWavelet3D(3.0).encode(image))
    inferer = WaveletDiffusionInferer(make_scheduler("rflow", steps))
    out = inferer.sample(torch.randn(2, 8, 4, 4, 4), model, verbose=False)
    assert out.shape == (2, 1, 8, 8, 8) and model.calls == steps
    torch.testing.assert_close(out, image.expand(2, -1, -1, -1, -1), atol=1e-5, rtol=0)
    coeffs = inferer.sample(torch.randn(2, 8, 4, 4, 4), model, verbose=False, decode=False)
    assert coeffs.shape == (2, 8, 4, 4, 4)


@pytest.mark.parametrize("steps", [30, 1])
def test_rflow_x0_objective_samples_the_predicted_x0(steps):
    """diffusion='rflow_x0': the output is x0; Euler steps with its velocity land on it (clamped)."""
    image = torch.rand(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(2)) * 3 - 1.5  # partly outside [-1, 1]
    model = X0Oracle(HaarWavelet3D(3.0).encode(image))
    inferer = WaveletDiffusionInferer(make_scheduler("rflow", steps), diffusion="rflow_x0")
    out = inferer.sample(torch.randn(2, 8, 4, 4, 4), model, verbose=False)
    assert out.shape == (2, 1, 8, 8, 8) and model.calls == steps
    torch.testing.assert_close(out, image.clamp(-1, 1).expand(2, -1, -1, -1, -1), atol=1e-5, rtol=0)
    # without the clamp the sample is the unclamped x0; read as a velocity, the same output is not
    raw = inferer.sample(torch.randn(1, 8, 4, 4, 4), model, verbose=False, clamp=False, decode=False)
    torch.testing.assert_close(raw, model.target, atol=1e-5, rtol=0)
    wrong = WaveletDiffusionInferer(make_scheduler("rflow", steps)).sample(
        torch.randn(1, 8, 4, 4, 4), model, verbose=False, clamp=False, decode=False
    )
    assert (wrong - model.target).abs().max() > 0.1


def test_rflow_x0_training_target_matches_the_prediction():
    """A perfect x0 prediction gives zero loss at every t; the target is x0 - noise where t/T >= RFLOW_X0_MIN_T."""
    prep = WaveletPrepareBatch(1000, HaarWavelet3D(3.0), diffusion="rflow_x0")
    images = torch.rand(6, 1, 8, 8, 8) * 2 - 1
    x0, target, _, kw = prep({"image": images}, "cpu")
    kw["timesteps"] = torch.tensor([0, 1, 20, 49, 50, 999])  # also below the floor (t/T < 0.05)
    target = prep.get_target(x0, kw["noise"], kw["timesteps"])
    inferer = WaveletDiffusionInferer(make_scheduler("rflow"), diffusion="rflow_x0")
    pred = inferer(x0, X0Oracle(x0), **kw)
    torch.testing.assert_close(pred, target, atol=1e-5, rtol=1e-5)
    velocity = x0 - kw["noise"]
    torch.testing.assert_close(target[4:], velocity[4:])
    torch.testing.assert_close(target[2], velocity[2] * 0.02 / RFLOW_X0_MIN_T)
    assert torch.equal(target[0], torch.zeros_like(target[0]))  # t = 0: x_t is x0, nothing to move
    # a wrong x0 costs its error divided by max(t/T, floor)
    wrong = inferer(x0, X0Oracle(x0 + 0.1), **kw)
    torch.testing.assert_close(
        wrong - target,
        torch.full_like(target, 0.1) / torch.tensor([0.05, 0.05, 0.05, 0.05, 0.05, 0.999]).view(-1, 1, 1, 1, 1),
        atol=1e-4,
        rtol=1e-4,
    )


def test_rflow_timestep_sampling_is_configurable():
    """Training draws t through MONAI's RFlowScheduler: uniform, or logit-normal (t/T = sigmoid(N(loc, scale)))."""
    x = torch.zeros(20000, 8, 2, 2, 2)
    torch.manual_seed(0)
    uniform = WaveletPrepareBatch(1000, HaarWavelet3D(), diffusion="rflow", scheduler=make_scheduler("rflow"))
    t = uniform.get_timesteps(x)
    assert t.dtype == torch.long and t.min() >= 0 and t.max() <= 999 and abs(t.float().median() - 500) < 20
    sched = make_scheduler("rflow", timestep_sampling="logit-normal", timestep_loc=0.8, timestep_scale=0.8)
    t = WaveletPrepareBatch(1000, HaarWavelet3D(), diffusion="rflow_x0", scheduler=sched).get_timesteps(x)
    assert t.dtype == torch.long and t.min() >= 0 and t.max() <= 999
    assert abs(t.float().median() - 1000 * torch.sigmoid(torch.tensor(0.8))) < 15  # 690: more noisy inputs
    assert (t.float() / 1000).logit().std().item() == pytest.approx(0.8, abs=0.05)
    # without a scheduler (DDPM as the paper): uniform
    t = WaveletPrepareBatch(1000, HaarWavelet3D()).get_timesteps(x)
    assert abs(t.float().median() - 500) < 20
    with pytest.raises(ValueError, match="sample_method"):
        make_scheduler("rflow", timestep_sampling="cosine")
    with pytest.raises(ValueError, match="T = 1000"):
        WaveletPrepareBatch(500, HaarWavelet3D(), diffusion="rflow", scheduler=sched)


def test_rflow_x0_is_clamped_in_image_space():
    image = torch.rand(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(1)) * 6 - 3  # outside [-1, 1]
    model = VelocityOracle(HaarWavelet3D(3.0).encode(image))
    inferer = WaveletDiffusionInferer(make_scheduler("rflow", 10), data_range=(-1, 1))
    coeffs = inferer.sample(torch.randn(1, 8, 4, 4, 4), model, verbose=False, decode=False)
    # the last Euler step lands on the clamped x0, so the coefficients decode into the range exactly
    torch.testing.assert_close(HaarWavelet3D(3.0).decode(coeffs), image.clamp(-1, 1), atol=1e-5, rtol=0)


def test_rflow_training_forward_and_velocity_target():
    x0, noise = torch.randn(2, 8, 4, 4, 4), torch.randn(2, 8, 4, 4, 4)
    t = torch.tensor([0, 500])

    class Echo(nn.Module):
        wavelet = HaarWavelet3D()

        def forward(self, x, timesteps, context=None):
            return x

    inferer = WaveletDiffusionInferer(make_scheduler("rflow"))
    xt = inferer(x0, Echo(), noise=noise, timesteps=t)
    torch.testing.assert_close(xt[0], x0[0])  # t = 0 is clean data
    torch.testing.assert_close(xt[1], 0.5 * x0[1] + 0.5 * noise[1])
    prep = WaveletPrepareBatch(1000, HaarWavelet3D(), diffusion="rflow")
    batch = {"image": torch.rand(2, 1, 8, 8, 8) * 2 - 1}
    coeffs, target, _, kwargs = prep(batch, "cpu")
    torch.testing.assert_close(target, coeffs - kwargs["noise"])
    _, target, _, _ = WaveletPrepareBatch(1000, HaarWavelet3D())(batch, "cpu")
    assert torch.equal(target, HaarWavelet3D().encode(batch["image"]))
    with pytest.raises(ValueError):
        WaveletPrepareBatch(1000, HaarWavelet3D(), diffusion="score")


def _tiny_net():
    torch.manual_seed(0)
    return WaveletDiffusionUNet(channels=(16, 32), num_res_blocks=1, norm_num_groups=8)


def _blobs(n, seed):
    """Smooth random volumes in [-1, 1], (n, 1, 16, 16, 16)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 4, 4, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(16, 16, 16), mode="trilinear") * 2 - 1


@pytest.mark.parametrize("diffusion", ["rflow", "rflow_x0"])
def test_rflow_training_learns(diffusion):
    """A few dozen RFlow steps on tiny data cut the held-out velocity loss by > 30% from the untrained model's."""
    net = _tiny_net()
    scheduler = make_scheduler("rflow")
    inferer = WaveletDiffusionInferer(scheduler, diffusion=diffusion)
    prep = WaveletPrepareBatch(1000, net.wavelet, diffusion=diffusion)
    train, held_out = _blobs(16, 0), _blobs(8, 1)

    def held_out_loss():
        torch.manual_seed(123)  # same noise and timesteps every time
        x0, target, _, kw = prep({"image": held_out}, "cpu")
        with torch.no_grad():
            return torch.nn.functional.mse_loss(inferer(x0, net, **kw), target).item()

    before = held_out_loss()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    torch.manual_seed(0)
    for i in range(60):
        x0, target, _, kw = prep({"image": train.narrow(0, (i * 4) % 16, 4)}, "cpu")
        loss = torch.nn.functional.mse_loss(inferer(x0, net, **kw), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out_loss()
    print(f"held-out velocity MSE: untrained {before:.3f}, trained {after:.3f}")
    assert after < 0.7 * before, (before, after)


def test_checkpoint_records_objective_and_inference_refuses_mismatch(tmp_path):
    net = _tiny_net()
    atomic_save(
        {"model": net.state_dict(), "ema": net.state_dict(), "iteration": 1, "diffusion": "rflow"},
        tmp_path / "model.pt",
    )
    load_weights(_tiny_net(), tmp_path / "model.pt", sampler=make_scheduler("rflow", 5))
    load_weights(_tiny_net(), tmp_path / "model.pt", sampler="rflow")
    for sampler in ("ddim", "ddpm"):
        with pytest.raises(ValueError, match="trained with diffusion='rflow'.*--sampler 'rflow'"):
            load_weights(_tiny_net(), tmp_path / "model.pt", sampler=sampler)
    # files without a recorded objective (earlier runs, imported reference weights) are DDPM/x0 models
    atomic_save({"model": net.state_dict(), "iteration": 1}, tmp_path / "old.pt")
    load_weights(_tiny_net(), tmp_path / "old.pt", key="model", sampler="ddim")
    with pytest.raises(ValueError, match="--sampler 'ddpm' or 'ddim'"):
        load_weights(_tiny_net(), tmp_path / "old.pt", key="model", sampler=make_scheduler("rflow"))
    with pytest.raises(ValueError):
        check_sampler("score", "ddim")


def test_rflow_x0_checkpoints_are_told_apart(tmp_path):
    """An rflow_x0 model samples with --sampler rflow only, and only by an inferer that reads its output as x0."""
    net = _tiny_net()
    atomic_save({"model": net.state_dict(), "ema": net.state_dict(), "diffusion": "rflow_x0"}, tmp_path / "x0.pt")
    atomic_save({"model": net.state_dict(), "ema": net.state_dict(), "diffusion": "rflow"}, tmp_path / "v.pt")
    atomic_save(net.state_dict(), tmp_path / "bare.pt")
    assert trained_diffusion(tmp_path / "x0.pt") == "rflow_x0" and trained_diffusion(tmp_path / "v.pt") == "rflow"
    assert trained_diffusion(tmp_path / "bare.pt") == "ddpm" and trained_diffusion(tmp_path / "none.pt") is None
    load_weights(_tiny_net(), tmp_path / "x0.pt", sampler="rflow", diffusion="rflow_x0")
    with pytest.raises(ValueError, match="trained with diffusion='rflow_x0'.*--sampler 'rflow'"):
        load_weights(_tiny_net(), tmp_path / "x0.pt", sampler="ddim")
    with pytest.raises(ValueError, match="x0.pt' was trained with diffusion='rflow_x0'.*set diffusion to 'rflow_x0'"):
        load_weights(_tiny_net(), tmp_path / "x0.pt", sampler="rflow", diffusion="rflow")
    with pytest.raises(ValueError, match="trained with diffusion='rflow'"):
        load_weights(_tiny_net(), tmp_path / "v.pt", sampler="rflow", diffusion="rflow_x0")
    with pytest.raises(ValueError, match="diffusion='rflow_x0'.*--sampler 'rflow'"):
        WaveletDiffusionInferer(make_scheduler("ddim", 5), diffusion="rflow_x0")
    inferer = WaveletDiffusionInferer(make_scheduler("rflow", 2), diffusion="rflow_x0")
    with pytest.raises(ValueError, match="--sampler 'rflow'"):
        inferer.sample(torch.randn(1, 8, 4, 4, 4), net, scheduler=make_scheduler("ddim", 2), verbose=False)


def test_trainer_checkpoints_carry_the_objective(tmp_path):
    from ignite.engine import Engine

    net = _tiny_net()
    engine = Engine(lambda e, b: None)
    saver = TrainingCheckpointer(tmp_path, net, save_every=1, diffusion="rflow")
    saver.attach(engine)
    engine.run([0, 1], max_epochs=1)
    assert torch.load(tmp_path / "model.pt", weights_only=True)["diffusion"] == "rflow"
    assert torch.load(tmp_path / "checkpoint_00000002.pt", weights_only=True)["diffusion"] == "rflow"
    # resuming an RFlow run as a DDPM run is refused
    engine2 = Engine(lambda e, b: None)
    with pytest.raises(ValueError, match="trained with diffusion='rflow'"):
        TrainingCheckpointer(tmp_path, _tiny_net(), save_every=1, resume=True).attach(engine2)


def test_rflow_weights_are_not_exported_to_the_reference_layout(tmp_path):
    from wdm_bundle.networks import build_reference_network
    from wdm_bundle.networks.reference_checkpoint import export_checkpoint_file

    net = build_reference_network("cwdm_unet")
    atomic_save({"model": net.state_dict(), "ema": net.state_dict(), "diffusion": "rflow"}, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="x0-predicting DDPM models only"):
        export_checkpoint_file(tmp_path / "model.pt", tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()
