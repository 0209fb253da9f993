"""Noise schedules, samplers and the wavelet diffusion inferer."""

from wdm_bundle.diffusion import schedulers as _schedulers
from wdm_bundle.diffusion import weighting as _weighting
from wdm_bundle.diffusion.inferer import WaveletDiffusionInferer, unwrap_model
from wdm_bundle.diffusion.losses import InpaintingLoss, LossRegion, WeightedDiffusionLoss, training_loss
from wdm_bundle.diffusion.repaint import RePaintInferer, resampling_schedule
from wdm_bundle.diffusion.schedulers import (
    RFLOW_X0_MIN_T,
    VARIANCE_TYPES,
    DDIMScheduler64,
    DDPMScheduler64,
    Diffusion,
    Float64Schedule,
    Sampler,
    TimestepSampling,
    TimestepSpacing,
    VarianceType,
    check_sampler,
    diffusion_of,
    make_scheduler,
    training_scheduler,
    velocity_from_x0,
)
from wdm_bundle.diffusion.weighting import *  # noqa: F401,F403  (exported below via __all__)

__all__ = [
    "WaveletDiffusionInferer",
    "InpaintingLoss",
    "LossRegion",
    "WeightedDiffusionLoss",
    "training_loss",
    *_weighting.__all__,
    "RePaintInferer",
    "resampling_schedule",
    "unwrap_model",
    *_schedulers.__all__,
]
