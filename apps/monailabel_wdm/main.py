"""MONAI Label app serving this bundle: ``synthesis`` (cWDM, missing contrast) and ``generation`` (WDM).

    monailabel start_server --app apps/monailabel_wdm --studies /data/BraTS --conf synthesis#ckpt_dir models

Conf keys (``--conf key value``; values are JSON when they parse, e.g. ``10``, ``"[16,32,32]"``):
    bundle_root          bundle folder with configs/ (default: two folders above this app)
    synthesis_configs    comma-separated config files (default configs/inference_cwdm.json)
    generation_configs   comma-separated config files (default configs/inference.json)
    synthesis#<id>       override config id <id> of the synthesis configs, e.g. synthesis#ckpt_dir,
                         synthesis#sampler, synthesis#num_inference_steps, synthesis#network_def#channels
    generation#<id>      the same for generation, e.g. generation#ckpt_path, generation#image_size
A task whose weights do not exist is left out (logged). See docs/monailabel.md.
"""

import logging
import os

from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp

from wdm_bundle.label.tasks import build_tasks, check_image_id
from wdm_bundle.label.datastore import CaseFolderDatastore

logger = logging.getLogger(__name__)


class WDMApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="wdm-bundle",
                         description="3D wavelet diffusion: missing-contrast synthesis (cWDM), generation (WDM)")

    def init_datastore(self):
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        return CaseFolderDatastore(self.studies, extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
                                   auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
                                   read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY)

    def init_infers(self):
        default_root = os.path.dirname(os.path.dirname(os.path.realpath(self.app_dir)))
        return build_tasks(self.conf, default_root)

    def infer(self, request, datastore=None):
        check_image_id(request, datastore or self.datastore(), self._infers)
        return super().infer(request, datastore)
