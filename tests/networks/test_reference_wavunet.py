"""`WavUNet` and its Haar blocks against ARCHITECTURE.md sections 2b, 4 and 6 (PyWavelets as the Haar oracle)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pywt = pytest.importorskip("pywt")

from wdm_bundle.networks import WaveletDiffusionUNet, WavUNet  # noqa: E402
from wdm_bundle.networks.wavunet import WaveletDownsample, WaveletResBlock, haar_bands, haar_merge  # noqa: E402
from wdm_bundle.wavelets import PYWT_KEYS  # noqa: E402

TINY = dict(channels=(8, 16), num_res_blocks=2, norm_num_groups=4)
C128 = (64, 128, 128, 256, 256)


def _pywt_bands(x: torch.Tensor) -> torch.Tensor:
    """(N, C, D, H, W) -> (N, 8, C, ...) with pywt.dwtn over the spatial axes, keys aaa..ddd in order."""
    coeffs = pywt.dwtn(x.double().numpy(), "haar", axes=(2, 3, 4))
    return torch.from_numpy(np.stack([coeffs[k] for k in PYWT_KEYS], axis=1))


def _pywt_merge(bands: torch.Tensor) -> torch.Tensor:
    coeffs = {k: bands[:, i].double().numpy() for i, k in enumerate(PYWT_KEYS)}
    return torch.from_numpy(pywt.idwtn(coeffs, "haar", axes=(2, 3, 4)))


def test_haar_bands_band_major_as_pywt():
    x = torch.randn(2, 3, 6, 8, 10, dtype=torch.float64)  # anisotropic, as the spec's check
    bands = haar_bands(x)
    assert bands.shape == (2, 8, 3, 3, 4, 5)
    torch.testing.assert_close(bands, _pywt_bands(x))
    torch.testing.assert_close(haar_merge(bands), x)
    # flattened: channel k*C + c is band k of channel c (the reference's cat of whole bands)
    torch.testing.assert_close(bands.flatten(1, 2)[:, 1 * 3 + 2], _pywt_bands(x)[:, 1, 2])


def _emb_and_out(block, x, h, emb):
    sd = block.state_dict()
    e = F.linear(F.silu(emb), sd["emb_layers.1.weight"], sd["emb_layers.1.bias"])[:, :, None, None, None]
    groups = block.in_layers[0].num_groups
    h = F.silu(F.group_norm(h + e, groups, sd["out_layers.0.weight"], sd["out_layers.0.bias"], 1e-5))
    return x + F.conv3d(h, sd["out_layers.3.weight"], sd["out_layers.3.bias"], padding=1)


def _conv_in(block, x):
    sd = block.state_dict()
    a = F.silu(F.group_norm(x, block.in_layers[0].num_groups, sd["in_layers.0.weight"], sd["in_layers.0.bias"], 1e-5))
    return F.conv3d(a, sd["in_layers.2.weight"], sd["in_layers.2.bias"], padding=1)


def test_down_block_hand_formula():
    """Resample after conv_in: h <- LLL(h)/3, x <- LLL(x)/3; the highs of h (before the emb add) go out."""
    torch.manual_seed(0)
    block = WaveletResBlock(8, 8, 12, 4, resample="down").double()
    x, emb = torch.randn(2, 8, 4, 6, 8, dtype=torch.float64), torch.randn(2, 12, dtype=torch.float64)
    y, highs = block(x, emb)
    hb = _pywt_bands(_conv_in(block, x))
    torch.testing.assert_close(highs, hb[:, 1:])
    torch.testing.assert_close(y, _emb_and_out(block, _pywt_bands(x)[:, 0] / 3, hb[:, 0] / 3, emb))


def test_up_block_hand_formula():
    """h <- IDWT(3 conv_in(..), highs), x <- IDWT(3 x, highs), the same highs in both."""
    torch.manual_seed(1)
    block = WaveletResBlock(8, 8, 12, 4, resample="up").double()
    x, emb = torch.randn(2, 8, 2, 3, 4, dtype=torch.float64), torch.randn(2, 12, dtype=torch.float64)
    highs = torch.randn(2, 7, 8, 2, 3, 4, dtype=torch.float64)
    y = block(x, emb, highs)
    assert y.shape == (2, 8, 4, 6, 8)
    h = _pywt_merge(torch.cat([3 * _conv_in(block, x)[:, None], highs], 1))
    x_up = _pywt_merge(torch.cat([3 * x[:, None], highs], 1))
    torch.testing.assert_close(y, _emb_and_out(block, x_up, h, emb))
    with pytest.raises(ValueError, match="highs"):
        block(x, emb)


def test_wavelet_downsample_all_bands_over_3():
    torch.manual_seed(2)
    layer = WaveletDownsample(3, 8).double()
    assert set(layer.state_dict()) == {"conv.weight", "conv.bias"} and layer.conv.in_channels == 24
    pyr, h = torch.randn(1, 3, 4, 4, 6, dtype=torch.float64), torch.randn(1, 8, 2, 2, 3, dtype=torch.float64)
    bands = _pywt_bands(pyr).flatten(1, 2)  # [LLL(all channels), LLH(...), ...]
    expected = F.conv3d(bands / 3, layer.conv.weight, layer.conv.bias, padding=1) + h
    torch.testing.assert_close(layer(pyr, h), expected)


def test_keys_shapes_counts_equal_reference(reference_spec):
    spec = reference_spec("wdm_wavunet_128")
    with torch.device("meta"):
        net = WavUNet(channels=C128)
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == spec
    assert list(net.state_dict()) == list(spec)
    assert sum(torch.Size(s).numel() for s in spec.values()) == 98_993_416
    assert sum(p.numel() for p in net.parameters()) == 89_706_056  # shared blocks counted once


def test_layout_published_128():
    with torch.device("meta"):
        net = WavUNet(channels=C128)
    kinds = ["stem"] + [
        type(b[0]).__name__ if b[0].__class__ is WaveletDownsample else (b[0].resample or "res")
        for b in net.input_blocks[1:]
    ]
    assert kinds == ["stem"] + ["res", "res", "down", "WaveletDownsample"] * 5
    assert [net.input_blocks[i][0].conv.in_channels for i in (4, 8, 12, 16, 20)] == [64, 512, 1024, 1024, 2048]
    assert [net.input_blocks[i][0].conv.out_channels for i in (4, 8, 12, 16, 20)] == [64, 128, 128, 256, 256]
    for k in (2, 5, 8, 11, 14):  # shared module, then the up block (level 0 included)
        assert net.output_blocks[k][0] is net.output_blocks[k - 1][0]
        assert net.output_blocks[k][1].resample == "up"
    assert len(net.out_res) == 2 and all(b[0].resample is None for b in net.out_res)
    assert net.num_levels == 6 and net.size_multiple == 32


def test_spatial_sizes_meta():
    with torch.device("meta"):
        net = WavUNet(channels=C128)
    seen = []
    net.middle_block.register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape)))
    y = net(torch.empty(1, 8, 64, 64, 64, device="meta"), torch.zeros(1, dtype=torch.long, device="meta"))
    assert seen == [(1, 256, 2, 2, 2)] and y.shape == (1, 8, 64, 64, 64)


def test_forward_routing():
    """Residual pyramid, highs of level l to the up block of level l, shared block applied twice, out_res, head."""
    torch.manual_seed(0)
    net = WavUNet(**TINY).eval()
    rec = {
        "down_highs": [],
        "wd_args": [],
        "wd_out": [],
        "down_out": [],
        "up_highs": [],
        "shared_calls": {},
        "out_in": None,
        "out_res_out": [],
    }

    def record_down(module, args, out):
        rec["down_out"].append(out[0])
        rec["down_highs"].append(out[1])

    def count_call(module, args, out):
        rec["shared_calls"][id(module)] += 1

    for block in net.input_blocks[1:]:
        layer = block[0]
        if isinstance(layer, WaveletDownsample):
            layer.register_forward_pre_hook(lambda m, a: rec["wd_args"].append(a))
            layer.register_forward_hook(lambda m, a, out: rec["wd_out"].append(out))
        elif layer.resample == "down":
            layer.register_forward_hook(record_down)
    for block in net.output_blocks:
        for layer in block:
            if layer.resample == "up":
                layer.register_forward_pre_hook(lambda m, a: rec["up_highs"].append(a[2]))
        if len(block) == 2:
            rec["shared_calls"][id(block[0])] = 0
            block[0].register_forward_hook(count_call)
    net.out_res[1].register_forward_hook(lambda m, a, out: rec["out_res_out"].append(out))
    net.out.register_forward_pre_hook(lambda m, a: rec.__setitem__("out_in", a[0]))
    x = torch.randn(1, 8, 8, 8, 8)
    with torch.no_grad():
        y = net(x, torch.tensor([42]))
    # level 0 gets the network input as pyramid, level l the previous WaveletDownsample output; h is the down output
    torch.testing.assert_close(rec["wd_args"][0][0], x, rtol=0, atol=0)
    torch.testing.assert_close(rec["wd_args"][1][0], rec["wd_out"][0], rtol=0, atol=0)
    for args, down in zip(rec["wd_args"], rec["down_out"]):
        torch.testing.assert_close(args[1], down, rtol=0, atol=0)
    # decoder (deepest first) uses the encoder highs of the same level
    assert len(rec["up_highs"]) == 2
    for up, down in zip(rec["up_highs"], reversed(rec["down_highs"])):
        assert up is down
    assert list(rec["shared_calls"].values()) == [2, 2]
    torch.testing.assert_close(rec["out_in"], rec["out_res_out"][0], rtol=0, atol=0)
    assert y.shape == x.shape


def test_wrapper_image_multiple():
    net = WaveletDiffusionUNet(backbone=WavUNet(**TINY))
    assert net.image_size_multiple == 8  # 1 DWT + 2 Haar levels
    with torch.no_grad():
        assert net(torch.randn(1, 8, 4, 4, 8), torch.tensor([3])).shape == (1, 8, 4, 4, 8)


def test_bad_arguments():
    with pytest.raises(ValueError, match="spatial_dims"):
        WavUNet(spatial_dims=2, **TINY)
    with pytest.raises(ValueError, match="wavelet_scale"):
        WavUNet(wavelet_scale=0.0, **TINY)
    with pytest.raises(ValueError, match="num_res_blocks=1"):
        WavUNet(channels=(8, 16), num_res_blocks=1, norm_num_groups=4)
    with pytest.raises(ValueError, match="not divisible by 4"):
        WavUNet(**TINY)(torch.randn(1, 8, 4, 4, 6), torch.tensor([0]))
