"""3D Haar wavelet transform."""

from wdm_bundle.wavelets.constants import LLL_INDEX, PYWT_KEYS, SUBBANDS
from wdm_bundle.wavelets.functional import (
    crop_padding,
    dwt3d,
    dwt3d_levels,
    haar_filters,
    idwt3d,
    idwt3d_levels,
    pad_to_multiple,
)
from wdm_bundle.wavelets.transform import HaarWavelet3D, ImageSpace

__all__ = [
    "SUBBANDS",
    "PYWT_KEYS",
    "LLL_INDEX",
    "dwt3d",
    "idwt3d",
    "dwt3d_levels",
    "idwt3d_levels",
    "haar_filters",
    "pad_to_multiple",
    "crop_padding",
    "HaarWavelet3D",
    "ImageSpace",
]
