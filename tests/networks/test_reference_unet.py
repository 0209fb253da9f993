"""`WDMUNet` (WDM additive skips, cWDM concatenation) against ARCHITECTURE.md section 3."""

import pytest
import torch

from wdm_bundle.networks import WaveletDiffusionUNet, WDMUNet
from wdm_bundle.networks.reference_blocks import ResBlock, timestep_embedding

TINY = dict(channels=(8, 16, 16), num_res_blocks=2, norm_num_groups=4)
C128 = (64, 128, 128, 256, 256)
C256 = (64, 128, 128, 256, 256, 256)
PUBLISHED = {
    "wdm_unet_128": dict(channels=C128),
    "wdm_unet_256": dict(channels=C256),
    "cwdm_unet": dict(in_channels=32, channels=C128, skip_mode="concat"),
}


def _meta(**kwargs) -> WDMUNet:
    with torch.device("meta"):
        return WDMUNet(**kwargs)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_keys_shapes_and_counts_equal_reference(name, reference_spec):
    spec = reference_spec(name)
    net = _meta(**PUBLISHED[name])
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == spec
    assert list(net.state_dict()) == list(spec)  # same order as the reference
    numel = sum(torch.Size(s).numel() for s in spec.values())
    assert sum(p.numel() for p in net.parameters()) == numel
    assert numel == {"wdm_unet_128": 57_914_824, "wdm_unet_256": 83_158_728, "cwdm_unet": 81_511_048}[name]


def test_block_layout_published_128():
    net = _meta(channels=C128)
    assert len(net.input_blocks) == 15 and len(net.output_blocks) == 15
    downs = [i for i, b in enumerate(net.input_blocks) if isinstance(b[0], ResBlock) and b[0].resample == "down"]
    assert downs == [3, 6, 9, 12]
    ups = [k for k, b in enumerate(net.output_blocks) if len(b) == 2]
    assert ups == [2, 5, 8, 11]
    for k in ups:  # ResBlock first, then the up block
        assert net.output_blocks[k][0].resample is None and net.output_blocks[k][1].resample == "up"
    assert [type(m).__name__ for m in net.out] == ["GroupNorm32", "SiLU", "Conv3d"]
    assert net.out[0].num_groups == 32 and net.out[0].eps == 1e-5 and net.out[2].out_channels == 8
    assert all(m.eps == 1e-5 for m in net.modules() if isinstance(m, torch.nn.GroupNorm))
    assert net.num_levels == 5 and net.size_multiple == 16


def test_layout_published_256_has_fifth_up_block():
    net = _meta(channels=C256)
    assert len(net.input_blocks) == 18
    assert [k for k, b in enumerate(net.output_blocks) if len(b) == 2] == [2, 5, 8, 11, 14]


def test_decoder_channels_additive_worked_example():
    """ARCHITECTURE.md worked example (ours_unet_128): the width changes one block earlier than with concat."""
    net = _meta(channels=C128)
    io = [(b[0].in_channels, b[0].out_channels) for b in net.output_blocks]
    assert io == [(256, 256)] * 4 + [(256, 128)] + [(128, 128)] * 5 + [(128, 64)] + [(64, 64)] * 4
    assert [net.output_blocks[k][1].in_channels for k in (2, 5, 8, 11)] == [256, 128, 128, 64]


def test_decoder_channels_concat_table():
    """ARCHITECTURE.md cWDM table of decoder ResBlock in -> out channels."""
    net = _meta(in_channels=32, channels=C128, skip_mode="concat")
    assert [b[0].in_channels for b in net.output_blocks] == [512] * 5 + [384, 384] + [256] * 4 + [192, 192, 128, 128]
    assert [b[0].out_channels for b in net.output_blocks] == [256] * 6 + [128] * 6 + [64] * 3
    assert all(b[0].skip_connection.__class__.__name__ == "Conv3d" for b in net.output_blocks)
    assert [net.output_blocks[k][1].in_channels for k in (2, 5, 8, 11)] == [256, 256, 128, 128]


def _record_spatial(net, x):
    sizes = {"in": [], "out": []}
    for name, blocks in (("in", net.input_blocks), ("out", net.output_blocks)):
        for b in blocks:
            b.register_forward_hook(lambda m, a, out, n=name: sizes[n].append(tuple(out.shape[2:])))
    y = net(x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device))
    return sizes, y


def test_spatial_sizes_worked_example_meta():
    """Every block's output size at the published input [1, 8, 64, 64, 64] (meta tensors, no compute)."""
    net = _meta(channels=C128)
    sizes, y = _record_spatial(net, torch.empty(1, 8, 64, 64, 64, device="meta"))
    per_level = [64, 32, 16, 8, 4]
    assert [s[0] for s in sizes["in"]] == [64] * 3 + [32] * 3 + [16] * 3 + [8] * 3 + [4] * 3
    assert [s[0] for s in sizes["out"]] == [4, 4, 8, 8, 8, 16, 16, 16, 32, 32, 32, 64, 64, 64, 64]
    assert sorted({s[0] for s in sizes["in"]}, reverse=True) == per_level
    assert y.shape == (1, 8, 64, 64, 64)


def test_spatial_sizes_cwdm_meta():
    net = _meta(in_channels=32, channels=C128, skip_mode="concat")
    sizes, y = _record_spatial(net, torch.empty(1, 32, 112, 112, 80, device="meta"))
    assert sizes["in"][-1] == (7, 7, 5) and sizes["in"][3] == (56, 56, 40)
    assert y.shape == (1, 8, 112, 112, 80)


@pytest.mark.parametrize("skip_mode", ["add", "concat"])
def test_forward_composition(skip_mode):
    """Every input block output (stem included) is pushed; LIFO pops merged before each output block; head last."""
    torch.manual_seed(0)
    net = WDMUNet(in_channels=8, skip_mode=skip_mode, **TINY).eval()
    rec = {"in": [], "mid": None, "out_in": [], "out_out": [], "head_in": None}
    for b in net.input_blocks:
        b.register_forward_hook(lambda m, a, out: rec["in"].append(out))
    net.middle_block.register_forward_hook(lambda m, a, out: rec.__setitem__("mid", out))
    for b in net.output_blocks:
        b.register_forward_pre_hook(lambda m, a: rec["out_in"].append(a[0]))
        b.register_forward_hook(lambda m, a, out: rec["out_out"].append(out))
    net.out.register_forward_pre_hook(lambda m, a: rec.__setitem__("head_in", a[0]))
    x = torch.randn(1, 8, 8, 8, 8)
    with torch.no_grad():
        y = net(x, torch.tensor([17]))
    assert len(rec["in"]) == 1 + 3 * 2 + 2  # stem, 2 ResBlocks per level, 2 down blocks
    skips = list(rec["in"])
    prev = rec["mid"]
    for k, merged in enumerate(rec["out_in"]):
        s = skips.pop()
        expected = (prev + s) / 2 if skip_mode == "add" else torch.cat([prev, s], dim=1)
        torch.testing.assert_close(merged, expected, rtol=0, atol=0)
        prev = rec["out_out"][k]
    assert not skips
    torch.testing.assert_close(rec["head_in"], prev, rtol=0, atol=0)
    torch.testing.assert_close(y, net.out(prev), rtol=0, atol=0)


def test_raw_timesteps_feed_time_embedding():
    torch.manual_seed(0)
    net = WDMUNet(**TINY).eval()
    seen = []
    net.time_embed.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    t = torch.tensor([999, 3])
    with torch.no_grad():
        net(torch.randn(2, 8, 4, 4, 4), t)
    torch.testing.assert_close(seen[0], timestep_embedding(t, 8), rtol=0, atol=0)  # width C, no rescaling
    assert net.time_embed[2].out_features == 32  # E = 4C


def test_2d_and_scalar_timestep():
    net = WDMUNet(spatial_dims=2, **TINY).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 8, 8, 12), torch.tensor(5)).shape == (2, 8, 8, 12)


def test_wrapper_accepts_backbone():
    net = WaveletDiffusionUNet(backbone=WDMUNet(**TINY))
    assert net.num_levels == 3 and net.image_size_multiple == 8
    cwdm = WaveletDiffusionUNet(condition_channels=3, backbone=WDMUNet(in_channels=32, skip_mode="concat", **TINY))
    assert cwdm.in_channels == 32
    with torch.no_grad():
        assert cwdm(torch.randn(1, 32, 4, 4, 4), torch.tensor([1])).shape == (1, 8, 4, 4, 4)
    with pytest.raises(ValueError, match="backbone takes 8 input channels"):
        WaveletDiffusionUNet(condition_channels=3, backbone=WDMUNet(**TINY))


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="norm_num_groups"):
        WDMUNet(channels=(8, 12), norm_num_groups=8)
    with pytest.raises(ValueError, match="num_res_blocks"):
        WDMUNet(channels=(8,), num_res_blocks=0, norm_num_groups=8)
    with pytest.raises(ValueError, match="in_channels"):
        WDMUNet(in_channels=0, channels=(8,), norm_num_groups=8)
    with pytest.raises(ValueError, match="channels"):
        WDMUNet(channels=(), norm_num_groups=8)
    with pytest.raises(ValueError, match="resblock_updown"):
        WDMUNet(channels=(8,), norm_num_groups=8, resblock_updown=False)
    with pytest.raises(ValueError, match="spatial_dims"):
        WDMUNet(spatial_dims=1, channels=(8,), norm_num_groups=8)
    with pytest.raises(ValueError, match="skip_mode"):
        WDMUNet(channels=(8,), norm_num_groups=8, skip_mode="mean")
    net = WDMUNet(**TINY)
    with pytest.raises(ValueError, match="not divisible by 4"):
        net(torch.randn(1, 8, 4, 4, 6), torch.tensor([0]))
    with pytest.raises(ValueError, match="context"):
        net(torch.randn(1, 8, 4, 4, 4), torch.tensor([0]), context=torch.zeros(1, 1, 1))
    with pytest.raises(ValueError, match=r"x must be \(N, 8"):
        net(torch.randn(1, 4, 4, 4, 4), torch.tensor([0]))
    with pytest.raises(ValueError, match="timesteps"):
        net(torch.randn(2, 8, 4, 4, 4), torch.tensor([0, 1, 2]))
