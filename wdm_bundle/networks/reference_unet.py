"""`WDMUNet`: the reference WDM U-Net (additive skips) and cWDM U-Net (concatenation skips).

State_dict keys equal those of the published checkpoints (``time_embed.*``,
``input_blocks.<i>.0.*``, ``middle_block.<j>.*``, ``output_blocks.<k>.<0|1>.*``, ``out.*``),
so a reference ``state_dict`` loads with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.utils import StrEnum
from torch import nn

from wdm_bundle.networks.reference_blocks import (
    EmbedSequential,
    GroupNorm32,
    Resample,
    ResBlock,
    check_spatial_dims,
    conv_nd,
    make_time_embed,
    timestep_embedding,
)
from wdm_bundle.networks.wavelet_unet import PAPER_CHANNELS
from wdm_bundle.utils import plain_config

__all__ = ["SkipMode", "ReferenceBackbone", "WDMUNet", "check_backbone_args", "check_backbone_input"]


class SkipMode(StrEnum):
    """How a decoder block merges the encoder map ``s``: ``add`` = (h + s) / 2 (WDM), ``concat`` = [h, s] (cWDM)."""

    ADD = "add"
    CONCAT = "concat"


def check_backbone_args(
    in_channels: int, out_channels: int, channels: Sequence[int], num_res_blocks: int, norm_num_groups: int
) -> None:
    """Shared constructor checks of the reference backbones; each ValueError names its argument."""
    if in_channels < 1 or out_channels < 1:
        raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}.")
    if len(channels) < 1 or any(c < 1 for c in channels):
        raise ValueError(f"channels must be a non-empty sequence of positive ints, got {tuple(channels)}.")
    if num_res_blocks < 1:
        raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}.")
    if norm_num_groups < 1 or any(c % norm_num_groups for c in channels):
        raise ValueError(f"norm_num_groups={norm_num_groups} must divide every entry of channels={tuple(channels)}.")


def check_backbone_input(
    x: torch.Tensor,
    timesteps: torch.Tensor,
    context: torch.Tensor | None,
    in_channels: int,
    spatial_dims: int,
    multiple: int,
) -> torch.Tensor:
    """Validate a backbone call; returns ``timesteps`` as an (N,) tensor (a scalar is broadcast)."""
    if context is not None:
        raise ValueError("context must be None: the reference networks have no cross-attention.")
    if x.ndim != spatial_dims + 2 or x.shape[1] != in_channels:
        raise ValueError(f"x must be (N, {in_channels}, {spatial_dims} spatial dims), got shape {tuple(x.shape)}.")
    bad = [s for s in x.shape[2:] if s % multiple]
    if bad:
        raise ValueError(f"x: spatial size {tuple(x.shape[2:])} is not divisible by {multiple}.")
    if timesteps.ndim == 0:
        timesteps = timesteps.expand(x.shape[0])
    if timesteps.shape != (x.shape[0],):
        raise ValueError(f"timesteps must have shape ({x.shape[0]},), got {tuple(timesteps.shape)}.")
    return timesteps


class ReferenceBackbone(nn.Module):
    """The size arguments the reference backbones share, their checks and the recorded ``config``.

    Args:
        spatial_dims: 3 (the reference) or 2 where a subclass allows it (``allowed_spatial_dims``).
        in_channels: input channels (8 wavelet bands per image; cWDM 32).
        out_channels: output channels (8).
        channels: width per level; ``channels[0]`` is also the stem/head width C (the time
            embedding has 4C).
        num_res_blocks: ResBlocks per level R.
        norm_num_groups: GroupNorm groups (32).
        norm_eps: GroupNorm epsilon (1e-5).
        dropout: dropout in the ResBlocks (0).
        extra: the subclass's own arguments, recorded in ``config`` too.
    """

    allowed_spatial_dims: tuple[int, ...] = (2, 3)

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 8,
        out_channels: int = 8,
        channels: Sequence[int] = PAPER_CHANNELS[128],
        num_res_blocks: int = 2,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        dropout: float = 0.0,
        **extra,
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims, self.allowed_spatial_dims)
        check_backbone_args(in_channels, out_channels, channels, num_res_blocks, norm_num_groups)
        args = dict(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, channels=channels)
        args.update(num_res_blocks=num_res_blocks, norm_num_groups=norm_num_groups, norm_eps=norm_eps, dropout=dropout)
        self.config = plain_config(**args, **extra)
        self.spatial_dims, self.in_channels, self.out_channels = spatial_dims, in_channels, out_channels
        self.channels = tuple(int(c) for c in channels)
        self.num_res_blocks = num_res_blocks
        self.norm_num_groups, self.norm_eps, self.dropout = norm_num_groups, norm_eps, dropout
        self.embed_channels = 4 * self.channels[0]


class WDMUNet(ReferenceBackbone):
    """The U-Net of WDM (paper Table 1 "WDM") and, with ``skip_mode="concat"``, of cWDM.

    Encoder: conv3 stem ``in_channels -> channels[0]``; per level ``num_res_blocks`` ResBlocks
    (the first widens to ``channels[l]``), then, except at the last level, a down ResBlock (avg
    pool 2 inside the block). Middle: two ResBlocks. Decoder, levels in reverse: ``num_res_blocks
    + 1`` entries, each merging one encoder output (LIFO; every encoder output including the
    stem's is a skip) *before* its ResBlock; the last entry of every level but level 0 also holds
    an up ResBlock (nearest x2). Head: GroupNorm, SiLU, conv3 ``channels[0] -> out_channels``.
    Time: sinusoid of width ``channels[0]`` (raw step index), MLP to ``4 * channels[0]``, added
    in every ResBlock after its first conv.

    Skips: ``add`` averages ``(h + s) / 2``; each decoder ResBlock then already outputs the width
    of the *next* skip on the stack. ``concat`` uses ``cat([h, s], 1)``.

    Published sizes (base 64, GroupNorm 32, 2 ResBlocks): WDM 128^3: ``channels=(64, 128, 128,
    256, 256)``, 8 -> 8, ``add`` (57,914,824 parameters); WDM 256^3: ``(64, 128, 128, 256, 256,
    256)`` (83,158,728); cWDM: ``(64, 128, 128, 256, 256)``, 32 -> 8, ``concat`` (81,511,048).

    Args:
        args, kwargs: the sizes, as `ReferenceBackbone` (spatial_dims 3 or 2).
        resblock_updown: must be True: the published models resample inside ResBlocks; the
            reference's separate conv resampling layers (``resblock_updown=False``) are not built.
        skip_mode: ``"add"`` (WDM) or ``"concat"`` (cWDM).
    """

    def __init__(self, *args, resblock_updown: bool = True, skip_mode: str = SkipMode.ADD, **kwargs) -> None:
        super().__init__(*args, resblock_updown=resblock_updown, skip_mode=skip_mode, **kwargs)
        if not resblock_updown:
            raise ValueError("resblock_updown must be True: only in-block resampling (the published models) is built.")
        if skip_mode not in set(SkipMode):
            raise ValueError(f"skip_mode must be one of {[m.value for m in SkipMode]}, got {skip_mode!r}.")
        self.skip_mode = SkipMode(skip_mode)
        spatial_dims, in_channels, out_channels = self.spatial_dims, self.in_channels, self.out_channels
        num_res_blocks = self.num_res_blocks
        norm_num_groups, norm_eps, dropout = self.norm_num_groups, self.norm_eps, self.dropout
        base = self.channels[0]

        def res(c_in: int, c_out: int, resample: str | None = None) -> ResBlock:
            return ResBlock(
                spatial_dims, c_in, c_out, self.embed_channels, norm_num_groups, norm_eps, dropout, resample
            )

        self.time_embed = make_time_embed(base, self.embed_channels)

        blocks = [EmbedSequential(conv_nd(spatial_dims, in_channels, base, 3))]
        skips = [base]  # channels of every encoder output, in push order
        ch = base
        for level, width in enumerate(self.channels):
            for _ in range(num_res_blocks):
                blocks.append(EmbedSequential(res(ch, width)))
                ch = width
                skips.append(ch)
            if level < self.num_levels - 1:
                blocks.append(EmbedSequential(res(ch, ch, Resample.DOWN)))
                skips.append(ch)
        self.input_blocks = nn.ModuleList(blocks)

        self.middle_block = EmbedSequential(res(ch, ch), res(ch, ch))

        blocks = []
        for level in reversed(range(self.num_levels)):
            for i in range(num_res_blocks + 1):
                s = skips.pop()
                if self.skip_mode == SkipMode.CONCAT:
                    c_in, c_out = ch + s, self.channels[level]
                else:  # (h + s) / 2 needs h as wide as s; change width for the next skip already
                    c_in, c_out = ch, skips[-1] if skips else base
                layers = [res(c_in, c_out)]
                if level > 0 and i == num_res_blocks:
                    layers.append(res(c_out, c_out, Resample.UP))
                blocks.append(EmbedSequential(*layers))
                ch = c_out
        self.output_blocks = nn.ModuleList(blocks)

        self.out = nn.Sequential(
            GroupNorm32(norm_num_groups, ch, eps=norm_eps), nn.SiLU(), conv_nd(spatial_dims, ch, out_channels, 3)
        )

    @property
    def num_levels(self) -> int:
        """Resolution levels L; input sizes must be divisible by ``2 ** (L - 1)``."""
        return len(self.channels)

    @property
    def size_multiple(self) -> int:
        """Every spatial size of ``x`` must be divisible by this."""
        return 2 ** (self.num_levels - 1)

    def merge_skip(self, h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """``(h + s) / 2`` or ``cat([h, s], dim=1)``, by ``skip_mode``."""
        if self.skip_mode == SkipMode.CONCAT:
            return torch.cat([h, s], dim=1)
        return (h + s) / 2

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            x: (N, in_channels, *spatial), each spatial size divisible by ``size_multiple``.
            timesteps: (N,) raw diffusion step indices (0 .. T-1), not rescaled.
            context: must be None (no cross-attention).

        Returns:
            (N, out_channels, *spatial).
        """
        timesteps = check_backbone_input(x, timesteps, context, self.in_channels, self.spatial_dims, self.size_multiple)
        emb = self.time_embed(timestep_embedding(timesteps, self.channels[0]).to(self.time_embed[0].weight.dtype))
        hs = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(self.merge_skip(h, hs.pop()), emb)
        return self.out(h)
