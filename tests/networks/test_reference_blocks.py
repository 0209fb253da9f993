"""Reference building blocks against the specification (ARCHITECTURE.md sections 1-2), by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from wdm_bundle.networks.reference_blocks import GroupNorm32, ResBlock, make_time_embed, timestep_embedding


def test_timestep_embedding_hand_values():
    t = torch.tensor([0, 1, 7, 999])
    emb = timestep_embedding(t, 64)
    assert emb.shape == (4, 64) and emb.dtype == torch.float32
    # t=0: cos half is 1, sin half is 0
    assert torch.equal(emb[0, :32], torch.ones(32)) and torch.equal(emb[0, 32:], torch.zeros(32))
    # t=1: first frequency is 1 -> cos(1), sin(1); literals
    assert emb[1, 0].item() == pytest.approx(0.5403023, abs=1e-6)
    assert emb[1, 32].item() == pytest.approx(0.8414710, abs=1e-6)
    # freq_k = exp(-ln(10000) k / 32) = 10000 ** (-k/32); cos half first, then sin
    for row, step in ((1, 1), (2, 7), (3, 999)):
        for k in range(32):
            arg = step * 10000 ** (-k / 32)
            assert emb[row, k].item() == pytest.approx(math.cos(arg), abs=2e-4), (step, k)
            assert emb[row, 32 + k].item() == pytest.approx(math.sin(arg), abs=2e-4), (step, k)


def test_timestep_embedding_odd_and_scalar():
    emb = timestep_embedding(torch.tensor([3, 5]), 7)
    assert emb.shape == (2, 7) and torch.equal(emb[:, -1], torch.zeros(2))
    assert emb[0, 0].item() == pytest.approx(math.cos(3.0), abs=1e-6)
    assert timestep_embedding(torch.tensor(4), 8).shape == (1, 8)


def test_time_mlp_has_no_final_activation():
    mlp = make_time_embed(8, 32)
    assert [type(m).__name__ for m in mlp] == ["Linear", "SiLU", "Linear"]
    assert sorted(mlp.state_dict()) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    x = torch.randn(3, 8)
    expected = F.linear(F.silu(F.linear(x, mlp[0].weight, mlp[0].bias)), mlp[2].weight, mlp[2].bias)
    torch.testing.assert_close(mlp(x), expected)
    assert (mlp(x) < 0).any()  # no SiLU/ReLU at the end


def test_groupnorm_fp32_and_eps():
    gn = GroupNorm32(4, 8)
    assert gn.eps == 1e-5 and gn.num_groups == 4
    x = (torch.randn(2, 8, 4, 4, 4) * 5 + 3).to(torch.bfloat16)
    out = gn(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, F.group_norm(x.float(), 4, gn.weight, gn.bias, 1e-5).to(torch.bfloat16))


def _hand_resblock(block: ResBlock, x, emb, resample=None):
    """The ResBlock of ARCHITECTURE.md section 2 / 2a written with functional ops and reference key names."""
    sd = block.state_dict()
    g = block.in_layers[0].num_groups
    conv = F.conv3d if x.ndim == 5 else F.conv2d
    a = F.silu(F.group_norm(x, g, sd["in_layers.0.weight"], sd["in_layers.0.bias"], 1e-5))
    if resample == "down":  # after the first activation, before conv_in; identity branch too
        pool = F.avg_pool3d if x.ndim == 5 else F.avg_pool2d
        a, x = pool(a, 2), pool(x, 2)
    elif resample == "up":  # each voxel repeated 2x per axis
        for d in range(2, x.ndim):
            a, x = a.repeat_interleave(2, d), x.repeat_interleave(2, d)
    h = conv(a, sd["in_layers.2.weight"], sd["in_layers.2.bias"], padding=1)
    e = F.linear(F.silu(emb), sd["emb_layers.1.weight"], sd["emb_layers.1.bias"])
    h = h + e.reshape(*e.shape, *[1] * (x.ndim - 2))
    h = F.silu(F.group_norm(h, g, sd["out_layers.0.weight"], sd["out_layers.0.bias"], 1e-5))
    h = conv(h, sd["out_layers.3.weight"], sd["out_layers.3.bias"], padding=1)
    skip = conv(x, sd["skip_connection.weight"], sd["skip_connection.bias"]) if "skip_connection.weight" in sd else x
    return skip + h


@pytest.mark.parametrize(
    "spatial_dims, c_in, c_out, resample",
    [(3, 8, 8, None), (3, 8, 16, None), (3, 8, 8, "down"), (3, 8, 8, "up"), (2, 8, 16, None), (2, 8, 8, "down")],
)
def test_resblock_matches_hand_formula(spatial_dims, c_in, c_out, resample):
    torch.manual_seed(0)
    block = ResBlock(spatial_dims, c_in, c_out, embed_channels=12, norm_num_groups=4, resample=resample).eval()
    x = torch.randn(2, c_in, *[4] * spatial_dims)
    emb = torch.randn(2, 12)
    out = block(x, emb)
    factor = {None: 1, "down": 0.5, "up": 2}[resample]
    assert out.shape == (2, c_out, *[int(4 * factor)] * spatial_dims)
    torch.testing.assert_close(out, _hand_resblock(block, x, emb, resample), atol=1e-5, rtol=1e-5)


def test_resblock_keys():
    plain = ResBlock(3, 8, 8, 12, norm_num_groups=4)
    wide = ResBlock(3, 8, 16, 12, norm_num_groups=4)
    expected = {
        f"{m}.{p}"
        for m in ("in_layers.0", "in_layers.2", "emb_layers.1", "out_layers.0", "out_layers.3")
        for p in ("weight", "bias")
    }
    assert set(plain.state_dict()) == expected
    assert set(wide.state_dict()) == expected | {"skip_connection.weight", "skip_connection.bias"}
    assert wide.skip_connection.kernel_size == (1, 1, 1)
    assert isinstance(plain.out_layers[2], torch.nn.Dropout)


def test_resblock_bad_arguments():
    with pytest.raises(ValueError, match="out_channels"):
        ResBlock(3, 8, 10, 12, norm_num_groups=4)
    with pytest.raises(ValueError, match="in_channels=8 != out_channels=16"):
        ResBlock(3, 8, 16, 12, norm_num_groups=4, resample="down")
    with pytest.raises(ValueError, match="spatial_dims"):
        ResBlock(1, 8, 8, 12, norm_num_groups=4)
    with pytest.raises(ValueError, match="resample"):
        ResBlock(3, 8, 8, 12, norm_num_groups=4, resample="sideways")
