"""Noise schedules, samplers and the wavelet diffusion inferer."""

from wdm_bundle.diffusion.inferer import WaveletDiffusionInferer, unwrap_model
from wdm_bundle.diffusion.schedulers import (
    VARIANCE_TYPES,
    DDIMScheduler64,
    DDPMScheduler64,
    Diffusion,
    Float64Schedule,
    Sampler,
    check_sampler,
    diffusion_of,
    make_scheduler,
)

__all__ = [
    "WaveletDiffusionInferer",
    "unwrap_model",
    "Sampler",
    "Diffusion",
    "make_scheduler",
    "diffusion_of",
    "check_sampler",
    "Float64Schedule",
    "DDPMScheduler64",
    "DDIMScheduler64",
    "VARIANCE_TYPES",
]
