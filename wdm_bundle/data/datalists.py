"""Datalists from a JSON file or a folder of NIfTI files (flat, or BraTS case folders)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from wdm_bundle.data.io import NIFTI_SUFFIXES, find_case_files, find_cases, is_nifti, nifti_stem

__all__ = ["build_datalist", "default_datalist", "read_split"]

_CONTRAST_SUFFIXES = ("t1n", "t1c", "t2w", "t2f", "seg", "t1", "t1ce", "t2", "flair")


def _suffix_of(stem: str) -> str | None:
    """The contrast of a BraTS-style file stem ``<case>-<contrast>`` (or ``_<contrast>``), else None."""
    for sep in ("-", "_"):
        head, _, tail = stem.rpartition(sep)
        if head and tail.lower() in _CONTRAST_SUFFIXES:
            return tail.lower()
    return None


def default_datalist(dataset_dir: str | os.PathLike) -> str | None:
    """``<dataset_dir>/datalist.json`` if that file exists, else None (`build_datalist` then reads the folder)."""
    path = Path(dataset_dir) / "datalist.json"
    return str(path) if path.is_file() else None


def build_datalist(
    dataset_dir: str | os.PathLike | None = None,
    datalist: str | os.PathLike | None = None,
    keys: Mapping[str, str | None] | None = None,
    split: str = "training",
    optional: Sequence[str] = (),
) -> list[dict[str, str]]:
    """Build a list of ``{key: file}`` dicts for MONAI datasets.

    Sources, in order of precedence:

    * ``datalist``: a JSON file whose ``split`` entry is a list of dicts; relative paths are
      resolved against ``dataset_dir`` (or the JSON's folder). Entries may use the output keys
      directly or the source names in ``keys`` (e.g. ``{"image": "t1n"}`` reads ``entry["t1n"]``).
    * ``dataset_dir`` with case folders: ``<dir>/<case>/<case>-<suffix>.nii.gz`` (BraTS layout);
      ``keys`` maps output keys to suffixes.
    * ``dataset_dir`` with NIfTI files directly inside: each file is one entry of the single key of
      ``keys``; when files are named ``<case>-<contrast>.nii.gz`` (t1n, t1c, t2w, t2f, seg, ...), only
      those of the requested suffix (e.g. ``{"image": "t1n"}``) are taken, and none is an error.

    Each entry also gets ``"case"`` (the case name). Keys in ``optional`` are left out of an entry whose
    case has no such file (e.g. the inpainting challenge's ``-mask-healthy``, drawn at random where missing).

    Raises:
        FileNotFoundError: a missing folder or JSON file, named.
        ValueError: nothing found, or a case lacks a requested file (named).
    """
    keys = dict(keys) if keys else {"image": None}
    if datalist:
        return _from_json(Path(datalist), Path(dataset_dir) if dataset_dir else None, keys, split, optional)
    if dataset_dir is None:
        raise ValueError(
            "give either 'dataset_dir' (a folder of NIfTI files or case folders) or 'datalist' (a JSON file)."
        )
    root = Path(dataset_dir)
    cases = find_cases(root, "dataset_dir")
    entries: list[dict[str, str]] = []
    if cases and any(keys.values()):
        problems = []
        for case in cases:
            files = find_case_files(case)
            entry = {"case": case.name}
            for out_key, suffix in keys.items():
                if suffix in files:
                    entry[out_key] = files[suffix]
                elif out_key not in optional:
                    problems.append(f"{case}: no '{case.name}-{suffix}.nii.gz' (has: {', '.join(files) or 'nothing'})")
            entries.append(entry)
        if problems:
            raise ValueError(f"{len(problems)} case(s) in '{root}' lack a requested file:\n  " + "\n  ".join(problems))
    else:
        files = sorted(p for p in root.iterdir() if is_nifti(p))
        if len(keys) != 1:
            raise ValueError(
                f"'{root}' holds no case folders; a flat folder of files can only fill one key, got {keys}."
            )
        ((out_key, suffix),) = keys.items()
        stems = [nifti_stem(f.name) for f in files]
        tagged = [s for s in stems if _suffix_of(s)]
        if suffix and tagged:  # BraTS-style names `<case>-<suffix>`: only the requested contrast
            picked = [(f, s) for f, s in zip(files, stems) if _suffix_of(s) == suffix]
            if not picked:
                found = sorted({_suffix_of(s) for s in tagged})
                raise ValueError(
                    f"dataset_dir '{root}' holds no '<case>-{suffix}.nii.gz' file (its files end in "
                    f"{', '.join('-' + x for x in found)}); pass --modality with one of "
                    f"{', '.join(found)}."
                )
            entries = [{"case": s[: -len(suffix) - 1], out_key: str(f)} for f, s in picked]
        else:
            entries = [{"case": s, out_key: str(f)} for f, s in zip(files, stems)]
    if not entries:
        raise ValueError(f"dataset_dir '{root}' holds no NIfTI files ({', '.join(NIFTI_SUFFIXES)}) or case folders.")
    return entries


def read_split(path: str | os.PathLike, split: str) -> list:
    """The entries under ``split`` of the datalist JSON ``path``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: it is not valid JSON, or has no non-empty list under ``split``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"datalist '{path}' does not exist.")
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"datalist '{path}' is not valid JSON: {e}") from e
    items = content.get(split) if isinstance(content, dict) else None
    if not isinstance(items, list) or not items:
        raise ValueError(f"datalist '{path}' has no non-empty list under '{split}'.")
    return items


def _from_json(
    path: Path, base: Path | None, keys: Mapping[str, str | None], split: str, optional: Sequence[str] = ()
) -> list[dict[str, str]]:
    items = read_split(path, split)
    base = base if base is not None else path.parent
    entries = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = {"image": item}
        entry = {"case": str(item.get("case", i))}
        for out_key, source in keys.items():
            value = item.get(out_key, item.get(source) if source else None)
            if value is None and out_key in optional:
                continue
            if value is None:
                raise ValueError(f"datalist '{path}', {split}[{i}]: no '{out_key}' or '{source}' entry.")
            entry[out_key] = str(value if os.path.isabs(value) else base / value)
        entries.append(entry)
    return entries


def write_datalist(path: str | os.PathLike, entries: list, num_train: int, **info) -> str:
    """Write a datalist JSON: ``info`` (description, sizes, ...), then ``entries`` split into training and test."""
    with open(path, "w") as f:
        json.dump({**info, "training": entries[:num_train], "test": entries[num_train:]}, f, indent=2)
    return str(path)
