"""Memory and speed switches: activation checkpointing, autocast dtype, torch.compile."""

import copy

import pytest
import torch
from benchmarking.timing import peak_memory

from wdm_bundle.networks import WaveletDiffusionUNet, build_reference_network
from wdm_bundle.networks.wavelet_unet import apply_activation_checkpointing
from wdm_bundle.utils import autocast_dtype

KW = dict(channels=(16, 32, 32), num_res_blocks=2, norm_num_groups=8)


def _net(checkpointing, **kw):
    torch.manual_seed(0)
    return WaveletDiffusionUNet(activation_checkpointing=checkpointing, **{**KW, **kw})


def _loss(net, x, t):
    return net(x, t).pow(2).mean()


def _batch(n=8):
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 8, n, n, n, generator=g), torch.tensor([10, 900])


def _nonzero_head(net):
    """The output conv is zero-initialised; give it weights so gradients reach every layer."""
    with torch.no_grad():
        for p in net.backbone.out.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.1)


def test_checkpointing_keeps_weights_outputs_and_gradients():
    plain, ckpt = _net(False), _net(True)
    assert list(plain.state_dict()) == list(ckpt.state_dict())
    _nonzero_head(plain)
    ckpt.load_state_dict(plain.state_dict())  # plain keys load into the wrapped network and back
    plain.load_state_dict(ckpt.state_dict())
    x, t = _batch()
    loss_plain, loss_ckpt = _loss(plain, x, t), _loss(ckpt, x, t)
    torch.testing.assert_close(loss_plain, loss_ckpt)
    loss_plain.backward()
    loss_ckpt.backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert p.grad is not None and q.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)
    copy.deepcopy(ckpt)  # the EMA handler deep-copies the network


def test_checkpointing_halves_training_peak_memory():
    """Peak bytes of one forward+backward (profiler allocation trace, not time), paper depth of 2 res blocks."""
    x, t = _batch(16)
    peaks = {}
    for checkpointing in (False, True):
        net = _net(checkpointing)
        _nonzero_head(net)
        peaks[checkpointing] = peak_memory(lambda: _loss(net, x, t).backward())
    print(f"training peak: {peaks[False] / 1e6:.1f} MB plain, {peaks[True] / 1e6:.1f} MB checkpointed")
    assert peaks[True] < 0.5 * peaks[False], peaks


def test_checkpointing_reference_backbone_and_bad_backbone():
    net = build_reference_network("wdm_unet_128")
    keys = list(net.state_dict())
    assert apply_activation_checkpointing(net.backbone) > 10
    assert list(net.state_dict()) == keys
    with pytest.raises(ValueError, match="no residual or attention block"):
        apply_activation_checkpointing(torch.nn.Sequential(torch.nn.Conv3d(1, 1, 1)))


def test_checkpointing_switch_reads_command_line_strings():
    assert _net("false").activation_checkpointing is False
    assert _net("true").activation_checkpointing is True
    with pytest.raises(ValueError, match="activation_checkpointing"):
        _net("maybe")


def test_autocast_dtype():
    assert autocast_dtype(None, "cpu") == torch.bfloat16
    assert autocast_dtype(None, "cuda") == torch.float16
    assert autocast_dtype("float16", "cpu") == torch.float16
    assert autocast_dtype("bf16", "cuda") == torch.bfloat16
    assert autocast_dtype("null", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="amp_dtype"):
        autocast_dtype("float32", "cpu")


def test_bf16_autocast_inference_is_close():
    net = _net(False).eval()
    _nonzero_head(net)
    x, t = _batch(8)
    with torch.no_grad():
        ref = net(x, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x, t).float()
    assert (low - ref).abs().max() < 0.05 * ref.abs().max()


def test_compile_switch_traces_the_network_and_samples(tmp_path):
    """The compile path (TorchDynamo graph capture) on the real network; backend "eager" skips C++ code
    generation, which takes minutes on 2 CPU cores (the default inductor backend is used in real runs)."""
    from wdm_bundle.diffusion import WaveletDiffusionInferer, make_scheduler
    from wdm_bundle.engines import VolumeGenerator

    torch._dynamo.reset()
    net = _net(False, channels=(8, 8), num_res_blocks=1).eval()
    _nonzero_head(net)
    x, t = torch.randn(1, 8, 4, 4, 4), torch.tensor([5])
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(net, backend="eager")(x, t), net(x, t))
    scheduler = make_scheduler("ddim", 2)
    gen = VolumeGenerator(
        net,
        WaveletDiffusionInferer(scheduler),
        scheduler,
        (1, 8, 8, 8),
        tmp_path,
        num_samples=1,
        save_png=False,
        progress=False,
        compile="true",
        compile_kwargs={"backend": "eager"},
        amp="true",
        amp_dtype="bfloat16",
    )
    assert gen.compile and gen.amp_dtype == torch.bfloat16
    assert len(gen.run()) == 1
