"""DDIM's eta (`make_scheduler(ddim_eta=...)`, `--ddim_eta`): 0 keeps today's deterministic steps bit for bit, eta > 0
is the DDIM paper's stochastic step (eq. 16), values outside [0, 1] are refused, and the inference config passes it."""

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from wdm_bundle.diffusion import DDIMScheduler64, make_scheduler
from wdm_bundle.engines import LEGACY_RECORDS, atomic_save, recorded_network, validate_record


def _alpha_bar64(t_max: int = 1000) -> np.ndarray:
    return np.cumprod(1.0 - np.linspace(1e-4, 0.02, t_max, dtype=np.float64))


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_eta_zero_is_todays_step_bit_for_bit(spacing):
    """The default (eta 0) and an explicit 0 step exactly as the scheduler without eta did (step's own eta = 0)."""
    default = make_scheduler("ddim", 4, timestep_spacing=spacing)
    zero = make_scheduler("ddim", 4, timestep_spacing=spacing, ddim_eta=0.0)
    assert default.eta == zero.eta == 0.0
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 4, 4, 4, generator=g)
    for t in default.timesteps.tolist():
        x0 = torch.rand(2, 8, 4, 4, 4, generator=g) * 2 - 1
        today = default.step(x0, t, x, 0.0, torch.Generator().manual_seed(t))
        for s in (default, zero):
            ours = s.step(x0, t, x, generator=torch.Generator().manual_seed(t))
            assert all(torch.equal(a, b) for a, b in zip(ours, today))
        x = today[0]


@pytest.mark.parametrize("spacing, eta", [("trailing", 1.0), ("trailing", 0.5), ("leading", 1.0), ("linspace", 0.3)])
def test_eta_step_is_the_float64_ddim_formula(spacing, eta):
    """sigma = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev); x_prev = sqrt(a_prev) x0 +
    sqrt(1 - a_prev - sigma^2) eps + sigma z, z from the seeded generator; along a whole chain in float64."""
    s = make_scheduler("ddim", 4, timestep_spacing=spacing, ddim_eta=eta)
    ab = _alpha_bar64()
    g = torch.Generator().manual_seed(1)
    target = torch.rand(2, 8, 3, 3, 3, generator=g, dtype=torch.float64) * 2 - 1
    x = ref = torch.randn(2, 8, 3, 3, 3, generator=g, dtype=torch.float64)
    times = s.timesteps.tolist()
    for t in times:
        prev = s.previous_timestep(t)
        x0 = target + 0.1 * x
        x, pred = s.step(x0, t, x, generator=torch.Generator().manual_seed(t))
        z = torch.randn(x0.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(t)).numpy()
        x0_ref = target.numpy() + 0.1 * ref.numpy()
        a_t, a_prev = ab[t], (ab[prev] if prev >= 0 else 1.0)
        eps = (ref.numpy() - np.sqrt(a_t) * x0_ref) / np.sqrt(1 - a_t)
        sigma = eta * np.sqrt((1 - a_prev) / (1 - a_t)) * np.sqrt(1 - a_t / a_prev)
        ref = torch.from_numpy(np.sqrt(a_prev) * x0_ref + np.sqrt(1 - a_prev - sigma**2) * eps + sigma * z)
        assert x.dtype == torch.float64 and torch.equal(pred, x0)
        torch.testing.assert_close(x, ref, atol=1e-12, rtol=1e-12)
        if prev >= 0:
            assert sigma > 0
    if spacing != "linspace":
        assert torch.equal(x, x0)  # the last step goes to x0 (a_prev = 1, sigma = 0): no noise added there


def test_eta_noise_comes_from_the_generator():
    s = make_scheduler("ddim", 4, timestep_spacing="trailing", ddim_eta=1.0)
    x, x0 = torch.randn(1, 8, 4, 4, 4), torch.zeros(1, 8, 4, 4, 4)
    a, b = (s.step(x0, 999, x, generator=torch.Generator().manual_seed(3))[0] for _ in range(2))
    c = s.step(x0, 999, x, generator=torch.Generator().manual_seed(4))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, s.step(x0, 999, x, 0.0)[0])  # step's own eta overrides the scheduler's


@pytest.mark.parametrize("eta", [-0.1, 1.01, float("nan"), 2])
def test_eta_outside_zero_one_is_refused(eta):
    with pytest.raises(ValueError, match=r"ddim_eta \(DDIM's eta\) must be in \[0, 1\]"):
        make_scheduler("ddim", 4, ddim_eta=eta)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        DDIMScheduler64(eta=eta)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        make_scheduler("ddim", 4).step(torch.zeros(1, 8, 2, 2, 2), 999, torch.zeros(1, 8, 2, 2, 2), eta)


def test_eta_is_a_sampling_choice_not_a_training_setting():
    s = make_scheduler("ddim", 4, timestep_spacing="trailing", ddim_eta=1.0)
    assert s.eta == 1.0 and "ddim_eta" not in s.schedule_config and "eta" not in s.schedule_config
    assert make_scheduler("ddim", 4, **s.schedule_config).eta == 0.0
    ddpm = make_scheduler("ddpm", None, ddim_eta=1.0)  # ignored by DDPM (and RFlow)
    assert not hasattr(ddpm, "eta")


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """A WDM generation checkpoint of the demo config's tiny network (16, 32, 32 channels) with seeded random
    weights (an untrained U-Net's output conv is zero) at 16^3."""
    root = tmp_path_factory.mktemp("eta_bundle")
    base = LEGACY_RECORDS["generation"]
    network = {**base["network"], "channels": [16, 32, 32], "num_res_blocks": 1, "norm_num_groups": 8}
    record = validate_record({**base, "image_size": [16, 16, 16], "spacing": [1.0, 1.0, 1.0], "network": network})
    gen = torch.Generator().manual_seed(0)
    state = {
        k: (torch.randn(v.shape, generator=gen) * 0.1 if v.is_floating_point() else v)
        for k, v in recorded_network(record).state_dict().items()
    }
    atomic_save({"model": state, "ema": state, "record": record}, root / "models" / "model.pt")
    return root


def _generate(repo_root, bundle, out, **override) -> tuple:
    wf = ConfigWorkflow(
        config_file=str(repo_root / "configs" / "inference.json"),
        meta_file=str(repo_root / "configs" / "metadata.json"),
        workflow_type="infer",
        bundle_root=str(bundle),
        output_dir=str(out),
        device="cpu",
        progress=False,
        save_png=False,
        sampler="ddim",
        num_inference_steps=2,
        timestep_spacing="trailing",
        **override,
    )
    wf.initialize()
    eta = wf.parser.get_parsed_content("noise_scheduler").eta
    wf.run()
    nib = pytest.importorskip("nibabel")
    return eta, np.stack([nib.load(str(f)).get_fdata() for f in sorted(out.glob("*.nii.gz"))])


def test_inference_config_passes_ddim_eta(repo_root, tiny_bundle, tmp_path):
    eta0, default = _generate(repo_root, tiny_bundle, tmp_path / "default", seed=2)
    eta1, noisy = _generate(repo_root, tiny_bundle, tmp_path / "eta1", seed=2, ddim_eta=1.0)
    _, again = _generate(repo_root, tiny_bundle, tmp_path / "again", seed=2, ddim_eta=1.0)
    assert (eta0, eta1) == (0.0, 1.0)
    assert default.shape == noisy.shape == (1, 16, 16, 16)
    assert not np.array_equal(default, noisy) and np.array_equal(noisy, again)  # seeded ancestral noise
    with pytest.raises(Exception) as refused:  # MONAI wraps the config expression's error
        _generate(repo_root, tiny_bundle, tmp_path / "bad", ddim_eta=1.5)
    chain, error = [], refused.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__ or error.__context__
    assert any("ddim_eta (DDIM's eta) must be in [0, 1]" in m for m in chain), chain
