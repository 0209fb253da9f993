"""Building blocks of the published WDM / cWDM reference networks.

Written from the functional specification of the reference ``UNetModel`` / ``WavUNetModel``
(pfriedri/wdm-3d a93a7ef, pfriedri/cwdm 1e4a1e5). Submodules are laid out as ``nn.Sequential``
with the reference's indices, so a block's state_dict keys are those of the reference
(``in_layers.0`` GroupNorm, ``in_layers.2`` conv, ``emb_layers.1`` Linear, ``out_layers.0``
GroupNorm, ``out_layers.3`` conv, ``skip_connection``); the parameter-free layers (SiLU,
Dropout) fill the gaps in the numbering.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from monai.utils import StrEnum
from torch import nn

__all__ = [
    "Resample",
    "timestep_embedding",
    "GroupNorm32",
    "conv_nd",
    "make_time_embed",
    "ResBlock",
    "EmbedSequential",
    "check_spatial_dims",
]


class Resample(StrEnum):
    """What a `ResBlock` does to the resolution: halve it (``down``) or double it (``up``)."""

    DOWN = "down"
    UP = "up"


def check_spatial_dims(spatial_dims: int, allowed: tuple[int, ...] = (2, 3)) -> None:
    """Raise a ValueError naming ``spatial_dims`` unless it is one of ``allowed``."""
    if spatial_dims not in allowed:
        raise ValueError(f"spatial_dims must be one of {allowed}, got {spatial_dims}.")


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding of the raw (unscaled) diffusion step, cosine half first.

    ``freq_k = exp(-ln(max_period) * k / (dim // 2))``, ``k = 0 .. dim//2 - 1``; the result is
    ``[cos(t * freq), sin(t * freq)]`` (plus a zero column if ``dim`` is odd). This is the
    reference's embedding and MONAI's `get_timestep_embedding`, which is used here.

    Args:
        timesteps: (N,) step indices (int or float); a 0-dim tensor counts as N=1.
        dim: embedding width.

    Returns:
        (N, dim) float32 embedding.
    """
    if timesteps.ndim == 0:
        timesteps = timesteps[None]
    return get_timestep_embedding(timesteps, dim, max_period)


class GroupNorm32(nn.GroupNorm):
    """`nn.GroupNorm` evaluated in (at least) float32 and cast back to the input dtype, as the reference, for AMP."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float64:
            return super().forward(x)
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type(x.dtype)


def conv_nd(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int) -> nn.Module:
    """Conv with stride 1, "same" padding and a bias: ``kernel_size`` 3 ("conv3") or 1 ("conv1")."""
    conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
    return conv(in_channels, out_channels, kernel_size, padding=kernel_size // 2)


def make_time_embed(base_channels: int, embed_channels: int) -> nn.Sequential:
    """Time MLP ``Linear(C -> E), SiLU, Linear(E -> E)`` (keys ``0`` and ``2``), no final activation."""
    return nn.Sequential(nn.Linear(base_channels, embed_channels), nn.SiLU(), nn.Linear(embed_channels, embed_channels))


class ResBlock(nn.Module):
    """Residual block with additive time injection; optionally resamples (avg-pool 2 / nearest x2).

    Plain block::

        h = conv_in(SiLU(GN_in(x)))
        h = h + Linear(SiLU(emb))            # broadcast over the spatial dims
        y = skip(x) + conv_out(Dropout(SiLU(GN_out(h))))

    With ``resample``, the resampling ``R`` (average pooling with kernel 2 for ``down``,
    nearest-neighbour x2 for ``up``) is applied between the first activation and ``conv_in``, and
    to the identity branch: ``h = conv_in(R(SiLU(GN_in(x))))``, ``skip(x) = R(x)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of x.
        out_channels: channels of y; a 1x1(x1) conv skip is added when they differ from ``in_channels``.
        embed_channels: width E of the time embedding.
        norm_num_groups: GroupNorm groups; must divide both channel counts.
        norm_eps: GroupNorm epsilon (reference: 1e-5, the torch default).
        dropout: dropout probability before ``conv_out`` (reference: 0).
        resample: None, ``"down"`` or ``"up"``; needs ``in_channels == out_channels``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        embed_channels: int,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        dropout: float = 0.0,
        resample: str | None = None,
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if value < 1 or value % norm_num_groups:
                raise ValueError(f"{name}={value} must be a positive multiple of norm_num_groups={norm_num_groups}.")
        if resample is not None and resample not in set(Resample):
            raise ValueError(f"resample must be None or one of {[m.value for m in Resample]}, got {resample!r}.")
        self.resample = Resample(resample) if resample is not None else None
        if self.resample is not None and in_channels != out_channels:
            raise ValueError(
                f"a resampling block keeps its width: in_channels={in_channels} != out_channels={out_channels}."
            )
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.in_layers = nn.Sequential(
            GroupNorm32(norm_num_groups, in_channels, eps=norm_eps),
            nn.SiLU(),
            conv_nd(spatial_dims, in_channels, out_channels, 3),
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(embed_channels, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(norm_num_groups, out_channels, eps=norm_eps),
            nn.SiLU(),
            nn.Dropout(dropout),
            conv_nd(spatial_dims, out_channels, out_channels, 3),
        )
        self.skip_connection = (
            nn.Identity() if in_channels == out_channels else conv_nd(spatial_dims, in_channels, out_channels, 1)
        )

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == Resample.DOWN:
            return F.avg_pool3d(x, 2) if self.spatial_dims == 3 else F.avg_pool2d(x, 2)
        return F.interpolate(x, scale_factor=2.0, mode="nearest")

    def add_embedding(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``h + Linear(SiLU(emb))`` with the (N, out_channels) projection broadcast over space."""
        e = self.emb_layers(emb).type(h.dtype)
        return h + e.reshape(*e.shape, *([1] * self.spatial_dims))

    def finish(self, x: torch.Tensor, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Time injection, ``out_layers`` and the residual sum ``skip(x) + h`` (``x`` already resampled)."""
        h = self.out_layers(self.add_embedding(h, emb))
        return self.skip_connection(x) + h

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (N, in_channels, *spatial).
            emb: (N, embed_channels) time embedding.

        Returns:
            (N, out_channels, *spatial'), spatial' = spatial / 2 (down), * 2 (up) or unchanged.
        """
        if self.resample is None:
            return self.finish(x, self.in_layers(x), emb)
        h = self.in_layers[2](self._resample(self.in_layers[1](self.in_layers[0](x))))
        return self.finish(self._resample(x), h, emb)


class EmbedSequential(nn.Sequential):
    """A sequence of layers where `ResBlock`s also receive the time embedding (``forward(x, emb)``)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x
