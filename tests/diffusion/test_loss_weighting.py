"""DDPM objective options: per-timestep x0 loss weights (eps, v, Min-SNR) and the logit-normal timestep draw."""

import numpy as np
import pytest
import torch
from ignite.engine import Events
from scipy import stats
from workflow_helpers import error_messages, workflow

from wdm_bundle.diffusion import (
    MAX_SNR_WEIGHT,
    WeightedDiffusionLoss,
    draw_timesteps,
    loss_weights,
    make_scheduler,
    training_loss,
    training_scheduler,
)
from wdm_bundle.engines import WaveletPrepareBatch, read_record, training_record, validate_record
from wdm_bundle.engines.prepare_batch import InpaintingPrepareBatch, SynthesisPrepareBatch
from wdm_bundle.engines.record_schema import objective_settings
from wdm_bundle.networks import WaveletDiffusionUNet

T = 1000
SMALL = dict(channels=(8, 16), num_res_blocks=1, norm_num_groups=8)


def _snr64():
    """SNR_t of the paper's linear betas, computed here in float64 from the betas."""
    betas = np.linspace(1e-4, 0.02, T, dtype=np.float64)
    alpha_bar = np.cumprod(1.0 - betas)
    return alpha_bar / (1.0 - alpha_bar)


@pytest.fixture(scope="module")
def wavelet():
    return WaveletDiffusionUNet(**SMALL).wavelet


@pytest.mark.parametrize(
    "weighting,formula",
    [
        ("eps", lambda s: np.minimum(s, 1000.0)),
        ("v", lambda s: np.minimum(s + 1.0, 1000.0)),
        ("min_snr", lambda s: np.minimum(s, 5.0)),
        ("uniform", lambda s: np.ones_like(s)),
    ],
)
def test_weights_follow_the_snr_formula_and_have_mean_one(weighting, formula):
    scheduler = training_scheduler("ddpm")
    weights = loss_weights(scheduler.alphas_cumprod, weighting)
    assert weights.dtype == torch.float64 and weights.shape == (T,)
    expected = formula(_snr64())
    expected = expected / expected.mean()
    np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-10)
    assert abs(weights.mean().item() - 1.0) < 1e-12
    assert MAX_SNR_WEIGHT == 1000.0


def test_min_snr_gamma_and_monotone_weights():
    alpha_bar = training_scheduler("ddpm").alphas_cumprod
    w = loss_weights(alpha_bar, "min_snr", loss_gamma=2.0).numpy()
    expected = np.minimum(_snr64(), 2.0)
    np.testing.assert_allclose(w, expected / expected.mean(), rtol=1e-10)
    assert np.all(np.diff(w) <= 0)  # less weight on noisier steps
    # eps is capped: the first (SNR > 1000) timesteps share one weight
    eps = loss_weights(alpha_bar, "eps").numpy()
    assert np.all(eps[:6] == eps[0]) and eps[6] < eps[0]


def test_weighted_loss_is_the_hand_computed_weighted_mean():
    torch.manual_seed(0)
    pred, x0 = torch.randn(3, 8, 2, 3, 4), torch.randn(3, 8, 2, 3, 4)
    w = torch.tensor([0.5, 2.0, 0.25])
    target = torch.cat([x0, w.view(3, 1, 1, 1, 1).expand(3, 1, 2, 3, 4)], dim=1)
    per_sample = [((pred[b] - x0[b]) ** 2).mean() for b in range(3)]
    expected = sum(w[b] * per_sample[b] for b in range(3)) / 3
    torch.testing.assert_close(WeightedDiffusionLoss()(pred, target), expected)
    with pytest.raises(ValueError, match="plus one weight channel"):
        WeightedDiffusionLoss()(pred, x0)


def test_uniform_keeps_the_plain_mse_and_target(wavelet):
    loss = training_loss("uniform", "ddpm")
    assert type(loss) is torch.nn.MSELoss
    assert isinstance(training_loss("min_snr"), WeightedDiffusionLoss)
    batch = {"image": torch.rand(2, 1, 8, 8, 8)}
    scheduler = training_scheduler("ddpm")
    torch.manual_seed(3)
    x0, target, args, kw = WaveletPrepareBatch(T, wavelet, scheduler=scheduler)(batch)
    torch.manual_seed(3)
    # today's draw: MONAI's DiffusionPrepareBatch noise and torch.randint timesteps, target = x0
    noise = torch.randn_like(x0)
    timesteps = torch.randint(0, T, (2,)).long()
    assert torch.equal(kw["noise"], noise) and torch.equal(kw["timesteps"], timesteps)
    assert torch.equal(target, x0) and target.shape == x0.shape
    pred = torch.randn_like(x0)
    assert torch.equal(loss(pred, target), torch.nn.MSELoss()(pred, x0))


def test_weighted_target_carries_each_samples_weight(wavelet):
    scheduler = training_scheduler("ddpm")
    prepare = WaveletPrepareBatch(T, wavelet, scheduler=scheduler, loss_weighting="v")
    x0, target, _, kw = prepare({"image": torch.rand(4, 1, 8, 8, 8)})
    assert target.shape == (4, 9, 4, 4, 4) and torch.equal(target[:, :-1], x0)
    expected = loss_weights(scheduler.alphas_cumprod, "v")[kw["timesteps"]].float()
    for b in range(4):
        assert torch.all(target[b, -1] == expected[b])
    pred = torch.randn_like(x0)
    manual = torch.stack([expected[b] * ((pred[b] - x0[b]) ** 2).mean() for b in range(4)]).mean()
    torch.testing.assert_close(WeightedDiffusionLoss()(pred, target), manual)


def test_logit_normal_draw_matches_its_distribution():
    torch.manual_seed(0)
    loc, scale = 0.5, 0.8
    t = draw_timesteps(20000, T, "logit-normal", loc, scale)
    assert t.dtype == torch.long and t.min() >= 0 and t.max() < T
    # t = floor(T u), u = sigmoid(N(loc, scale)): compare (t + 0.5) / T with u's distribution (KS, discretisation
    # error 1/(2T) well below the KS threshold at n = 20000, ~0.0096)
    u = (t.double().numpy() + 0.5) / T
    logits = np.log(u / (1 - u))
    result = stats.kstest(logits, "norm", args=(loc, scale))
    assert result.statistic < 0.015, result
    # quantiles of t within 1% of T of the exact ones
    for q in (0.1, 0.5, 0.9):
        exact = T / (1 + np.exp(-(loc + scale * stats.norm.ppf(q))))
        assert abs(np.quantile(t.numpy(), q) - exact) < 0.01 * T
    # extreme locs stay inside [0, T)
    assert draw_timesteps(1000, T, "logit-normal", 50.0, 1.0).max() == T - 1
    assert draw_timesteps(1000, T, "logit-normal", -50.0, 1.0).min() == 0


def test_prepare_batch_uses_the_ddpm_draw(wavelet):
    prepare = WaveletPrepareBatch(
        T, wavelet, scheduler=training_scheduler("ddpm"), ddpm_timestep_draw="logit-normal", ddpm_timestep_loc=3.0
    )
    torch.manual_seed(1)
    t = torch.cat([prepare.get_timesteps(torch.zeros(256, 8, 2, 2, 2)) for _ in range(4)])
    assert t.float().mean() > 0.85 * T  # sigmoid(3) = 0.95


def test_bad_values_and_rectified_flow_are_refused(wavelet):
    ddpm = training_scheduler("ddpm")
    with pytest.raises(ValueError, match="loss_weighting: 'snr' is not a valid LossWeighting; use one of uniform, eps"):
        WaveletPrepareBatch(T, wavelet, scheduler=ddpm, loss_weighting="snr")
    with pytest.raises(ValueError, match="ddpm_timestep_draw: .*use one of uniform, logit-normal"):
        WaveletPrepareBatch(T, wavelet, scheduler=ddpm, ddpm_timestep_draw="cosine")
    with pytest.raises(ValueError, match="loss_weighting: .*use one of uniform, eps, v, min_snr"):
        training_loss("x0")
    with pytest.raises(ValueError, match="loss_gamma must be > 0"):
        WaveletPrepareBatch(T, wavelet, scheduler=ddpm, loss_weighting="min_snr", loss_gamma=0)
    with pytest.raises(ValueError, match="ddpm_timestep_scale must be > 0"):
        WaveletPrepareBatch(T, wavelet, scheduler=ddpm, ddpm_timestep_draw="logit-normal", ddpm_timestep_scale=-1)
    with pytest.raises(ValueError, match="needs the DDPM training scheduler"):
        WaveletPrepareBatch(T, wavelet, loss_weighting="eps")
    for diffusion in ("rflow", "rflow_x0"):
        rflow = training_scheduler(diffusion)
        with pytest.raises(ValueError, match="loss_weighting='min_snr': DDPM training options; rectified flow"):
            WaveletPrepareBatch(T, wavelet, diffusion=diffusion, scheduler=rflow, loss_weighting="min_snr")
        with pytest.raises(ValueError, match="ddpm_timestep_draw='logit-normal'"):
            WaveletPrepareBatch(T, wavelet, diffusion=diffusion, scheduler=rflow, ddpm_timestep_draw="logit-normal")
        with pytest.raises(ValueError, match="rectified flow"):
            training_loss("min_snr", diffusion)
        assert type(training_loss("uniform", diffusion)) is torch.nn.MSELoss
    with pytest.raises(ValueError, match="not supported by inpainting"):
        InpaintingPrepareBatch(T, wavelet, scheduler=ddpm, loss_weighting="eps")


def test_configs_without_the_options_refuse_them(wavelet):
    """cWDM/inpainting/label configs build their batch preparer without the options: the record check refuses."""
    prepare = SynthesisPrepareBatch(T, wavelet, num_contrasts=2, scheduler=training_scheduler("ddpm"))
    assert prepare.objective_record() == {}
    with pytest.raises(ValueError, match=r"not configured with loss_weighting='min_snr' \(it uses 'uniform'\)"):
        prepare.objective_record("min_snr")
    with pytest.raises(ValueError, match="use one of uniform, logit-normal"):
        prepare.objective_record(ddpm_timestep_draw="beta")
    prepare.objective_record("uniform", 3.0)  # gamma is irrelevant without min_snr
    weighted = SynthesisPrepareBatch(
        T, wavelet, num_contrasts=2, scheduler=training_scheduler("ddpm"), loss_weighting="min_snr", loss_gamma=3.0
    )
    assert weighted.objective_record("min_snr", 3.0) == {"loss_weighting": "min_snr", "loss_gamma": 3.0}


def _record(**kw):
    net = WaveletDiffusionUNet(**SMALL)
    return training_record(
        "generation", kw.pop("diffusion", "ddpm"), kw.pop("scheduler", make_scheduler("ddpm")), net, (-1, 1), **kw
    )


def test_record_holds_the_options_and_old_records_load():
    plain = _record()
    assert not {"loss_weighting", "ddpm_timestep_draw", "loss_gamma"} & set(plain)  # default runs: as before
    assert objective_settings(plain) == {
        "loss_weighting": "uniform",
        "loss_gamma": 5.0,
        "ddpm_timestep_draw": "uniform",
        "ddpm_timestep_loc": 0.0,
        "ddpm_timestep_scale": 1.0,
    }
    objective = {"loss_weighting": "min_snr", "loss_gamma": 5.0, "ddpm_timestep_draw": "logit-normal"}
    record = _record(objective={**objective, "ddpm_timestep_loc": 0.5, "ddpm_timestep_scale": 1.0})
    assert validate_record(record) == record and record["loss_gamma"] == 5.0
    assert objective_settings(record)["ddpm_timestep_loc"] == 0.5
    for key, value, message in [
        ("loss_weighting", "snr", r"loss_weighting must be one of \['uniform', 'eps', 'v', 'min_snr'\]"),
        ("ddpm_timestep_draw", 3, "ddpm_timestep_draw must be one of"),
        ("loss_gamma", -1.0, "loss_gamma must be a number in"),
        ("ddpm_timestep_scale", 0.0, "ddpm_timestep_scale must be a number in"),
    ]:
        with pytest.raises(ValueError, match=message):
            validate_record({**record, key: value})
    rflow = _record(diffusion="rflow", scheduler=make_scheduler("rflow"))
    with pytest.raises(ValueError, match="DDPM training options"):
        validate_record({**rflow, "loss_weighting": "eps"})
    assert validate_record({**rflow, "loss_weighting": "uniform"})["loss_weighting"] == "uniform"


@pytest.mark.slow
def test_tiny_training_run_with_min_snr_and_logit_normal(repo_root, demo_data, tmp_path):
    """30 demo iterations (about 25 s on an idle 2-core VM, a minute under load): the loss falls, both options are
    recorded."""
    wf = workflow(
        repo_root,
        ["train.json", "demo.json"],
        "train",
        bundle_root=str(tmp_path),
        dataset_dir=str(demo_data),
        num_iterations=30,
        save_every=30,
        preview_every=1000,
        log_every=1000,
        num_workers=0,
        loss_weighting="min_snr",
        ddpm_timestep_draw="logit-normal",
        ddpm_timestep_loc=-0.5,
    )
    assert isinstance(wf.parser.get_parsed_content("loss"), WeightedDiffusionLoss)
    trainer = wf.parser.get_parsed_content("train#trainer")
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output[0]["loss"])))
    wf.run()
    wf.finalize()
    assert len(losses) == 30 and np.isfinite(losses).all()
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10]), losses
    record = read_record(tmp_path / "models" / "model.pt")
    assert record["loss_weighting"] == "min_snr" and record["loss_gamma"] == 5.0
    assert record["ddpm_timestep_draw"] == "logit-normal" and record["ddpm_timestep_loc"] == -0.5
    assert record["ddpm_timestep_scale"] == 1.0


def test_rflow_config_with_min_snr_is_refused(repo_root, demo_data, tmp_path):
    wf = workflow(
        repo_root,
        ["train.json", "demo.json"],
        "train",
        bundle_root=str(tmp_path),
        dataset_dir=str(demo_data),
        num_workers=0,
        diffusion="rflow",
        loss_weighting="min_snr",
    )
    with pytest.raises(Exception) as err:
        wf.parser.get_parsed_content("train#trainer")
    assert "rectified flow" in error_messages(err.value)
