"""`CaseFolderDatastore`: MONAI Label's local datastore over BraTS case folders."""

from __future__ import annotations

import os

from monailabel.datastore.local import LocalDatastore

__all__ = ["CaseFolderDatastore"]


class CaseFolderDatastore(LocalDatastore):
    """`LocalDatastore` that also lists the images one folder down: ``<studies>/<case>/<case>-<contrast>.nii.gz``.

    Why a subclass: MONAI Label's `LocalDatastore` lists only files directly in the studies
    folder, while BraTS keeps each case in its own folder. Image ids are the relative paths
    without extension (``<case>/<case>-t1n``); `get_image_uri` also accepts the file stem
    (``<case>-t1n``) or the case folder name (``<case>``, giving its first image file).
    Files directly in the studies folder are listed as before.
    """

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
        uri = super().get_image_uri(image_id)
        if uri or not image_id:
            return uri
        ids = sorted(self._datastore.objects)
        by_stem = [i for i in ids if i.rsplit("/", 1)[-1] == image_id]
        by_case = [i for i in ids if i.split("/", 1)[0] == image_id and "/" in i]
        match = by_stem if len(by_stem) == 1 else by_case
        return super().get_image_uri(match[0]) if match else ""
