"""`generate`: n samples of a run with a seed, exactly what `VolumeGenerator` writes."""

import nibabel as nib
import numpy as np
import pytest
import torch

from wdm_bundle.diffusion import WaveletDiffusionInferer, make_scheduler
from wdm_bundle.engines import VolumeGenerator, generate, sample_seed
from wdm_bundle.networks import WaveletDiffusionUNet

SHAPE = (1, 16, 16, 16)


def _net():
    """A small network with random weights everywhere (an initialised one outputs zeros: every sample 0)."""
    net = WaveletDiffusionUNet(image_channels=1, channels=(8, 8), num_res_blocks=1, norm_num_groups=4).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return net


@pytest.mark.parametrize("sampler, batch_size", [("ddpm", 2), ("ddim", 3)])
def test_the_runner_writes_exactly_what_generate_returns(tmp_path, sampler, batch_size):
    net = _net()
    scheduler = make_scheduler(sampler, 3)
    inferer = WaveletDiffusionInferer(scheduler)
    written = VolumeGenerator(
        net,
        inferer,
        scheduler,
        SHAPE,
        tmp_path,
        num_samples=3,
        batch_size=batch_size,
        seed=11,
        save_png=False,
        progress=False,
    ).run()
    for first in range(0, 3, batch_size):  # the runner's batches: DDPM's per-step noise is drawn per batch
        n = min(batch_size, 3 - first)
        images = generate(net, inferer, n, 11, SHAPE, first_index=first)
        assert images.shape == (n, *SHAPE) and images.dtype == torch.float32
        for i, image in enumerate(images):
            saved = nib.load(written[first + i]).get_fdata(dtype=np.float32)
            np.testing.assert_array_equal(saved, image[0].numpy())  # bit-identical


def test_sample_i_depends_only_on_seed_and_i():
    net, inferer = _net(), WaveletDiffusionInferer(make_scheduler("ddim", 2))
    batch = generate(net, inferer, 3, 5, SHAPE)
    assert batch.shape == (3, *SHAPE)
    for i in range(3):  # DDIM: the same sample in any batch
        torch.testing.assert_close(generate(net, inferer, 1, 5, SHAPE, first_index=i)[0], batch[i], rtol=0, atol=1e-5)
    torch.testing.assert_close(generate(net, inferer, 3, 5, SHAPE), batch, rtol=0, atol=0)  # reproducible
    assert not torch.equal(batch[0], batch[1])  # distinct samples
    assert not torch.equal(generate(net, inferer, 1, 6, SHAPE)[0], batch[0])  # the seed is used


def test_the_seed_contract():
    """Initial noise of sample i: CPU randn seeded by sample_seed(seed, i); DDPM's step noise by
    sample_seed(seed, first index, stream=1): the contract that keeps earlier samples reproducible."""
    net, inferer = _net(), WaveletDiffusionInferer(make_scheduler("ddpm", 3))
    shape = net.wavelet.coefficient_shape(SHAPE)
    noise = torch.stack(
        [torch.randn(shape, generator=torch.Generator().manual_seed(sample_seed(9, i))) for i in (4, 5)]
    )
    expected = inferer.sample(
        noise, net, generator=torch.Generator().manual_seed(sample_seed(9, 4, stream=1)), verbose=False
    )
    torch.testing.assert_close(generate(net, inferer, 2, 9, SHAPE, first_index=4), expected, rtol=0, atol=0)


def test_generate_checks_its_arguments():
    net, inferer = _net(), WaveletDiffusionInferer(make_scheduler("ddim", 2))
    with pytest.raises(ValueError, match="num_samples >= 1"):
        generate(net, inferer, 0, 0, SHAPE)
    with pytest.raises(ValueError, match="first_index >= 0"):
        generate(net, inferer, 1, 0, SHAPE, first_index=-1)
