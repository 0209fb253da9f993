"""GroupNorm followed by SiLU as one autograd function that stores only its input.

Why: with activation checkpointing on, the training peak sits in the backward pass of a
recomputed ResBlock, where GroupNorm's output, SiLU's output and their gradients (each as wide
as the block input) coexist. This function keeps only the input and per-group statistics and
computes its backward one group at a time, so one of those full-size tensors never exists.
MONAI has no such op; the forward is numerically the same as ``F.silu(F.group_norm(...))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets.diffusion_model_unet import DiffusionUNetResnetBlock
from torch import nn

__all__ = ["group_norm_silu", "MemoryEfficientResnetBlock", "use_fused_group_norm_silu"]


class _GroupNormSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, groups: int, eps: float):
        # statistics in at least float32, one group at a time (no full-size copy of a half input)
        acc = torch.promote_types(x.dtype, torch.float32)
        grouped = x.reshape(x.shape[0], groups, -1)
        stats = [torch.var_mean(grouped[:, g].to(acc), dim=1, unbiased=False) for g in range(groups)]
        var, mean = (torch.stack(v, dim=1) for v in zip(*stats))
        ctx.save_for_backward(x, weight, bias, mean, torch.rsqrt(var + eps))
        ctx.groups = groups
        return F.silu(F.group_norm(x, groups, weight, bias, eps))

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        groups, (b, c) = ctx.groups, x.shape[:2]
        acc = mean.dtype
        per = c // groups
        spatial = (1,) * (x.ndim - 2)
        dx = torch.empty_like(x)
        dw = torch.empty_like(weight)
        db = torch.empty_like(bias)
        not_channel = (0, *range(2, x.ndim))
        in_group = tuple(range(1, x.ndim))
        n = per * x[0, 0].numel()
        for g in range(groups):
            ch = slice(g * per, (g + 1) * per)
            w = weight[ch].to(acc).reshape(1, per, *spatial)
            bb = bias[ch].to(acc).reshape(1, per, *spatial)
            m, r = mean[:, g].reshape(b, 1, *spatial), rstd[:, g].reshape(b, 1, *spatial)
            xhat = (x[:, ch].to(acc) - m) * r
            y = xhat * w + bb
            s = torch.sigmoid(y)
            gy = grad[:, ch].to(acc) * s * (1 + y * (1 - s))  # d silu(y) / dy
            del y, s
            dw[ch] = (gy * xhat).sum(not_channel).to(dw.dtype)
            db[ch] = gy.sum(not_channel).to(db.dtype)
            dxhat = gy * w
            del gy
            mean_d = dxhat.sum(in_group, keepdim=True) / n
            mean_dx = (dxhat * xhat).sum(in_group, keepdim=True) / n
            dx[:, ch] = (r * (dxhat - mean_d - xhat * mean_dx)).to(dx.dtype)
        return dx, dw, db, None, None


def group_norm_silu(x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """``silu(norm(x))`` for x (B, C, *spatial) and an affine ``nn.GroupNorm``, storing only x for the backward."""
    return _GroupNormSiLU.apply(x, norm.weight, norm.bias, norm.num_groups, norm.eps)


class MemoryEfficientResnetBlock(DiffusionUNetResnetBlock):
    """MONAI's `DiffusionUNetResnetBlock` (same parameters and forward) with fused GroupNorm+SiLU."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if not (isinstance(self.nonlinearity, nn.SiLU) and self.norm1.affine and self.norm2.affine):
            return super().forward(x, emb)
        h = group_norm_silu(x, self.norm1)
        if self.upsample is not None:
            x, h = self.upsample(x), self.upsample(h)
        elif self.downsample is not None:
            x, h = self.downsample(x), self.downsample(h)
        h = self.conv1(h)
        temb = self.time_emb_proj(self.nonlinearity(emb))
        h = h + temb.reshape(*temb.shape, *(1,) * self.spatial_dims)
        h = self.conv2(group_norm_silu(h, self.norm2))
        return self.skip_connection(x) + h


def use_fused_group_norm_silu(backbone: nn.Module) -> int:
    """Switch every MONAI `DiffusionUNetResnetBlock` in ``backbone`` to `MemoryEfficientResnetBlock`; return the count."""
    n = 0
    for module in backbone.modules():
        if type(module) is DiffusionUNetResnetBlock:
            module.__class__ = MemoryEfficientResnetBlock
            n += 1
    return n
