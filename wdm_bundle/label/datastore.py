"""`CaseFolderDatastore`: MONAI Label's local datastore over BraTS case folders, confined to the studies folder."""

from __future__ import annotations

import hashlib
import os
import tempfile

from fastapi import HTTPException
from monailabel.datastore.local import LocalDatastore
from monailabel.utils.others.generic import remove_file

from wdm_bundle.label.inputs import RequestError, check_name

__all__ = ["CaseFolderDatastore", "state_dir_for"]


def state_dir_for(app_dir: str | os.PathLike, studies: str | os.PathLike) -> str:
    """Where the datastore keeps its own files for ``studies``: ``<app_dir>/datastore/<studies name>-<hash>``."""
    studies = os.path.realpath(studies)
    digest = hashlib.sha256(studies.encode()).hexdigest()[:12]
    return os.path.join(os.path.realpath(app_dir), "datastore", f"{os.path.basename(studies) or 'studies'}-{digest}")


def _check_id(image_id: str, what: str = "image") -> str:
    """A client-given image id: ``<name>`` or ``<case>/<name>``, each part a `check_name` name."""
    try:
        if not isinstance(image_id, str) or not image_id:
            raise RequestError(f"'{what}' must be a non-empty id.")
        parts = image_id.split("/")
        if len(parts) > 2:
            raise RequestError(f"'{what}' may have at most one folder: '<case>/<name>' or '<name>'.")
        for part in parts:
            check_name(part, what)
    except RequestError as e:
        raise HTTPException(status_code=e.status, detail=str(e)) from e
    return image_id


class CaseFolderDatastore(LocalDatastore):
    """`LocalDatastore` that also lists the images one folder down: ``<studies>/<case>/<case>-<contrast>.nii.gz``.

    Why a subclass: MONAI Label's `LocalDatastore` lists only files directly in the studies
    folder, while BraTS keeps each case in its own folder. Image ids are the relative paths
    without extension (``<case>/<case>-t1n``); `get_image_uri` also accepts the file stem
    (``<case>-t1n``) or the case folder name (``<case>``, giving its first image file).
    Files directly in the studies folder are listed as before.

    Confinement: ids a client gives (``PUT /datastore/image?image=``, labels, ``DELETE``) must be
    ``<name>`` or ``<case>/<name>`` with names of letters, digits, ``.``, ``_``, ``-`` (no ``..``, no
    absolute paths), and every file the datastore reads, writes or deletes must resolve inside the
    studies folder (symlinks included), else 4xx. The datastore's own files (``datastore_v2.json``,
    ``labels/``, its lock) go to ``state_dir``, not into the studies folder, so a served folder stays
    a plain folder of cases for the command-line synthesis.
    """

    def __init__(self, studies: str, state_dir: str | None = None, **kwargs) -> None:
        self._studies = os.path.realpath(studies)
        if state_dir is None:  # MONAI Label's layout: everything in the studies folder
            super().__init__(studies, **kwargs)
        else:
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
            super().__init__(
                state_dir, images_dir=self._studies, labels_dir=os.path.join(state_dir, "labels"), **kwargs
            )

    def _inside(self, path: str) -> str:
        real = os.path.realpath(path)
        if os.path.commonpath([real, self._studies]) != self._studies:
            raise HTTPException(status_code=403, detail="the id resolves outside the studies folder.")
        return real

    def _list_files(self, path, patterns):
        files = super()._list_files(path, patterns)
        labels = os.path.realpath(self._datastore.label_path(None))
        for sub in sorted(os.listdir(path)):
            folder = os.path.join(path, sub)
            if sub.startswith(".") or not os.path.isdir(folder) or os.path.realpath(folder) == labels:
                continue
            for name in super()._list_files(folder, patterns):
                files[f"{sub}/{name}"] = f"{sub}/{name}"
        return files

    def get_image_uri(self, image_id: str) -> str:
        if not isinstance(image_id, str):
            return ""
        uri = super().get_image_uri(image_id)
        if not uri and image_id:
            ids = sorted(self._datastore.objects)
            by_stem = [i for i in ids if i.rsplit("/", 1)[-1] == image_id]
            by_case = [i for i in ids if i.split("/", 1)[0] == image_id and "/" in i]
            match = by_stem if len(by_stem) == 1 else by_case
            uri = super().get_image_uri(match[0]) if match else ""
        if uri and os.path.commonpath([os.path.realpath(uri), self._studies]) != self._studies:
            return ""  # e.g. a symlink out of the studies folder: not served
        return uri

    def add_image(self, image_id, image_filename, image_info):
        try:
            return self._add_image(image_id, image_filename, image_info)
        except Exception:
            # why: MONAI Label removes its temp copy of the upload only after a successful reply
            if os.path.commonpath(
                [os.path.realpath(image_filename), os.path.realpath(tempfile.gettempdir())]
            ) == os.path.realpath(tempfile.gettempdir()):
                remove_file(image_filename)
            raise

    def _add_image(self, image_id, image_filename, image_info):
        if image_id:
            _check_id(image_id)
        else:  # MONAI Label then names it after the uploaded file
            image_id = _check_id(self._to_id(os.path.basename(image_filename))[0])
        _, ext = self._to_id(os.path.basename(image_filename))
        if ext not in [e.replace("*", "") for e in self._extensions]:
            raise HTTPException(status_code=415, detail=f"only {', '.join(self._extensions)} files are accepted.")
        dest = os.path.join(self._datastore.image_path(), self._filename(image_id, ext))
        self._inside(dest)
        if "/" in image_id and not os.path.isdir(os.path.dirname(dest)):
            raise HTTPException(status_code=404, detail=f"case folder '{image_id.split('/')[0]}' does not exist.")
        return super().add_image(image_id, image_filename, image_info)

    def remove_image(self, image_id):
        _check_id(image_id)
        uri = super().get_image_uri(image_id)
        if uri:
            self._inside(uri)
        return super().remove_image(image_id)

    def save_label(self, image_id, label_filename, label_tag, label_info):
        _check_id(image_id)
        _check_id(label_tag, "tag")
        return super().save_label(image_id, label_filename, label_tag, label_info)

    def remove_label(self, label_id, label_tag):
        _check_id(label_id)
        _check_id(label_tag, "tag")
        return super().remove_label(label_id, label_tag)
