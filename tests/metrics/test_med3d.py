"""MedicalNet (Med3D) ResNet-50: key names, weight loading and 2048-d features."""

import pytest
import torch

from wdm_bundle.metrics.med3d import MED3D_FEATURE_DIM, Med3DResNet50, load_med3d_weights


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return Med3DResNet50().eval()


def test_medicalnet_key_names_and_size(net):
    keys = net.state_dict()
    for k in (
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.weight",
        "layer4.2.bn3.bias",
        "layer3.5.conv2.weight",
    ):
        assert k in keys, k
    assert [len(getattr(net, f"layer{i}")) for i in (1, 2, 3, 4)] == [3, 4, 6, 3]
    assert keys["conv1.weight"].shape == (64, 1, 7, 7, 7)
    assert net.layer3[0].conv2.dilation == (2, 2, 2) and net.layer4[0].conv2.dilation == (4, 4, 4)
    assert net.layer3[0].conv2.stride == (1, 1, 1) and net.layer2[0].conv2.stride == (2, 2, 2)
    # backbone without MedicalNet's conv_seg head; pinned to catch accidental architecture changes
    assert sum(p.numel() for p in net.parameters()) == 46_155_072


def test_feature_is_2048d(net):
    with torch.no_grad():
        f = net(torch.randn(2, 1, 16, 16, 16))
    assert f.shape == (2, MED3D_FEATURE_DIM) and torch.isfinite(f).all()


def test_round_trip_medicalnet_checkpoint(net, tmp_path):
    state = {"module." + k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    state["module.conv_seg.0.weight"] = torch.zeros(32, 2048, 3, 3, 3)  # the segmentation head is ignored
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "resnet_50.pth")
    other = load_med3d_weights(Med3DResNet50(), tmp_path / "resnet_50.pth")
    for k, v in net.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(other.state_dict()[k], v), k


def test_foreign_weights_give_a_clear_error(net, tmp_path):
    sd = net.state_dict()
    truncated = {k: v for k, v in sd.items() if not k.startswith("layer4")}
    torch.save(truncated, tmp_path / "trunc.pth")
    with pytest.raises(ValueError, match=r"missing keys: layer4\.0\.bn1\.bias.*in all\)"):
        load_med3d_weights(Med3DResNet50(), tmp_path / "trunc.pth")
    foreign = dict(sd)
    foreign["conv1.weight"] = torch.zeros(64, 3, 7, 7, 7)
    foreign["fc.weight"] = torch.zeros(10, 2048)
    torch.save(foreign, tmp_path / "foreign.pth")
    with pytest.raises(ValueError, match=r"unexpected keys: fc\.weight.*shape mismatches: conv1\.weight: file \(64, 3"):
        load_med3d_weights(Med3DResNet50(), tmp_path / "foreign.pth")
    with pytest.raises(FileNotFoundError, match="resnet_50.pth"):
        load_med3d_weights(Med3DResNet50(), tmp_path / "nope.pth")
