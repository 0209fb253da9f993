"""Fused GroupNorm+SiLU (used with activation checkpointing): same values and gradients as MONAI's block."""

import copy

import torch
import torch.nn.functional as F
from benchmarking.timing import build_network
from torch import nn

from wdm_bundle.networks.fused_norm import _GroupNormSiLU, group_norm_silu, use_fused_group_norm_silu


def test_gradcheck_against_definition():
    norm = nn.GroupNorm(4, 12).double()
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 12, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: _GroupNormSiLU.apply(x, w, b, 4, 1e-5), (x, norm.weight, norm.bias))
    torch.testing.assert_close(group_norm_silu(x, norm), F.silu(norm(x)))


def test_half_precision_input_uses_float32_statistics():
    """Under autocast a block input can be bfloat16/float16: same output and gradients as the unfused ops."""
    norm = nn.GroupNorm(2, 4)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = (torch.randn(2, 4, 6, 6, 6) + 50).to(torch.bfloat16).requires_grad_()  # bf16 statistics would be off
    ref_x = x.detach().float().requires_grad_()
    out, ref = group_norm_silu(x, norm), F.silu(norm(ref_x))
    torch.testing.assert_close(out.float(), ref, rtol=0.02, atol=0.02)
    g = torch.randn_like(ref)
    wg, bg = torch.autograd.grad(ref, (norm.weight, norm.bias), g, retain_graph=True)
    ref.backward(g)
    dx, dw, db = torch.autograd.grad(out, (x, norm.weight, norm.bias), g.to(out.dtype))
    assert dx.dtype == torch.bfloat16 and dw.dtype == torch.float32
    torch.testing.assert_close(dx.float(), ref_x.grad, rtol=0.05, atol=0.05)
    torch.testing.assert_close(dw, wg, rtol=0.02, atol=0.05)
    torch.testing.assert_close(db, bg, rtol=0.02, atol=0.05)


def test_resnet_blocks_match_monai_with_random_weights():
    """MONAI zero-initialises each ResBlock's conv2, which would hide the norm's backward: randomise all weights."""
    ref = build_network("demo")
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.05)
    net = copy.deepcopy(ref)
    assert use_fused_group_norm_silu(net.backbone) > 5
    x, t = torch.randn(2, 8, 8, 8, 8), torch.tensor([3, 700])
    a, b = net(x, t), ref(x, t)
    torch.testing.assert_close(a, b)
    a.square().mean().backward()
    b.square().mean().backward()
    for (name, p), q in zip(net.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert list(net.state_dict()) == list(ref.state_dict())
