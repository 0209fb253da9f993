"""MONAI Label app serving this bundle: ``synthesis`` (cWDM, missing contrast), ``generation`` (WDM) and
``inpainting`` (a voided image and its mask in, the inpainted image out).

    monailabel start_server --app apps/monailabel_wdm --studies /data/BraTS --host 127.0.0.1 \\
        --conf synthesis#ckpt_dir models

Conf keys (``--conf key value``; values are JSON when they parse, e.g. ``10``, ``"[16,32,32]"``):
    bundle_root          bundle folder with configs/ (default: two folders above this app)
    synthesis_configs    comma-separated config files (default configs/inference_cwdm.json)
    generation_configs   comma-separated config files (default configs/inference.json)
    inpainting_configs   comma-separated config files (default configs/inference_inpaint.json)
    synthesis#<id>       override config id <id> of the synthesis configs, e.g. synthesis#ckpt_dir,
                         synthesis#sampler, synthesis#num_inference_steps, synthesis#network_def#channels
    generation#<id>      the same for generation, e.g. generation#ckpt_path, generation#image_size
    inpainting#<id>      the same for inpainting, e.g. inpainting#ckpt_path, inpainting#sampler, inpainting#jump_length
    max_inference_steps  most sampling steps one request may take (default 1000); more: 422
    max_voxels           most voxels of an input or generated volume (default 256**3); more: 413
    max_network_calls    most network evaluations of one inpainting request (default 10 x max_inference_steps); more: 422
    max_queue            most requests queued or running (default 4); more: 429
    max_upload_mb        largest upload (default 512); more: 413
    cors_origins         comma-separated browser origins allowed cross-origin (default none); used when
                         MONAI_LABEL_CORS_ORIGINS is not set
    allow_remote         true: serve on a non-loopback --host without MONAI_LABEL_AUTH_ENABLE (default false:
                         the server refuses to start that way)
A task whose weights do not exist or cannot be loaded is left out (logged). See docs/monailabel.md (Security).
"""

import atexit
import ipaddress
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import replace

from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp

from wdm_bundle.label.datastore import CaseFolderDatastore, state_dir_for
from wdm_bundle.label.inputs import parse_conf_value
from wdm_bundle.label.server import ServerSettings, install
from wdm_bundle.label.services import Limits
from wdm_bundle.label.tasks import build_tasks, check_image_id

logger = logging.getLogger(__name__)


def _conf_int(conf, key, default):
    value = parse_conf_value(conf.get(key, "")) if conf.get(key) not in (None, "") else default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"--conf {key} must be a positive integer, got {conf.get(key)!r}.")
    return value


def _server_host():
    """The ``--host`` of ``monailabel start_server`` in this process (MONAI Label's default is 0.0.0.0)."""
    argv = sys.argv
    if "start_server" not in argv:
        return None
    for i, arg in enumerate(argv[:-1]):
        if arg in ("--host", "-i"):
            return argv[i + 1]
    return "0.0.0.0"


def _is_loopback(host):
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class WDMApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        host = _server_host()
        if (
            host is not None
            and not _is_loopback(host)
            and not settings.MONAI_LABEL_AUTH_ENABLE
            and str(conf.get("allow_remote", "")).lower() != "true"
        ):
            raise RuntimeError(
                f"refusing to serve on --host {host} without authentication: use --host 127.0.0.1, or "
                "enable MONAI Label's auth (MONAI_LABEL_AUTH_ENABLE=true), or pass --conf allow_remote "
                "true behind an authenticating proxy (docs/monailabel.md, Security)."
            )
        self.limits = Limits(
            max_inference_steps=_conf_int(conf, "max_inference_steps", Limits.max_inference_steps),
            max_voxels=_conf_int(conf, "max_voxels", Limits.max_voxels),
        )
        if conf.get("max_network_calls") not in (None, ""):
            self.limits = replace(self.limits, max_network_calls=_conf_int(conf, "max_network_calls", None))
        origins = tuple(o.strip() for o in str(conf.get("cors_origins", "")).split(",") if o.strip())
        self.server_settings = ServerSettings(
            max_queue=_conf_int(conf, "max_queue", ServerSettings.max_queue),
            max_upload_mb=_conf_int(conf, "max_upload_mb", ServerSettings.max_upload_mb),
            cors_origins=origins,
        )
        # why: uploads (MONAI Label's and ours) and results go to a private folder, files readable by the server only
        os.umask(0o077)
        private = tempfile.mkdtemp(prefix="wdm-label-")
        tempfile.tempdir = private
        atexit.register(shutil.rmtree, private, True)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="wdm-bundle",
            description="3D wavelet diffusion: missing-contrast synthesis (cWDM), generation (WDM), inpainting",
        )
        server = sys.modules.get("monailabel.app")  # the running server's FastAPI app (absent in CLI use)
        if server is not None and hasattr(server, "app"):
            install(server.app, self, self.server_settings)

    def init_datastore(self):
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        return CaseFolderDatastore(
            self.studies,
            state_dir=state_dir_for(self.app_dir, self.studies),
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self):
        default_root = os.path.dirname(os.path.dirname(os.path.realpath(self.app_dir)))
        return build_tasks(self.conf, default_root, self.limits)

    def infer(self, request, datastore=None):
        check_image_id(request, datastore or self.datastore(), self._infers)
        return super().infer(request, datastore)
