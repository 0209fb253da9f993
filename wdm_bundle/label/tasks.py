"""MONAI Label infer tasks: ``synthesis`` (cWDM, missing contrast), ``generation`` (WDM, unconditional) and
``inpainting`` (a voided image and its mask in, the inpainted image out).

All are `BasicInferTask`s whose steps call the bundle's services (`wdm_bundle.label.services`):
pre-transforms = read and check the request, inferer = sample, writer = NIfTI with the right
geometry. A bad request raises FastAPI's `HTTPException` with a 4xx code and a message naming the
problem; MONAI Label passes it through to the client and the server keeps running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from wdm_bundle.label.inpainting import InpaintingService
from wdm_bundle.label.inputs import RequestError, redact_paths
from wdm_bundle.label.services import GenerationService, Limits, SynthesisService, configs_from_conf

__all__ = ["SynthesisInfer", "GenerationInfer", "InpaintingInfer", "build_tasks", "check_image_id"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def http_errors() -> Iterator[None]:
    """RequestError -> HTTPException with its status (MONAI Label answers other exceptions with a bare 500)."""
    try:
        yield
    except RequestError as e:
        raise HTTPException(status_code=e.status, detail=redact_paths(str(e))) from e


class _ServiceInfer(BasicInferTask):
    """A task around a service: its weights are the task's paths, its defaults the task's config (shown in /info)."""

    def __init__(self, service: Any, description: str) -> None:
        super().__init__(
            path=service.weights,
            network=None,
            type=InferType.OTHERS,
            labels=None,
            dimension=3,
            description=description,
            config=service.defaults(),
        )
        self.service = service
        self.out_dir = tempfile.mkdtemp(prefix="wdm-label-")  # private (0700); MONAI Label deletes each result

    def post_transforms(self, data=None):
        return []


class SynthesisInfer(_ServiceInfer):
    """Synthesise the missing contrast of one case; the result has the case's shape, affine and header.

    Datastore route: ``image`` = id of any contrast file of the case; its other contrasts are read
    from the same folder. Upload route: ``file`` = a 4D NIfTI of the available contrasts with params
    ``{"contrasts": [...]}`` in volume order (optional ``"case"``). Optional params: ``target``,
    ``seed``, ``sampler``, ``num_inference_steps``.
    """

    def __init__(self, service: SynthesisService) -> None:
        super().__init__(service, f"cWDM: synthesise the missing one of {', '.join(service.contrasts)} from the others")

    def pre_transforms(self, data=None):
        return [self._load]

    def _load(self, data: dict) -> dict:
        with http_errors():
            data["wdm_inputs"] = self.service.load(data.get("image_path") or data.get("image"), data)
        return data

    def run_inferer(self, data, convert_to_batch=True, device="cuda"):
        with http_errors():
            data["pred"] = self.service.run(data["wdm_inputs"])
        return data

    def writer(self, data, extension=None, dtype=None):
        return self.service.write(data["wdm_inputs"], data["pred"], self.out_dir)


class GenerationInfer(_ServiceInfer):
    """Sample one volume from the unconditional WDM (``image`` is not used; MONAI Label needs one: pass any id).

    Optional params: ``seed``, ``sampler``, ``num_inference_steps``.
    """

    def __init__(self, service: GenerationService) -> None:
        super().__init__(service, "WDM: sample a new volume (params: seed, sampler, num_inference_steps)")

    def pre_transforms(self, data=None):
        return []

    def run_inferer(self, data, convert_to_batch=True, device="cuda"):
        with http_errors():
            data["wdm_result"] = self.service(data, self.out_dir)
        return data

    def writer(self, data, extension=None, dtype=None):
        return data["wdm_result"]


class InpaintingInfer(_ServiceInfer):
    """Inpaint one case: ``image`` = id of its voided image, its mask or its case folder; the other file is found
    beside it by name. The result has the voided image's shape, affine and header and equals it outside the mask.

    Optional params: ``seed``, ``sampler``, ``num_inference_steps``, ``jump_length``, ``jump_n_sample``. (Uploads
    of the image and the mask go through the app's own ``/infer`` route, `wdm_bundle.label.server`.)
    """

    def __init__(self, service: InpaintingService) -> None:
        super().__init__(service, "inpainting: fill the masked region of a voided image (image + mask in)")

    def pre_transforms(self, data=None):
        return []

    def run_inferer(self, data, convert_to_batch=True, device="cuda"):
        with http_errors():
            data["wdm_result"] = self.service(data.get("image_path") or data.get("image"), data, self.out_dir)
        return data

    def writer(self, data, extension=None, dtype=None):
        return data["wdm_result"]


def check_image_id(request: Mapping[str, Any], datastore: Any, tasks: Mapping[str, Any]) -> None:
    """404 naming the id when a synthesis or inpainting request's ``image`` is not in the datastore (paths are not
    accepted).

    (MONAI Label replaces an unknown id by "" before the task sees it.) The app's own ``/infer`` route
    (`wdm_bundle.label.server`) does this check itself; this one guards MONAI Label's code paths.
    """
    image = request.get("image")
    if (
        isinstance(tasks.get(request.get("model")), (SynthesisInfer, InpaintingInfer))
        and isinstance(image, str)
        and image
    ):
        if os.path.isabs(image) or ".." in image.split("/") or not datastore.get_image_uri(image):
            raise HTTPException(
                status_code=404,
                detail=(
                    f"image '{image[:80]}' is not in the datastore: pass the id of a contrast file "
                    "('<case>/<case>-t1n' or "
                    "'<case>-t1n') or a case folder name ('<case>'); GET /datastore/?output=all lists the ids."
                ),
            )


def build_tasks(
    conf: Mapping[str, str], default_root: str | os.PathLike, limits: Limits | None = None
) -> dict[str, BasicInferTask]:
    """The app's infer tasks from its ``--conf`` pairs.

    A task whose weights do not exist, or whose config or weights cannot be loaded, is left out (logged);
    the others are served.
    """
    configs = configs_from_conf(conf, default_root)
    tasks: dict[str, BasicInferTask] = {}
    try:
        synthesis = SynthesisService(configs["synthesis"], limits)
        if any(Path(w).is_file() for w in synthesis.weights):
            tasks["synthesis"] = SynthesisInfer(synthesis)
        else:
            logger.warning(
                f"'synthesis' task left out: weights {synthesis.weights} not found (set --conf "
                "synthesis#ckpt_dir or synthesis#ckpt_path)."
            )
    except Exception as e:
        logger.warning(f"'synthesis' task left out: cannot load it ({type(e).__name__}: {e}).")
    for name, service, infer in (
        ("generation", GenerationService, GenerationInfer),
        ("inpainting", InpaintingService, InpaintingInfer),
    ):
        try:
            ckpt = configs[name].parse("ckpt_path")
            if Path(ckpt).is_file():
                tasks[name] = infer(service(configs[name], limits))
            else:
                logger.warning(f"'{name}' task left out: weights '{ckpt}' not found (set --conf {name}#ckpt_path).")
        except Exception as e:
            logger.warning(f"'{name}' task left out: cannot load it ({type(e).__name__}: {e}).")
    return tasks
