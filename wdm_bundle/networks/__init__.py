"""Networks that work in wavelet space."""

from wdm_bundle.networks.wavelet_unet import PAPER_CHANNELS, WaveletDiffusionUNet

__all__ = ["WaveletDiffusionUNet", "PAPER_CHANNELS"]

from wdm_bundle.networks.reference_checkpoint import (  # noqa: E402
    REFERENCE_CONFIGS,
    ReferenceCheckpointError,
    build_reference_network,
    detect_reference_config,
    export_reference_state_dict,
    import_reference_state_dict,
)

# reference WDM / cWDM backbones and their checkpoint import/export
from wdm_bundle.networks.reference_unet import SkipMode, WDMUNet  # noqa: E402
from wdm_bundle.networks.wavunet import WavUNet  # noqa: E402

__all__ += [
    "SkipMode",
    "WDMUNet",
    "WavUNet",
    "REFERENCE_CONFIGS",
    "ReferenceCheckpointError",
    "build_reference_network",
    "detect_reference_config",
    "export_reference_state_dict",
    "import_reference_state_dict",
]
