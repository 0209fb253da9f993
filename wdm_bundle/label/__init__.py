"""MONAI Label serving for this bundle (apps/monailabel_wdm).

`inputs` and `services` need only the bundle's own dependencies; `tasks` and `datastore` import
monailabel (install the ``label`` extra with scripts/setup_monailabel_env.sh), so this package
imports neither eagerly.
"""

from wdm_bundle.label.inpainting import InpaintingService
from wdm_bundle.label.inputs import RequestError
from wdm_bundle.label.services import BundleConfig, GenerationService, SynthesisService, configs_from_conf

__all__ = [
    "RequestError",
    "BundleConfig",
    "SynthesisService",
    "GenerationService",
    "InpaintingService",
    "configs_from_conf",
]
