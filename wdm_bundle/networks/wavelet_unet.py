"""`WaveletDiffusionUNet`: a diffusion U-Net that works on 3D Haar wavelet coefficients."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

from wdm_bundle.networks.fused_norm import use_fused_group_norm_silu
from wdm_bundle.utils import as_bool, plain_config
from wdm_bundle.wavelets import HaarWavelet3D, ImageSpace
from wdm_bundle.wavelets.transform import check_levels

__all__ = ["WaveletDiffusionUNet", "PAPER_CHANNELS", "apply_activation_checkpointing"]

#: Paper sizes: base 64 channels, multipliers (1,2,2,4,4) at 128^3 and (1,2,2,4,4,4) at 256^3.
PAPER_CHANNELS = {128: (64, 128, 128, 256, 256), 256: (64, 128, 128, 256, 256, 256)}

#: Class-name endings of the blocks that are checkpointed: residual blocks of MONAI's
#: `DiffusionModelUNet` and of the reference backbones, and self-attention blocks.
_CHECKPOINTED = ("ResnetBlock", "ResBlock", "AttentionBlock")


def apply_activation_checkpointing(backbone: nn.Module) -> int:
    """Recompute each residual/attention block's activations in the backward pass instead of storing them.

    Wraps every residual and self-attention block of ``backbone`` in PyTorch's non-reentrant
    checkpoint wrapper (``torch.utils.checkpoint``; MONAI's `DiffusionModelUNet` has no such
    option), so a training step keeps only each block's input (about one tensor per block
    instead of ~8); the cost is one more forward pass. Parameter names and ``state_dict`` keys
    do not change. MONAI's ResBlocks also get a fused GroupNorm+SiLU that stores only its input
    (`wdm_bundle.networks.fused_norm`): the peak is inside a recomputed block. Returns the
    number of wrapped blocks.

    Raises:
        ValueError: ``backbone`` has no block whose class name ends in one of ``_CHECKPOINTED``.
    """
    use_fused_group_norm_silu(backbone)  # MONAI ResBlocks: GroupNorm+SiLU that stores only its input
    targets = []
    for name, module in backbone.named_modules():
        if (
            name
            and type(module).__name__.endswith(_CHECKPOINTED)
            and not any(name.startswith(t + ".") for t in targets)
        ):
            targets.append(name)
    if isinstance(getattr(backbone, "out", None), nn.Module):
        targets.append("out")  # output head: GroupNorm, SiLU, conv at full resolution
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = backbone.get_submodule(parent_name) if parent_name else backbone
        setattr(parent, child, checkpoint_wrapper(getattr(parent, child)))
    if not targets:
        raise ValueError(
            f"activation checkpointing found no residual or attention block (class name ending in "
            f"{', '.join(_CHECKPOINTED)}) in {type(backbone).__name__}."
        )
    return len(targets)


def _reference_unet() -> type[nn.Module]:
    from wdm_bundle.networks.reference_unet import WDMUNet

    return WDMUNet


def _wavunet() -> type[nn.Module]:
    from wdm_bundle.networks.wavunet import WavUNet

    return WavUNet


#: Backbones a recorded network may name (a closed set: a checkpoint never chooses the code that runs).
_BACKBONES: dict[str, Callable[[], type[nn.Module]]] = {"WDMUNet": _reference_unet, "WavUNet": _wavunet}


def _check_wrapper_args(image_channels: int, condition_channels: int, extra_channels: int, space: str) -> None:
    if image_channels < 1:
        raise ValueError(f"image_channels must be >= 1, got {image_channels}.")
    if condition_channels < 0 or extra_channels < 0:
        raise ValueError(
            f"condition_channels and extra_channels must be >= 0, got {condition_channels}, {extra_channels}."
        )
    if space not in ("wavelet", "image"):
        raise ValueError(f"space must be 'wavelet' or 'image', got '{space}'.")


def constructor_arguments(cls: type) -> set[str]:
    """The keyword arguments ``cls(...)`` takes, through its bases' ``__init__`` for ``*args, **kwargs`` passed on."""
    names: set[str] = set()
    for klass in cls.__mro__:
        params = inspect.signature(klass.__init__).parameters.values() if "__init__" in vars(klass) else ()
        names |= {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self"}
        if not any(p.kind == p.VAR_KEYWORD for p in params) and "__init__" in vars(klass):
            break  # this constructor passes nothing further up
    return names


def _check_names(args: Mapping[str, Any], allowed: set[str], owner: str) -> None:
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise ValueError(f"recorded {owner} arguments {unknown} are not among its arguments {sorted(allowed)}.")


class WaveletDiffusionUNet(nn.Module):
    """MONAI `DiffusionModelUNet` in wavelet space, plus the image <-> coefficient coder.

    The backbone sees ``8**L * (image_channels + condition_channels) + extra_channels`` channels:
    the noisy target coefficients x_t first, then the DWT of any condition images, then any
    extra (e.g. target-indicator) channels; it predicts the clean coefficients x0 of the target,
    ``8**L * image_channels`` (L = ``wavelet_levels``) channels. Coefficients are in the scaled space of ``self.wavelet``
    (LLL band divided by ``lll_scale``), so the model never sees the raw LLL range.

    Args:
        image_channels: channels C of the generated image (1 for a single MR contrast).
        condition_channels: image channels k concatenated as conditions (cWDM), 0 for WDM.
        extra_channels: further wavelet-resolution channels appended after the conditions.
        channels: U-Net channels per level (paper: 64,128,128,256,256 for 128^3 volumes).
        num_res_blocks: residual blocks per level (paper: 2).
        attention_levels: self-attention per level (paper: none).
        norm_num_groups: GroupNorm groups; must divide every entry of ``channels``.
        resblock_updown: down/up-sample with residual blocks (paper: True).
        mid_block_attention: keep the self-attention MONAI always puts between the two middle
            ResBlocks. The paper has none (False); at the bottleneck of large cWDM volumes
            (56x56x40 tokens) it would also need a quadratic-size attention matrix.
        lll_scale: divisor of the LLL band (reference: 3.0).
        wavelet_levels: DWT levels (`HaarWavelet3D`): 1 = the paper (8 sub-bands at 1/2 size), 2 = 64 sub-bands at
            1/4 size (a 512^3 volume reaches the U-Net at the size a 256^3 volume has at level 1), 3.
        space: ``"wavelet"`` (WDM) or ``"image"``: the same U-Net on the images themselves, the
            paper's image-space 3D DDPM baseline (C channels in and out instead of 8C).
        backbone: an alternative backbone with the `DiffusionModelUNet` calling convention
            ``forward(x, timesteps, context=None)``, or a callable that builds one (so that a
            config factory makes a fresh backbone per network); the sizes above are then ignored.
        activation_checkpointing: recompute block activations in the backward pass (see
            `apply_activation_checkpointing`): much less training memory for about one more
            forward pass of time; no effect on inference or on the weights.
        **backbone_kwargs: further `DiffusionModelUNet` arguments.
    """

    def __init__(
        self,
        image_channels: int = 1,
        condition_channels: int = 0,
        extra_channels: int = 0,
        channels: Sequence[int] = PAPER_CHANNELS[128],
        num_res_blocks: int | Sequence[int] = 2,
        attention_levels: Sequence[bool] | None = None,
        norm_num_groups: int = 32,
        resblock_updown: bool = True,
        mid_block_attention: bool = False,
        lll_scale: float = 3.0,
        wavelet_levels: int = 1,
        space: str = "wavelet",
        backbone: nn.Module | Callable[[], nn.Module] | None = None,
        activation_checkpointing: bool = False,
        **backbone_kwargs,
    ) -> None:
        super().__init__()
        custom_backbone = backbone is not None
        if backbone is not None and not isinstance(backbone, nn.Module):
            backbone = backbone()
        _check_wrapper_args(image_channels, condition_channels, extra_channels, space)
        wavelet_levels = check_levels(wavelet_levels, "wavelet_levels")
        if space != "wavelet" and wavelet_levels != 1:
            raise ValueError(f"wavelet_levels={wavelet_levels} needs space='wavelet', got space='{space}'.")
        if backbone is None and any(c % norm_num_groups for c in channels):
            raise ValueError(
                f"norm_num_groups={norm_num_groups} must divide every entry of channels={tuple(channels)}."
            )
        self.image_channels = image_channels
        self.condition_channels = condition_channels
        self.extra_channels = extra_channels
        self.space = space
        self.wavelet = HaarWavelet3D(lll_scale, wavelet_levels) if space == "wavelet" else ImageSpace()
        bands = self.wavelet.bands
        self.in_channels = bands * (image_channels + condition_channels) + extra_channels
        self.out_channels = bands * image_channels
        # a custom backbone states its own depth; MONAI's has one level per entry of `channels`
        self.num_levels = int(getattr(backbone, "num_levels", len(channels)))
        if backbone is None:
            backbone = DiffusionModelUNet(
                spatial_dims=3,
                in_channels=self.in_channels,
                out_channels=self.out_channels,
                channels=tuple(channels),
                num_res_blocks=num_res_blocks,
                attention_levels=tuple(attention_levels) if attention_levels else (False,) * len(channels),
                norm_num_groups=norm_num_groups,
                resblock_updown=resblock_updown,
                **backbone_kwargs,
            )
            if not mid_block_attention:  # MONAI always builds it; the paper has none
                backbone.middle_block.attention = nn.Identity()
        self.config = plain_config(
            image_channels=image_channels,
            condition_channels=condition_channels,
            extra_channels=extra_channels,
            channels=channels,
            num_res_blocks=num_res_blocks,
            attention_levels=attention_levels,
            norm_num_groups=norm_num_groups,
            resblock_updown=resblock_updown,
            mid_block_attention=mid_block_attention,
            lll_scale=lll_scale,
            wavelet_levels=wavelet_levels,
            space=space,
            **backbone_kwargs,
        )
        if custom_backbone:
            self._record_backbone(backbone)
        backbone_in = getattr(backbone, "in_channels", self.in_channels)
        if backbone_in != self.in_channels:
            raise ValueError(
                f"backbone takes {backbone_in} input channels but this wrapper feeds it {self.in_channels} "
                f"({bands} x ({image_channels} + {condition_channels}) + {extra_channels})."
            )
        self.activation_checkpointing = as_bool(activation_checkpointing, "activation_checkpointing")
        if self.activation_checkpointing:
            apply_activation_checkpointing(backbone)
        self.backbone = backbone

    def _record_backbone(self, backbone: nn.Module) -> None:
        """Add a custom backbone's class and arguments to ``config``; None if it cannot be rebuilt from a record."""
        if type(backbone).__name__ not in _BACKBONES or not isinstance(getattr(backbone, "config", None), dict):
            self.config = None  # `record.training_record` says so
        else:
            self.config["backbone"] = {"class": type(backbone).__name__, "args": dict(backbone.config)}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> WaveletDiffusionUNet:
        """Rebuild a network from its recorded ``config`` (`WaveletDiffusionUNet.config`, read from a checkpoint).

        Only this class and the backbones `WDMUNet` / `WavUNet` can be built, and only with arguments
        their constructors name, so a checkpoint's content never selects code to run.

        Raises:
            ValueError: an unknown backbone class or argument name (the message lists the allowed ones).
        """
        if not isinstance(config, Mapping):
            raise ValueError(f"a network record must be a dict of constructor arguments, got {type(config).__name__}.")
        args = dict(config)
        backbone = args.pop("backbone", None)
        allowed = set(inspect.signature(cls).parameters) - {"backbone", "backbone_kwargs"}
        allowed |= set(inspect.signature(DiffusionModelUNet).parameters) - {
            "spatial_dims",
            "in_channels",
            "out_channels",
        }
        _check_names(args, allowed, cls.__name__)
        if backbone is not None:
            if not isinstance(backbone, Mapping) or backbone.get("class") not in _BACKBONES:
                raise ValueError(f"recorded backbone must be one of {sorted(_BACKBONES)}, got {backbone!r:.200}.")
            backbone_cls = _BACKBONES[backbone["class"]]()
            backbone_args = dict(backbone.get("args") or {})
            _check_names(backbone_args, constructor_arguments(backbone_cls), backbone["class"])
            args["backbone"] = backbone_cls(**backbone_args)
        return cls(**args)

    @property
    def image_size_multiple(self) -> int:
        """Image sizes must be divisible by this: 2 for the DWT (wavelet space) times 2 per U-Net downsampling."""
        return self.wavelet.scale * 2 ** (self.num_levels - 1)

    def check_image_size(self, size: Sequence[int], name: str = "image") -> None:
        """Raise a ValueError naming `name` if `size` (D, H, W) cannot pass through the network."""
        multiple = self.image_size_multiple
        bad = [int(s) for s in size if int(s) % multiple]
        if bad:
            raise ValueError(
                f"{name}: spatial size {tuple(int(s) for s in size)} is not divisible by {multiple} "
                f"({self._dwt_levels_text()}{self.num_levels - 1} U-Net "
                "downsamplings); pad or crop it, e.g. set "
                f"'image_size' to a multiple of {multiple}."
            )

    def _dwt_levels_text(self) -> str:
        if self.space != "wavelet":
            return ""
        levels = self.wavelet.levels
        return f"{levels} DWT level{'s' if levels > 1 else ''} and "

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor | int, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predict clean target coefficients.

        Args:
            x: (B, in_channels, d, h, w): x_t, then condition coefficients, then extra channels.
            timesteps: (B,) diffusion steps, or one step (int or 0-d tensor) for the whole batch
                (so that ``monai.bundle verify_net_in_out`` can pass it from the command line).
            context: unused by the default backbone (no cross-attention); passed through.

        Returns:
            (B, 8**L * image_channels, d, h, w) predicted x0 coefficients.
        """
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {x.shape[1]} (shape {tuple(x.shape)}).")
        if not torch.is_tensor(timesteps) or timesteps.ndim == 0:
            timesteps = torch.full((x.shape[0],), int(timesteps), dtype=torch.long, device=x.device)
        return self.backbone(x, timesteps=timesteps, context=context)
