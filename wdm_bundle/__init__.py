"""wdm-bundle: 3D wavelet diffusion models (WDM, cWDM) as a MONAI bundle."""

from wdm_bundle import data, diffusion, engines, metrics, networks, reports, utils, wavelets

__version__ = "0.6.0"
__all__ = ["data", "diffusion", "engines", "metrics", "networks", "reports", "utils", "wavelets", "__version__"]
