"""Write the real reference set of ``configs/evaluate.json``: volumes preprocessed exactly as WDM training sees them.

Runs from the repository root without installing the package::

    python scripts/prepare_reference_set.py --dataset_dir /data/BraTS2023 --output_dir eval/real --ckpt models/model.pt

The preprocessing is ``train#preprocessing`` of ``configs/train.json`` (load, RAS, percentile clip to [0, 1],
pad/crop to ``pad_crop_size``, resize to ``image_size``, scale to ``data_range``), with the data settings of the
checkpoint's training record (``--ckpt``) or of the config and the command line. One ``<case>.nii.gz`` per case,
with the grid and spacing of the samples that ``configs/inference.json`` writes.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # repo root, for `wdm_bundle`

import fire  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from monai.bundle import ConfigParser  # noqa: E402

from wdm_bundle.engines import centered_affine, load_record  # noqa: E402

logger = logging.getLogger("prepare_reference_set")

#: Training-record keys that are train.json keys of the preprocessing (orientation is handled apart).
_DATA_KEYS = ("modality", "pad_crop_size", "placement", "image_size", "clip_percentiles", "data_range")


def _recorded_settings(ckpt: str, given: dict[str, Any]) -> tuple[dict[str, Any], str | None, list[float]]:
    """Data settings, orientation and voxel spacing of WDM checkpoint ``ckpt``'s record (`load_record`: a cWDM
    model or a ``given`` value that differs from the record is refused)."""
    if not Path(ckpt).is_file():
        raise FileNotFoundError(f"checkpoint '{ckpt}' does not exist.")
    record = load_record(ckpt, "generation", given)
    if record["assumed"]:
        raise ValueError(f"'{ckpt}' holds no training record; give the data settings on the command line instead.")
    # None values too: no pad/crop (pad_crop_size), no resize (image_size), every file (modality)
    return {k: record[k] for k in _DATA_KEYS}, record["orientation"], record["spacing"]


def _parser(config_file: Sequence[str], settings: dict[str, Any], orientation: str | None) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(f) for f in config_file])
    parser.update(settings)
    transforms = parser.get("train#preprocessing#transforms")
    position = next(i for i, t in enumerate(transforms) if t.get("_target_", "").endswith("Orientationd"))
    if orientation is None:  # a record without reorientation (the authors' models)
        del transforms[position]
    else:
        transforms[position]["axcodes"] = orientation
    return parser


def _check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"output_dir '{out}' is not empty; pass --overwrite true to write into it.")
    out.mkdir(parents=True, exist_ok=True)


def prepare_reference_set(
    dataset_dir: str | None = None,
    output_dir: str = "eval/real",
    datalist: str | None = None,
    split: str = "training",
    ckpt: str | None = None,
    modality: str | None = None,
    pad_crop_size: Sequence[int] | None = None,
    placement: str | None = None,
    image_size: Sequence[int] | None = None,
    clip_percentiles: Sequence[float] | None = None,
    data_range: Sequence[float] | None = None,
    num_volumes: int | None = None,
    config_file: str | Sequence[str] = ("configs/train.json",),
    overwrite: bool = False,
) -> list[str]:
    """Preprocess each case of ``dataset_dir`` (or ``datalist``'s ``split``) like WDM training and write it as NIfTI.

    Example::

        python scripts/prepare_reference_set.py --dataset_dir /data/BraTS2023 --ckpt models/model.pt
        python -m monai.bundle run evaluate --config_file configs/evaluate.json --real_dir eval/real --fake_dir samples

    Args:
        dataset_dir: BraTS case folders or a folder of NIfTI volumes (as for training).
        output_dir: folder to write ``<case>.nii.gz`` into; must be empty unless ``overwrite``.
        datalist, split: a datalist JSON and its entry to read instead of listing ``dataset_dir``.
        ckpt: a WDM checkpoint: its training record gives every data setting below (and the orientation).
        modality, pad_crop_size, placement, image_size, clip_percentiles, data_range: data settings, as the train.json
            keys of the same names (default: train.json's); with ``ckpt`` each one given must equal the record.
        num_volumes: the first N cases only (default: all).
        config_file: training config(s) whose ``train#preprocessing`` is applied (relative to the repository).
        overwrite: write into a non-empty ``output_dir``.

    Returns:
        The written files.
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    given = {
        "modality": modality,
        "pad_crop_size": pad_crop_size,
        "placement": placement,
        "image_size": image_size,
        "clip_percentiles": clip_percentiles,
        "data_range": data_range,
    }
    settings, orientation, spacing = _recorded_settings(ckpt, given) if ckpt else ({}, "RAS", None)
    settings.update({k: list(v) if isinstance(v, (list, tuple)) else v for k, v in given.items() if v is not None})
    settings.update({"dataset_dir": dataset_dir, "datalist": datalist, "split": split})
    files = [config_file] if isinstance(config_file, str) else list(config_file)
    parser = _parser([ROOT / f for f in files], settings, orientation)
    cases = parser.get_parsed_content("train#datalist")[:num_volumes]
    preprocessing = parser.get_parsed_content("train#preprocessing")
    if spacing is None:  # the voxel size training records (and samples are written with)
        spacing = parser.get_parsed_content("record#spacing")
    out = Path(output_dir)
    _check_output(out, overwrite)
    written = []
    for case in cases:
        volume = np.asarray(preprocessing(dict(case))["image"][0], dtype=np.float32)
        path = out / f"{case['case']}.nii.gz"
        nib.save(nib.Nifti1Image(volume, centered_affine(volume.shape, spacing)), str(path))
        written.append(str(path))
    logger.info(f"wrote {len(written)} volume(s) of shape {volume.shape if written else None} to '{out}'.")
    return written


if __name__ == "__main__":
    fire.Fire(prepare_reference_set)
