import pytest
import torch

from wdm_bundle.networks import PAPER_CHANNELS, WaveletDiffusionUNet

SMALL = dict(channels=(8, 16), num_res_blocks=1, norm_num_groups=8)


def test_wavelet_space_shapes():
    net = WaveletDiffusionUNet(**SMALL)
    assert (net.in_channels, net.out_channels) == (8, 8)
    out = net(torch.randn(2, 8, 8, 8, 8), torch.tensor([0, 999]))
    assert out.shape == (2, 8, 8, 8, 8)


def test_condition_and_extra_channels():
    net = WaveletDiffusionUNet(condition_channels=3, extra_channels=4, **SMALL)
    assert net.in_channels == 8 + 24 + 4 and net.out_channels == 8
    assert net(torch.randn(1, 36, 4, 4, 4), torch.tensor([5])).shape == (1, 8, 4, 4, 4)
    with pytest.raises(ValueError, match="expected 36 input channels"):
        net(torch.randn(1, 8, 4, 4, 4), torch.tensor([5]))


def test_paper_sizes():
    assert PAPER_CHANNELS[128] == (64, 128, 128, 256, 256)
    assert PAPER_CHANNELS[256] == (64, 128, 128, 256, 256, 256)
    net = WaveletDiffusionUNet()
    assert net.image_size_multiple == 32
    net.check_image_size((128, 128, 128))
    with pytest.raises(ValueError, match="not divisible by 32"):
        net.check_image_size((128, 128, 120), name="image_size")


def test_bad_arguments():
    with pytest.raises(ValueError, match="norm_num_groups"):
        WaveletDiffusionUNet(channels=(12, 16), norm_num_groups=8)
    with pytest.raises(ValueError, match="image_channels"):
        WaveletDiffusionUNet(image_channels=0, **SMALL)


def test_no_attention_anywhere_by_default():
    net = WaveletDiffusionUNet(**SMALL)
    names = [n for n, _ in net.named_modules()]
    assert not any("attention" in n and not isinstance(m, torch.nn.Identity) for n, m in net.named_modules()), names
    with_attn = WaveletDiffusionUNet(mid_block_attention=True, **SMALL)
    assert sum(p.numel() for p in with_attn.parameters()) > sum(p.numel() for p in net.parameters())
    mid = net.backbone.middle_block
    assert isinstance(mid.attention, torch.nn.Identity)
    assert {type(mid.resnet_1).__name__, type(mid.resnet_2).__name__} == {"DiffusionUNetResnetBlock"}


def test_backbone_factory_gives_each_network_its_own_backbone():
    from functools import partial

    from monai.networks.nets import DiffusionModelUNet

    make = partial(
        DiffusionModelUNet,
        spatial_dims=3,
        in_channels=8,
        out_channels=8,
        channels=(8, 8),
        attention_levels=(False, False),
        norm_num_groups=8,
        num_res_blocks=1,
    )
    a, b = WaveletDiffusionUNet(backbone=make), WaveletDiffusionUNet(backbone=make)
    assert a.backbone is not b.backbone
    with pytest.raises(ValueError, match="backbone takes 8 input channels but this wrapper feeds it 16"):
        WaveletDiffusionUNet(condition_channels=1, backbone=make)


def test_as_bool_reads_command_line_switches():
    from wdm_bundle.utils import as_bool

    assert [as_bool(v) for v in (True, "true", "True", "1", 1, "yes")] == [True] * 6
    assert [as_bool(v) for v in (False, "false", "FALSE", "0", 0, None, "no")] == [False] * 7
    with pytest.raises(ValueError, match="resume must be true or false"):
        as_bool("maybe", "resume")


def test_image_space_baseline_network():
    net = WaveletDiffusionUNet(space="image", **SMALL)
    assert (net.in_channels, net.out_channels, net.image_size_multiple) == (1, 1, 2)
    assert net.wavelet.coefficient_shape((1, 16, 16, 16)) == (1, 16, 16, 16)
    assert net(torch.randn(2, 1, 16, 16, 16), torch.tensor([3, 4])).shape == (2, 1, 16, 16, 16)
    assert WaveletDiffusionUNet(**SMALL).wavelet.coefficient_shape((1, 16, 16, 16)) == (8, 8, 8, 8)
    with pytest.raises(ValueError, match="space"):
        WaveletDiffusionUNet(space="fourier", **SMALL)
