"""Hardening of the MONAI Label server around this app: its own ``/infer/{task}`` route, blocked routes, strict CORS.

Why a route of our own: MONAI Label 0.8.5's ``/infer`` runs the task on the event loop (one request
blocks ``/info/`` and every other client), writes uploads world-readable into the system temp folder
and answers client errors (``params`` that is not a JSON object, an unknown task) with 500. This
route takes precedence over it (it is put first in the router) and

* checks the task, ``params`` (a JSON object with only the task's keys), ``image`` (a datastore id,
  never a path) and the upload (size cap) before anything runs: a 4xx with a message otherwise;
* runs inference on one worker thread off the event loop, with a bounded queue: more than
  ``max_queue`` requests waiting or running get 429;
* keeps uploads and results in a private per-request folder (mode 0700), removed after the reply;
* never puts an absolute server path into a reply.

Everything else is MONAI Label's, with MONAI Label's authentication (``MONAI_LABEL_AUTH_ENABLE``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from typing import Any, Optional

from fastapi import BackgroundTasks, Depends, File, Form, HTTPException, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.routing import APIRoute
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User
from starlette.middleware.cors import CORSMiddleware

from wdm_bundle.label.inputs import RequestError, check_name, parse_params, redact_paths

__all__ = ["ServerSettings", "InferQueue", "install", "BLOCKED_PREFIXES"]

logger = logging.getLogger(__name__)

#: MONAI Label routes this app does not serve (weights download/upload, training, batch infer on
#: client params, sessions, logs with server paths, viewers and proxies): answered with 404.
BLOCKED_PREFIXES = (
    "/model",
    "/train",
    "/batch",
    "/scoring",
    "/session",
    "/logs",
    "/infer/wsi",
    "/ohif",
    "/proxy",
    "/activelearning",
)

#: Request params each task accepts (a closed set; anything else is a 422).
TASK_PARAMS = {
    "synthesis": {"contrasts", "target", "case", "seed", "sampler", "num_inference_steps", "timestep_spacing"},
    "generation": {"seed", "sampler", "num_inference_steps", "timestep_spacing"},
    "inpainting": {
        "case",
        "seed",
        "sampler",
        "num_inference_steps",
        "timestep_spacing",
        "jump_length",
        "jump_n_sample",
    },
}
#: Tasks that take an uploaded ``mask`` (besides the ``file`` upload).
MASK_TASKS = {"inpainting"}


@dataclass(frozen=True)
class ServerSettings:
    """Conf keys of the server part (``--conf key value``)."""

    max_queue: int = 4  # requests waiting or running per server; more get 429
    max_upload_mb: int = 512  # upload size cap; more gets 413
    cors_origins: tuple[str, ...] = ()  # browser origins allowed cross-origin (default: none)


class ResultType(str, Enum):
    image = "image"
    json = "json"


class InferQueue:
    """One worker thread for inference, at most ``max_queue`` requests queued or running (else 429)."""

    def __init__(self, max_queue: int) -> None:
        self.max_queue = int(max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wdm-infer")
        self._slots = threading.BoundedSemaphore(self.max_queue)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if not self._slots.acquire(blocking=False):
            raise HTTPException(
                status_code=429,
                detail=f"the server is busy: {self.max_queue} requests are queued or "
                "running (conf max_queue); try again later.",
            )
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        finally:
            self._slots.release()


def _error(status: int, detail: str) -> HTTPException:
    return HTTPException(status_code=status, detail=redact_paths(detail))


def _save_upload(upload: UploadFile, folder: str, max_bytes: int, stem: str = "upload") -> str:
    name = os.path.basename(upload.filename or "")
    ext = ".nii" if name.endswith(".nii") else ".nii.gz"
    path = os.path.join(folder, f"{stem}{ext}")
    size = 0
    with open(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600), "wb") as out:
        while chunk := upload.file.read(1 << 20):
            size += len(chunk)
            if size > max_bytes:
                raise _error(413, f"the upload is larger than {max_bytes >> 20} MB (conf max_upload_mb).")
            out.write(chunk)
    if size == 0:
        raise _error(422, "the uploaded file is empty.")
    return path


def make_infer_endpoint(wdm_app: Any, queue: InferQueue, conf: ServerSettings) -> Callable[..., Any]:
    form_params, form_file, form_mask = Form("{}"), File(None), File(None)  # FastAPI's declarations, made once
    authorised_user = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))

    async def infer(
        background_tasks: BackgroundTasks,
        model: str,
        image: str = "",
        output: Optional[ResultType] = None,
        params: str = form_params,
        file: UploadFile = form_file,
        mask: UploadFile = form_mask,
        user: User = authorised_user,
    ):
        tasks = wdm_app._infers
        task = tasks.get(model)
        if task is None:
            raise _error(404, f"unknown task {model[:40]!r}; this server has {sorted(tasks)}.")
        try:
            p = parse_params(params)
            allowed = TASK_PARAMS.get(model, set())
            unknown = sorted(str(k)[:40] for k in p if k not in allowed)
            if unknown:
                raise RequestError(f"unknown param(s) {unknown} for task '{model}'; allowed: {sorted(allowed)}.")
            if mask is not None and model not in MASK_TASKS:
                raise RequestError(f"task '{model}' takes no 'mask' upload; {sorted(MASK_TASKS)} do.")
        except RequestError as e:
            raise _error(e.status, str(e)) from e
        folder = tempfile.mkdtemp(prefix="wdm-request-")  # private (0700): the upload and the result
        background_tasks.add_task(shutil.rmtree, folder, True)
        try:
            if model in MASK_TASKS:
                path, inputs = _inpainting_inputs(
                    image, file, mask, wdm_app.datastore(), folder, conf.max_upload_mb << 20
                )
                call = functools.partial(task.service, path, p, folder, **inputs)
            elif file is not None and model == "synthesis":
                call = functools.partial(task.service, _save_upload(file, folder, conf.max_upload_mb << 20), p, folder)
            elif model == "synthesis":
                call = functools.partial(task.service, resolve_image(image, wdm_app.datastore()), p, folder)
            else:
                call = functools.partial(task.service, p, folder)
            result_path, info = await queue.run(call)
        except HTTPException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        except RequestError as e:
            shutil.rmtree(folder, ignore_errors=True)
            raise _error(e.status, str(e)) from e
        except Exception as e:  # a bug or a broken model: logged here, no server detail to the client
            shutil.rmtree(folder, ignore_errors=True)
            logger.exception(f"infer '{model}' failed")
            raise HTTPException(
                status_code=500, detail=f"inference failed ({type(e).__name__}); see the server log."
            ) from e
        if output == ResultType.json:
            return JSONResponse(info)
        return FileResponse(result_path, media_type="application/gzip", filename=os.path.basename(result_path))

    return infer


def _inpainting_inputs(
    image: str, file: Optional[UploadFile], mask: Optional[UploadFile], datastore: Any, folder: str, max_bytes: int
) -> tuple[str, dict[str, Any]]:
    """The image file (upload, datastore file or case folder) of an inpainting request and the keyword arguments
    of `InpaintingService` (``mask``: the uploaded mask; ``upload``; ``root``: the studies folder)."""
    mask_path = _save_upload(mask, folder, max_bytes, "mask") if mask is not None else None
    if file is not None:
        return _save_upload(file, folder, max_bytes, "image"), {"mask": mask_path, "upload": True}
    hint = "pass 'image' (a datastore id: '<case>' or '<case>/<case>-t1n-voided') or upload 'file' and 'mask'."
    uri = resolve_image(image, datastore, hint)
    if "/" not in image and os.path.basename(os.path.dirname(uri)) == image:  # a case folder name
        uri = os.path.dirname(uri)
    root = getattr(datastore, "_studies", None)  # CaseFolderDatastore: the mask found beside must be inside it too
    return uri, {"mask": mask_path, "root": root}


def resolve_image(image: Any, datastore: Any, hint: str = "") -> str:
    """The file of a synthesis (inpainting) request's ``image`` id, inside the studies folder; ids only, never paths."""
    if not image:
        raise _error(
            422,
            hint
            or "pass 'image' (a datastore id, e.g. '<case>' or '<case>/<case>-t1n') or upload 'file' "
            'with params {"contrasts": [...]}.',
        )
    try:
        parts = image.split("/")
        if len(parts) > 2:
            raise RequestError("too many folders")
        for part in parts:
            check_name(part, "image")
    except RequestError as e:
        raise _error(
            422,
            "'image' must be a datastore id ('<case>', '<case>-t1n' or '<case>/<case>-t1n': letters, "
            "digits, '.', '_', '-'), not a path; GET /datastore/?output=all lists the ids.",
        ) from e
    uri = datastore.get_image_uri(image)
    if not uri:
        raise _error(
            404,
            f"image '{image}' is not in the datastore: pass the id of a contrast file ('<case>/<case>-t1n' "
            "or '<case>-t1n') or a case folder name ('<case>'); GET /datastore/?output=all lists the ids.",
        )
    return uri


async def _blocked():
    raise HTTPException(status_code=404, detail="not served by this app.")


def restrict_cors(fastapi_app: Any, origins: Iterable[str]) -> None:
    """Allow only ``origins`` cross-origin (MONAI Label's default is any origin, with credentials).

    Used only when ``MONAI_LABEL_CORS_ORIGINS`` is not set (then MONAI Label's own list applies).
    """
    if settings.MONAI_LABEL_CORS_ORIGINS:
        return
    origins = [o for o in origins if o and o != "*"]
    found = False
    node = getattr(fastapi_app, "middleware_stack", None)
    while node is not None:
        if isinstance(node, CORSMiddleware):
            node.__init__(
                node.app, allow_origins=origins, allow_credentials=True, allow_methods=["*"], allow_headers=["*"]
            )
            found = True
        node = getattr(node, "app", None)
    if not found:  # stack not built yet: change the declared middleware
        for m in getattr(fastapi_app, "user_middleware", []):
            if m.cls is CORSMiddleware:
                m.kwargs["allow_origins"] = origins
    logger.info(f"CORS: allowed origins {origins or 'none (same origin only)'}")


def install(fastapi_app: Any, wdm_app: Any, conf: ServerSettings) -> InferQueue:
    """Put this app's ``/infer/{model}`` and the blocked routes first in ``fastapi_app``; restrict CORS."""
    queue = InferQueue(conf.max_queue)
    api = settings.MONAI_LABEL_API_STR
    routes = [
        APIRoute(
            f"{api}/infer/{{model}}",
            make_infer_endpoint(wdm_app, queue, conf),
            methods=["POST"],
            summary="Run a wdm-bundle task (hardened; see docs/monailabel.md)",
        )
    ]
    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]
    for prefix in BLOCKED_PREFIXES:
        for path in (f"{api}{prefix}", f"{api}{prefix}/{{rest:path}}"):
            routes.append(APIRoute(path, _blocked, methods=methods, include_in_schema=False))
    fastapi_app.router.routes[:0] = routes
    restrict_cors(fastapi_app, conf.cors_origins)
    return queue
