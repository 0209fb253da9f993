"""`WavUNet`: the reference WavU-Net of WDM (paper Table 1 "WDM (WavU-Net)").

Down- and up-sampling are Haar DWT / IDWT inside the ResBlocks, each level also gets a
wavelet-residual input from the DWT of the previous level's features, and the only
encoder -> decoder path is the 7 high-frequency bands of each down block. State_dict keys equal
those of the reference ``WavUNetModel`` (including its shared decoder ResBlocks, which appear
twice in the state_dict).

Band layout: the reference concatenates whole bands, ``[LLL(x), LLH(x), ..., HHH(x)]``
(channel ``k * C + c`` for band k of channel c), while `wdm_bundle.wavelets.dwt3d` interleaves
them (channel ``8 * c + k``); `haar_bands` / `haar_merge` convert. Both use the same orthonormal
Haar filters and band order (``4*d + 2*h + w``, high = (even - odd) / sqrt2, as PyWavelets).
"""

from __future__ import annotations

import torch
from torch import nn

from wdm_bundle.networks.reference_blocks import (
    EmbedSequential,
    GroupNorm32,
    Resample,
    ResBlock,
    conv_nd,
    make_time_embed,
    timestep_embedding,
)
from wdm_bundle.networks.reference_unet import ReferenceBackbone, check_backbone_input
from wdm_bundle.wavelets import dwt3d, idwt3d

__all__ = ["haar_bands", "haar_merge", "WaveletResBlock", "WaveletDownsample", "WavUNet"]


def haar_bands(x: torch.Tensor) -> torch.Tensor:
    """(N, C, D, H, W) -> (N, 8, C, D/2, H/2, W/2): the 8 Haar bands, LLL first, band-major."""
    y = dwt3d(x)  # (N, 8C), channel 8*c + k
    return y.reshape(x.shape[0], x.shape[1], 8, *y.shape[2:]).transpose(1, 2)


def haar_merge(bands: torch.Tensor) -> torch.Tensor:
    """Inverse of `haar_bands`: (N, 8, C, d, h, w) -> (N, C, 2d, 2h, 2w)."""
    return idwt3d(bands.transpose(1, 2).flatten(1, 2))


class WaveletResBlock(ResBlock):
    """`ResBlock` (3D) whose resampling is a Haar DWT / IDWT applied *after* ``conv_in``.

    * plain: as `ResBlock`.
    * ``down``: ``h = conv_in(SiLU(GN_in(x)))``; ``h <- LLL(h) / s``, ``x <- LLL(x) / s``; the 7
      high bands of h (before the time injection) are returned too: ``forward -> (y, highs)``.
    * ``up``: ``forward(x, emb, highs)``; ``h = conv_in(SiLU(GN_in(x)))``, then
      ``h <- IDWT(s * h, highs)`` and ``x <- IDWT(s * x, highs)`` (the same highs in both).

    Then the time injection, ``out_layers`` and ``y = x + h`` as in `ResBlock`. ``s`` is
    ``wavelet_scale`` (reference: 3).
    """

    def __init__(self, *args, wavelet_scale: float = 3.0, **kwargs) -> None:
        super().__init__(3, *args, **kwargs)
        if wavelet_scale <= 0:
            raise ValueError(f"wavelet_scale must be positive, got {wavelet_scale}.")
        self.wavelet_scale = float(wavelet_scale)

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, emb: torch.Tensor, highs: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            x: (N, C_in, D, H, W).
            emb: (N, E) time embedding.
            highs: ``up`` only: (N, 7, C, D, H, W) high bands LLH..HHH from the encoder.

        Returns:
            plain: (N, C_out, D, H, W); ``down``: ((N, C, D/2, H/2, W/2), highs (N, 7, C, D/2, H/2, W/2));
            ``up``: (N, C, 2D, 2H, 2W).
        """
        if self.resample is None:
            return super().forward(x, emb)
        h = self.in_layers(x)
        s = self.wavelet_scale
        if self.resample == Resample.DOWN:
            h_bands = haar_bands(h)
            return self.finish(haar_bands(x)[:, 0] / s, h_bands[:, 0] / s, emb), h_bands[:, 1:]
        if highs is None or highs.shape[1] != 7 or highs.shape[2:] != x.shape[1:]:
            raise ValueError(
                f"highs must be (N, 7, {tuple(x.shape[1:])}), got {None if highs is None else tuple(highs.shape)}."
            )
        h = haar_merge(torch.cat([s * h[:, None], highs], dim=1))
        x = haar_merge(torch.cat([s * x[:, None], highs], dim=1))
        return self.finish(x, h, emb)


class WaveletDownsample(nn.Module):
    """Wavelet residual input of a level: ``conv3(cat(8 Haar bands of pyr) / s) + h``.

    Args:
        in_channels: channels p of the previous level's pyramid tensor (8 bands each are convolved).
        out_channels: channels of this level's features h.
        wavelet_scale: divisor s of every band (reference: 3).
    """

    def __init__(self, in_channels: int, out_channels: int, wavelet_scale: float = 3.0) -> None:
        super().__init__()
        self.wavelet_scale = float(wavelet_scale)
        self.conv = conv_nd(3, 8 * in_channels, out_channels, 3)

    def forward(self, pyr: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """(N, p, D, H, W) and (N, out_channels, D/2, H/2, W/2) -> (N, out_channels, D/2, H/2, W/2)."""
        return self.conv(haar_bands(pyr).flatten(1, 2) / self.wavelet_scale) + h


class WavUNet(ReferenceBackbone):
    """The WDM WavU-Net: Haar resampling in ResBlocks, wavelet residual inputs, no feature skips.

    Encoder: conv3 stem; per level ``num_res_blocks`` ResBlocks (the first widens to
    ``channels[l]``), a Haar down ResBlock, and a `WaveletDownsample` that turns the DWT of the
    previous level's input ``pyr`` (first the network input) into a residual:
    ``pyr <- conv3(bands(pyr) / 3) + h``, ``h <- pyr``. Every level, the last included, halves the
    resolution, so the middle (two ResBlocks) runs at ``1 / 2**len(channels)``. Decoder, levels in
    reverse: ``num_res_blocks`` ResBlocks, then the last of them *again* (the same module, as in
    the reference) followed by a Haar up ResBlock that uses that level's encoder high bands.
    Then two more ResBlocks (``out_res``) and the head GroupNorm, SiLU, conv3.

    Published size (``ours_wnet_128``): ``channels=(64, 128, 128, 256, 256)``, 8 -> 8, R=2:
    89,706,056 parameters (98,993,416 in the state_dict, which lists the 5 shared blocks twice).
    ``ours_wnet_256`` uses ``(64, 128, 128, 256, 256, 256)``.

    Args:
        args, kwargs: the sizes, as `ReferenceBackbone` (spatial_dims must be 3).
        wavelet_scale: the divisor of the LLL band in the Haar blocks and of all bands in the
            wavelet residual inputs (reference: 3).
    """

    allowed_spatial_dims = (3,)  # 3D Haar wavelets

    def __init__(self, *args, wavelet_scale: float = 3.0, **kwargs) -> None:
        super().__init__(*args, wavelet_scale=wavelet_scale, **kwargs)
        if wavelet_scale <= 0:
            raise ValueError(f"wavelet_scale must be positive, got {wavelet_scale}.")
        in_channels, out_channels, num_res_blocks = self.in_channels, self.out_channels, self.num_res_blocks
        norm_num_groups, norm_eps, dropout = self.norm_num_groups, self.norm_eps, self.dropout
        base = self.channels[0]

        def res(c_in: int, c_out: int, resample: str | None = None) -> WaveletResBlock:
            return WaveletResBlock(
                c_in,
                c_out,
                self.embed_channels,
                norm_num_groups,
                norm_eps,
                dropout,
                resample,
                wavelet_scale=wavelet_scale,
            )

        self.time_embed = make_time_embed(base, self.embed_channels)

        blocks = [EmbedSequential(conv_nd(3, in_channels, base, 3))]
        ch, pyr_ch = base, in_channels
        for width in self.channels:
            for _ in range(num_res_blocks):
                blocks.append(EmbedSequential(res(ch, width)))
                ch = width
            blocks.append(EmbedSequential(res(ch, ch, Resample.DOWN)))
            blocks.append(EmbedSequential(WaveletDownsample(pyr_ch, ch, wavelet_scale)))
            pyr_ch = ch
        self.input_blocks = nn.ModuleList(blocks)

        self.middle_block = EmbedSequential(res(ch, ch), res(ch, ch))

        blocks = []
        for level in reversed(range(len(self.channels))):
            for _ in range(num_res_blocks):
                last = res(ch, self.channels[level])
                blocks.append(EmbedSequential(last))
                ch = self.channels[level]
            if last.in_channels != last.out_channels:
                raise ValueError(
                    f"num_res_blocks={num_res_blocks}: the decoder applies its last ResBlock of each level twice, "
                    f"so it must keep its width; use num_res_blocks >= 2 or equal channels per level."
                )
            blocks.append(EmbedSequential(last, res(ch, ch, Resample.UP)))  # `last` is shared, not copied
        self.output_blocks = nn.ModuleList(blocks)

        self.out_res = nn.ModuleList([EmbedSequential(res(ch, ch)) for _ in range(2)])
        self.out = nn.Sequential(
            GroupNorm32(norm_num_groups, ch, eps=norm_eps), nn.SiLU(), conv_nd(3, ch, out_channels, 3)
        )

    @property
    def num_levels(self) -> int:
        """Resolution levels, ``len(channels) + 1`` (every level halves, the middle is one more)."""
        return len(self.channels) + 1

    @property
    def size_multiple(self) -> int:
        """Every spatial size of ``x`` must be divisible by this, ``2 ** len(channels)``."""
        return 2 ** (self.num_levels - 1)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            x: (N, in_channels, D, H, W), each size divisible by ``size_multiple``.
            timesteps: (N,) raw diffusion step indices (0 .. T-1), not rescaled.
            context: must be None.

        Returns:
            (N, out_channels, D, H, W).
        """
        timesteps = check_backbone_input(x, timesteps, context, self.in_channels, 3, self.size_multiple)
        emb = self.time_embed(timestep_embedding(timesteps, self.channels[0]).to(self.time_embed[0].weight.dtype))
        h = self.input_blocks[0](x, emb)
        pyr = x
        highs = []
        for block in self.input_blocks[1:]:
            layer = block[0]
            if isinstance(layer, WaveletDownsample):
                h = pyr = layer(pyr, h)
            elif layer.resample == Resample.DOWN:
                h, level_highs = layer(h, emb)
                highs.append(level_highs)
            else:
                h = layer(h, emb)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            for layer in block:
                h = layer(h, emb, highs.pop()) if layer.resample == Resample.UP else layer(h, emb)
        for block in self.out_res:
            h = block(h, emb)
        return self.out(h)
