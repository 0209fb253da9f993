"""Noise schedules, samplers and the wavelet diffusion inferer."""

from wdm_bundle.diffusion.inferer import WaveletDiffusionInferer, unwrap_model
from wdm_bundle.diffusion.schedulers import Sampler, make_scheduler

__all__ = ["WaveletDiffusionInferer", "unwrap_model", "Sampler", "make_scheduler"]
