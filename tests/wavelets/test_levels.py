"""Multi-level wavelets (`wavelet_levels`): the L-level 3D Haar wavelet packet, its scaling, networks and records."""

import itertools
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from workflow_helpers import run_workflow, workflow

from wdm_bundle.diffusion import RePaintInferer, make_scheduler
from wdm_bundle.engines import atomic_save, load_record, read_record, recorded_network, training_record, validate_record
from wdm_bundle.networks import WaveletDiffusionUNet
from wdm_bundle.wavelets import HaarWavelet3D, dwt3d, dwt3d_levels, idwt3d, idwt3d_levels

TINY = dict(channels=(8, 8), num_res_blocks=1, norm_num_groups=8)


def _x(shape=(2, 2, 8, 12, 16), dtype=torch.float64, seed=0):
    return torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def _level2_matrix() -> np.ndarray:
    """The dense 64x64 analysis matrix of a 4x4x4 block, written out from the 1D Haar step.

    Row ``8*k1 + k2``: band k1 of the first level (bits depth, height, width; 0 = low-pass), then band k2 of
    the second; column ``16*z + 4*y + x`` of the block's voxels.
    """
    haar = np.array([[1.0, 1.0], [1.0, -1.0]]) / math.sqrt(2.0)

    def one_level(k, idx):  # 8x8 one-level entry: band k, voxel idx of a 2x2x2 block
        return np.prod([haar[(k >> s) & 1, (idx >> s) & 1] for s in (2, 1, 0)])

    w = np.zeros((64, 64))
    for k1, k2 in itertools.product(range(8), range(8)):
        for z, y, x in itertools.product(range(4), range(4), range(4)):
            coarse = 4 * (z // 2) + 2 * (y // 2) + (x // 2)  # position of the first-level coefficient
            fine = 4 * (z % 2) + 2 * (y % 2) + (x % 2)  # voxel within its 2x2x2 block
            w[8 * k1 + k2, 16 * z + 4 * y + x] = one_level(k2, coarse) * one_level(k1, fine)
    return w


def _old_level1_encode(x, lll_scale):
    """`HaarWavelet3D.encode` before multi-level wavelets, verbatim."""
    coeffs = dwt3d(x)
    b, c8, d, h, w = coeffs.shape
    scale = torch.ones(8, dtype=coeffs.dtype, device=coeffs.device)
    scale[0] = 1.0 / lll_scale
    return (coeffs.reshape(b, c8 // 8, 8, d, h, w) * scale.view(1, 1, 8, 1, 1, 1)).reshape(coeffs.shape)


def _old_level1_decode(coeffs, lll_scale):
    b, c8, d, h, w = coeffs.shape
    scale = torch.ones(8, dtype=coeffs.dtype, device=coeffs.device)
    scale[0] = lll_scale
    return idwt3d((coeffs.reshape(b, c8 // 8, 8, d, h, w) * scale.view(1, 1, 8, 1, 1, 1)).reshape(coeffs.shape))


def test_level2_round_trip_and_shape():
    x = _x()
    coder = HaarWavelet3D(3.0, levels=2)
    c = coder.encode(x)
    assert c.shape == (2, 128, 2, 3, 4) and coder.coefficient_shape((2, 8, 12, 16)) == (128, 2, 3, 4)
    assert coder.bands == 64 and coder.scale == 4 and coder.levels == 2
    torch.testing.assert_close(coder.decode(c), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(idwt3d_levels(dwt3d_levels(x, 2), 2), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(dwt3d_levels(x, 2), dwt3d(dwt3d(x)), rtol=0, atol=0)
    x3 = _x((1, 1, 8, 16, 24))
    coder3 = HaarWavelet3D(3.0, levels=3)
    assert coder3.encode(x3).shape == (1, 512, 1, 2, 3)
    torch.testing.assert_close(coder3.decode(coder3.encode(x3)), x3, rtol=0, atol=1e-12)


def test_level2_is_the_dense_kronecker_matrix_per_block_and_orthonormal():
    w = _level2_matrix()
    np.testing.assert_allclose(w @ w.T, np.eye(64), rtol=0, atol=1e-14)
    x = _x()
    y = dwt3d_levels(x, 2).numpy()
    b, c, depth, height, width = x.shape
    blocks = x.numpy().reshape(b, c, depth // 4, 4, height // 4, 4, width // 4, 4).transpose(0, 1, 2, 4, 6, 3, 5, 7)
    ref = np.einsum("kv,bcdhwv->bckdhw", w, blocks.reshape(b, c, depth // 4, height // 4, width // 4, 64))
    np.testing.assert_allclose(y, ref.reshape(b, 64 * c, depth // 4, height // 4, width // 4), rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.from_numpy(y).pow(2).sum(), x.pow(2).sum(), rtol=1e-14, atol=0)
    unscaled = HaarWavelet3D(lll_scale=1.0, levels=2)
    torch.testing.assert_close(unscaled.encode(x), torch.from_numpy(y), rtol=0, atol=0)


def test_band_zero_is_the_scaled_block_mean_times_8():
    x = _x()
    c = HaarWavelet3D(3.0, levels=2).encode(x)
    means = torch.nn.functional.avg_pool3d(x, 4)
    for ch in range(2):
        torch.testing.assert_close(c[:, 64 * ch], means[:, ch] * 8 / 9, rtol=0, atol=1e-12)


def test_scaling_is_the_kronecker_product_of_the_level_scales():
    div = HaarWavelet3D(3.0, levels=2).band_divisors().reshape(8, 8)
    assert div[0, 0] == 9.0
    assert torch.all(div[0, 1:] == 3.0) and torch.all(div[1:, 0] == 3.0) and torch.all(div[1:, 1:] == 1.0)
    assert torch.equal(HaarWavelet3D(3.0).band_divisors(), torch.tensor([3.0] + [1.0] * 7, dtype=torch.float64))
    div3 = HaarWavelet3D(2.0, levels=3).band_divisors().reshape(8, 8, 8)
    assert div3[0, 0, 0] == 8.0 and div3[0, 5, 0] == 4.0 and div3[3, 0, 7] == 2.0 and div3[1, 2, 3] == 1.0
    x = _x()
    coder = HaarWavelet3D(3.0, levels=2)
    ref = dwt3d_levels(x, 2).reshape(2, 2, 64, 2, 3, 4) / coder.band_divisors().view(1, 1, 64, 1, 1, 1)
    torch.testing.assert_close(coder.encode(x), ref.reshape(2, 128, 2, 3, 4), rtol=1e-15, atol=0)
    assert HaarWavelet3D(1.0, levels=2).band_divisors().eq(1.0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_level_1_is_unchanged(dtype):
    x = _x((2, 3, 8, 10, 12), dtype=dtype)
    for coder in (HaarWavelet3D(3.0), HaarWavelet3D(3.0, levels=1), HaarWavelet3D(lll_scale=2.5, levels=1)):
        c = coder.encode(x)
        assert torch.equal(c, _old_level1_encode(x, coder.lll_scale))
        assert torch.equal(coder.decode(c), _old_level1_decode(c, coder.lll_scale))
        assert coder.bands == 8 and coder.scale == 2
    assert HaarWavelet3D.bands == 8 and HaarWavelet3D.scale == 2


@pytest.mark.parametrize("levels", [0, 4, 2.0, True, "2", None])
def test_invalid_levels_are_refused(levels):
    with pytest.raises(ValueError, match=f"levels must be one of \\[1, 2, 3\\], got {levels!r}"):
        HaarWavelet3D(3.0, levels=levels)


def test_torchscript_level2_equals_eager():
    coder = HaarWavelet3D(3.0, levels=2)
    scripted = torch.jit.script(coder)
    for dtype in (torch.float32, torch.float64):
        x = _x(dtype=dtype, seed=3)
        c = coder.encode(x)
        assert torch.equal(scripted.encode(x), c) and torch.equal(scripted(x), coder(x))
        assert torch.equal(scripted.decode(c), coder.decode(c))
        xg, cg = x.clone().requires_grad_(), c.clone().requires_grad_()  # the matrix form
        assert torch.equal(scripted.encode(xg), coder.encode(xg)) and torch.equal(scripted.decode(cg), coder.decode(cg))
    with pytest.raises(torch.jit.Error, match="divisible by 4"):
        scripted.encode(torch.zeros(1, 1, 6, 8, 8))
    with pytest.raises(ValueError, match=r"divisible by 4, got \(6, 8, 8\)"):
        coder.encode(torch.zeros(1, 1, 6, 8, 8))
    assert "levels=2" in repr(coder)


def test_network_with_two_levels():
    net = WaveletDiffusionUNet(wavelet_levels=2, **TINY)
    assert net.in_channels == 64 and net.out_channels == 64 and net.image_size_multiple == 8
    assert net.wavelet.levels == 2 and net.config["wavelet_levels"] == 2
    image = _x((1, 1, 16, 8, 24), dtype=torch.float32)
    coeffs = net.wavelet.encode(image)
    assert coeffs.shape == (1, 64, 4, 2, 6)
    with torch.no_grad():
        assert net(coeffs, 5).shape == (1, 64, 4, 2, 6)
    rebuilt = WaveletDiffusionUNet.from_config(net.config)
    assert rebuilt.wavelet.levels == 2 and rebuilt.config == net.config
    rebuilt.load_state_dict(net.state_dict(), strict=True)
    cond = WaveletDiffusionUNet(condition_channels=2, extra_channels=3, wavelet_levels=2, **TINY)
    assert cond.in_channels == 64 * 3 + 3 and cond.out_channels == 64
    net.check_image_size((16, 8, 24))
    with pytest.raises(ValueError, match=r"not divisible by 8 \(2 DWT levels and 1 U-Net downsamplings\)"):
        net.check_image_size((16, 6, 24))
    with pytest.raises(ValueError, match=r"not divisible by 4 \(1 DWT level and 1 U-Net"):
        WaveletDiffusionUNet(**TINY).check_image_size((6, 8, 8))
    with pytest.raises(ValueError, match="wavelet_levels=2 needs space='wavelet'"):
        WaveletDiffusionUNet(space="image", wavelet_levels=2, **TINY)
    with pytest.raises(ValueError, match="wavelet_levels must be one of"):
        WaveletDiffusionUNet(wavelet_levels=4, **TINY)
    assert WaveletDiffusionUNet(**TINY).config["wavelet_levels"] == 1


def test_repaint_checks_sizes_against_the_coder():
    scheduler = make_scheduler("ddim", 4, num_train_timesteps=20)
    inferer = RePaintInferer(scheduler, jump_length=1, jump_n_sample=2, wavelet=HaarWavelet3D(levels=2))
    image, mask = torch.zeros(1, 1, 8, 8, 6), torch.zeros(1, 1, 8, 8, 6)
    with pytest.raises(ValueError, match="divisible by 4"):
        inferer.check_inputs(image, mask)
    assert inferer.check_inputs(torch.zeros(1, 1, 8, 8, 4), torch.zeros(1, 1, 8, 8, 4)).shape == (1, 1, 8, 8, 4)


def _record(levels):
    return training_record(
        task="generation",
        diffusion="ddpm",
        scheduler=make_scheduler("ddpm", num_train_timesteps=50),
        network=WaveletDiffusionUNet(wavelet_levels=levels, **TINY),
        data_range=(-1, 1),
        image_size=(16, 16, 16),
        modality="t1n",
    )


def test_records_hold_the_levels_and_refuse_bad_ones(tmp_path):
    record = _record(2)
    assert record["wavelet_levels"] == 2 and record["network"]["wavelet_levels"] == 2
    assert recorded_network(record).wavelet.levels == 2
    path = tmp_path / "model.pt"
    atomic_save({"model": {}, "record": record}, path)
    assert read_record(path)["wavelet_levels"] == 2
    assert load_record(path, "generation", {"wavelet_levels": 2})["wavelet_levels"] == 2
    with pytest.raises(ValueError, match="wavelet_levels: 1 given, 2 recorded"):
        load_record(path, "generation", {"wavelet_levels": 1})
    for bad in (4, 0, 2.0, True):
        with pytest.raises(ValueError, match="wavelet_levels must be an integer in"):
            validate_record({**record, "wavelet_levels": bad, "network": {**record["network"], "wavelet_levels": bad}})
    with pytest.raises(ValueError, match="network wavelet_levels 2 differs from wavelet_levels 1"):
        validate_record({**record, "wavelet_levels": 1})
    old = _record(1)  # a record written before multi-level wavelets: no key anywhere, one level
    del old["wavelet_levels"], old["network"]["wavelet_levels"]
    assert validate_record(old)["wavelet_levels"] == 1 and recorded_network(validate_record(old)).wavelet.levels == 1


@pytest.mark.slow
def test_two_level_training_and_inference_through_the_bundle_configs(repo_root, demo_data, tmp_path):
    """A few iterations of `train.json` with ``wavelet_levels=2``; inference rebuilds the 2-level network from the
    checkpoint's record and writes a full-size sample."""
    run_workflow(
        repo_root,
        ["train.json", "demo.json"],
        "train",
        bundle_root=str(tmp_path),
        dataset_dir=str(demo_data),
        datalist=str(demo_data / "datalist.json"),
        wavelet_levels=2,
        num_iterations=2,
        epoch_length=2,
        save_every=2,
        preview_every=100,
        batch_size=2,
    )
    ckpts = sorted((tmp_path / "models").glob("*.pt"))
    assert ckpts, list(tmp_path.rglob("*"))
    record = read_record(ckpts[0])
    assert record["wavelet_levels"] == 2 and record["network"]["wavelet_levels"] == 2
    infer = workflow(
        repo_root,
        ["inference.json"],
        "infer",
        bundle_root=str(tmp_path),
        num_samples=1,
        batch_size=1,
        num_inference_steps=2,
        progress=False,
    )
    network = infer.parser.get_parsed_content("network")
    assert network.wavelet.levels == 2 and network.in_channels == 64
    assert infer.parser.get_parsed_content("generator").image_shape == (1, 32, 32, 32)
    infer.run()
    sample = tmp_path / "samples" / "sample_0000.nii.gz"
    assert sample.is_file()
    assert nib.load(str(sample)).shape[-3:] == (32, 32, 32)
