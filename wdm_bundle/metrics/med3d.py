"""MedicalNet (Med3D) 3D ResNet-50 feature extractor for FID on 3D volumes.

Written from the published architecture (Chen et al., "Med3D: Transfer Learning for 3D Medical
Image Analysis", 2019; Tencent/MedicalNet ``models/resnet.py``): Bottleneck blocks [3, 4, 6, 3],
a 7x7x7 stride-2 stem with 1 input channel, shortcut type "B" (1x1x1 conv + BN), ``layer3`` and
``layer4`` dilated (2 and 4) with stride 1. The segmentation head (``conv_seg``) is left out;
the feature is the global average pool of ``layer4``: 2048 values per volume. Parameter names
match MedicalNet's ``resnet_50.pth`` / ``resnet_50_23dataset.pth``.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from wdm_bundle.utils import torch_load

__all__ = ["MED3D_FEATURE_DIM", "Med3DBottleneck", "Med3DResNet50", "load_med3d_weights", "med3d_normalize"]

MED3D_FEATURE_DIM = 2048


class Med3DBottleneck(nn.Module):
    """1x1x1 -> 3x3x3 (stride, dilation) -> 1x1x1 bottleneck with a residual connection.

    Args:
        inplanes: input channels.
        planes: bottleneck channels; the output has ``4 * planes``.
        stride: stride of the 3x3x3 conv.
        dilation: dilation (and padding) of the 3x3x3 conv.
        downsample: shortcut module (``Sequential(conv1x1x1, BatchNorm3d)``) or None for identity.
    """

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(
            planes, planes, kernel_size=3, stride=stride, dilation=dilation, padding=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, D, H, W) -> (N, 4 * planes, D', H', W')."""
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


class Med3DResNet50(nn.Module):
    """MedicalNet 3D ResNet-50 backbone; ``forward`` returns the 2048-d global-average-pooled ``layer4``.

    Args:
        in_channels: input channels (MedicalNet: 1).
        layers: blocks per stage (ResNet-50: [3, 4, 6, 3]).

    Example:
        >>> net = Med3DResNet50().eval()
        >>> net(torch.zeros(1, 1, 32, 32, 32)).shape
        torch.Size([1, 2048])
    """

    def __init__(self, in_channels: int = 1, layers: tuple[int, int, int, int] = (3, 4, 6, 3)) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"'layers' must give 4 stage depths; got {layers!r}.")
        self.inplanes = 64
        self.conv1 = nn.Conv3d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=1, dilation=2)
        self.layer4 = self._make_layer(512, layers[3], stride=1, dilation=4)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        out = planes * Med3DBottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:  # shortcut type "B"
            downsample = nn.Sequential(
                nn.Conv3d(self.inplanes, out, kernel_size=1, stride=stride, bias=False), nn.BatchNorm3d(out)
            )
        mods = [Med3DBottleneck(self.inplanes, planes, stride, dilation, downsample)]
        self.inplanes = out
        mods += [Med3DBottleneck(out, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, D, H, W) -> ``layer4`` output (N, 2048, ~D/8, ~H/8, ~W/8)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, D, H, W) -> features (N, 2048)."""
        return self.feature_map(x).mean(dim=(2, 3, 4))


def med3d_normalize(volume: torch.Tensor) -> torch.Tensor:
    """MedicalNet's intensity normalisation: z-score over the non-zero (foreground) voxels, background kept 0.

    MedicalNet (``__itensity_normalize_one_volume__``) fills the background with random noise during
    training; here it stays 0 so that the features are deterministic. All-zero input is returned as is.
    """
    v = volume.float()
    fg = v != 0
    if not bool(fg.any()):
        return v
    vals = v[fg]
    std = vals.std() if vals.numel() > 1 else vals.new_tensor(0.0)
    out = (v - vals.mean()) / (std if std > 0 else 1.0)
    return torch.where(fg, out, torch.zeros_like(out))


def load_med3d_weights(model: Med3DResNet50, path: str | os.PathLike) -> Med3DResNet50:
    """Load MedicalNet's ``resnet_50.pth`` (or any state dict with its key names) into ``model``.

    Accepts a plain state dict or ``{"state_dict": ...}``; strips ``module.`` (DataParallel)
    prefixes and ignores the segmentation head ``conv_seg.*`` (and absent BatchNorm
    ``num_batches_tracked`` counters). Loads with ``weights_only=True``
    on the CPU, then copies into ``model`` (any device).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a state dict, or keys are missing/unexpected or shapes
            differ (all listed): weights of another architecture.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Med3D weights '{path}' do not exist (MedicalNet's resnet_50.pth is expected).")
    state = torch_load(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"'{path}' holds a {type(state).__name__}, not a state dict.")
    clean = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if not key.startswith("conv_seg."):
            clean[key] = value
    own = model.state_dict()
    # files saved before PyTorch 0.4.1 lack BatchNorm's `num_batches_tracked` counters (unused in eval): keep the
    # model's
    for key in own:
        if key.endswith("num_batches_tracked") and key not in clean:
            clean[key] = own[key]
    missing = sorted(set(own) - set(clean))
    unexpected = sorted(set(clean) - set(own))
    shapes = [
        f"{k}: file {tuple(clean[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(clean))
        if tuple(clean[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:

        def head(items: list[str]) -> str:
            return ", ".join(items[:10]) + (f", ... ({len(items)} in all)" if len(items) > 10 else "")

        problems = [
            f"missing keys: {head(missing)}" if missing else "",
            f"unexpected keys: {head(unexpected)}" if unexpected else "",
            f"shape mismatches: {head(shapes)}" if shapes else "",
        ]
        raise ValueError(
            f"'{path}' does not hold MedicalNet ResNet-50 weights (expected Tencent/MedicalNet resnet_50.pth); "
            + "; ".join(p for p in problems if p)
            + "."
        )
    model.load_state_dict(clean, strict=True)
    return model
