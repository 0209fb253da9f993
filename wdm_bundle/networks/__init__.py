"""Networks that work in wavelet space."""

from wdm_bundle.networks.wavelet_unet import PAPER_CHANNELS, WaveletDiffusionUNet

__all__ = ["WaveletDiffusionUNet", "PAPER_CHANNELS"]
