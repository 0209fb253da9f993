"""Data: datalists, input validation, the resumable training sampler and the embedded demo data set."""

from wdm_bundle.data.demo import CONTRASTS, make_demo_dataset, make_demo_subject
from wdm_bundle.data.datalists import NIFTI_SUFFIXES, build_datalist, find_case_files
from wdm_bundle.data.samplers import ResumableSampler
from wdm_bundle.data.transforms import Placement, framing_transform, invert_framing, synthesis_preprocessing
from wdm_bundle.data.validation import InvalidDataError, resolve_image_size, validate_images, volume_shape

__all__ = [
    "CONTRASTS", "make_demo_dataset", "make_demo_subject",
    "NIFTI_SUFFIXES", "build_datalist", "find_case_files", "InvalidDataError", "resolve_image_size",
    "validate_images", "volume_shape", "ResumableSampler",
    "Placement", "framing_transform", "invert_framing", "synthesis_preprocessing",
]
