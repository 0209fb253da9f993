"""Demo inpainting data in the BraTS 2023/2024 "Local Synthesis" challenge's layout (t1n), with a healthy truth.

Each case is a demo subject (:func:`wdm_bundle.data.demo.make_demo_subject`, case ``i`` the same
subject as in :func:`~wdm_bundle.data.demo.make_demo_dataset` with the same ``seed``) with a random
healthy-tissue mask (:func:`wdm_bundle.data.masks.random_healthy_mask`) placed in the brain away
from the lesion. Lesion cases also get the same subject rendered without the lesion
(``-t1n-healthy``): real data never has this truth, so inpainting the lesion region can be scored
against the true healthy tissue. Outside ``-mask-unhealthy`` (the voxels the lesion changed), the
image and the healthy truth are equal voxel for voxel.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from wdm_bundle.data.datalists import write_datalist
from wdm_bundle.data.demo import FOV_MM, _prepare_dataset, _progress, _save_nifti, make_demo_subject
from wdm_bundle.data.masks import random_healthy_mask

__all__ = ["INPAINTING_SUFFIXES", "make_inpainting_dataset", "make_inpainting_subject"]

IMAGE_SUFFIX = "-t1n.nii.gz"  #: the complete image
MASK_SUFFIX = "-mask.nii.gz"  #: the region to inpaint
VOIDED_SUFFIX = "-t1n-voided.nii.gz"  #: the image with the region to inpaint set to 0
MASK_HEALTHY_SUFFIX = "-mask-healthy.nii.gz"  #: a random mask in healthy tissue
MASK_UNHEALTHY_SUFFIX = "-mask-unhealthy.nii.gz"  #: the lesion (all-zero without one)
HEALTHY_TRUTH_SUFFIX = "-t1n-healthy.nii.gz"  #: the image rendered without its lesion (lesion cases only)
#: Datalist key -> file name suffix (``<case>/<case><suffix>``).
INPAINTING_SUFFIXES: dict[str, str] = {
    "image": IMAGE_SUFFIX,
    "mask": MASK_SUFFIX,
    "voided": VOIDED_SUFFIX,
    "mask_healthy": MASK_HEALTHY_SUFFIX,
    "mask_unhealthy": MASK_UNHEALTHY_SUFFIX,
    "healthy_truth": HEALTHY_TRUTH_SUFFIX,
}
MASK_KINDS = ("healthy", "unhealthy")


def make_inpainting_subject(
    size: int | Sequence[int] = 32,
    seed: int | Sequence[int] = 0,
    lesion: bool | None = None,
    lesion_prob: float = 0.5,
    mask_kind: str = "healthy",
    fraction: float | Sequence[float] = (0.01, 0.04),
    margin: float = 0.0,
) -> dict[str, np.ndarray]:
    """One inpainting case (t1n) as arrays.

    Args:
        size, seed, lesion, lesion_prob: as :func:`wdm_bundle.data.demo.make_demo_subject`.
        mask_kind: the region to inpaint, ``"healthy"`` (the random healthy mask, the challenge's
            training cases) or ``"unhealthy"`` (the lesion region; scored against ``healthy_truth``).
            A case without lesion always uses its healthy mask.
        fraction: healthy mask size as a fraction (or (low, high) range) of the brain's voxels.
        margin: minimum distance of the healthy mask from the lesion region, in mm.

    Returns:
        dict with, all of shape ``size``: ``"image"`` (float32 t1n, >= 0, 0 outside the brain),
        ``"healthy_truth"`` (float32, the image without its lesion; equal to ``"image"`` without
        lesion), ``"mask_healthy"`` and ``"mask_unhealthy"`` (uint8 0/1; the unhealthy mask is
        the lesion region, the brain voxels the lesion changed, ⊇ ``seg > 0``), ``"mask"`` (uint8,
        the one chosen by ``mask_kind``), ``"voided"`` (float32, ``image * (1 - mask)``); and
        ``"affine"`` (4x4 float64) and ``"lesion"`` (bool 0-d array).
    """
    if mask_kind not in MASK_KINDS:
        raise ValueError(f"'mask_kind' must be one of {MASK_KINDS}; got {mask_kind!r}.")
    subject = make_demo_subject(size, seed=seed, lesion=lesion, lesion_prob=lesion_prob, return_healthy=True)
    entropy = [int(seed)] if np.isscalar(seed) else [int(s) for s in seed]
    # A generator of its own (spawn key 7; the subject uses 0..6), so the subject is the demo one.
    rng = np.random.default_rng(np.random.SeedSequence(entropy).spawn(8)[7])
    image, unhealthy = subject["t1n"], subject["lesion_region"].astype(np.uint8)
    spacing = np.abs(np.diag(subject["affine"])[:3])
    healthy = random_healthy_mask(image, unhealthy, rng, fraction=fraction, margin=margin, spacing=spacing)
    has_lesion = bool(unhealthy.any())
    mask = unhealthy if mask_kind == "unhealthy" and has_lesion else healthy
    return {
        "image": image,
        "mask": mask,
        "voided": image * (1 - mask).astype(np.float32),
        "mask_healthy": healthy,
        "mask_unhealthy": unhealthy,
        "healthy_truth": subject["t1n_healthy"],
        "affine": subject["affine"],
        "lesion": np.asarray(has_lesion),
    }


def make_inpainting_dataset(
    output_dir: str | os.PathLike,
    num_cases: int = 20,
    size: int | Sequence[int] = 32,
    num_test: int = 4,
    seed: int = 0,
    lesion_prob: float = 0.5,
    test_mask: str = "healthy",
    fraction: float | Sequence[float] = (0.01, 0.04),
    margin: float = 0.0,
    overwrite: bool = False,
    progress: bool = True,
) -> str:
    """Write a demo inpainting data set (t1n) in the challenge's layout and its ``datalist.json``.

    Layout: ``<output_dir>/<case>/<case><suffix>`` for the suffixes of :data:`INPAINTING_SUFFIXES`
    (``-t1n-healthy`` for lesion cases only), cases ``BraTS-DEMO-00000-000``, ...; case ``i`` is
    :func:`make_inpainting_subject` with ``seed=(seed, i)`` (the same subject as
    ``make_demo_dataset`` writes). ``datalist.json`` holds ``"training"`` and ``"test"`` (the last
    ``num_test`` cases) lists of ``{"case", "lesion", "mask_kind", <key>: path}`` with the keys of
    :data:`INPAINTING_SUFFIXES` (``healthy_truth`` only for lesion cases; paths relative to
    ``output_dir``). Training cases inpaint the healthy mask; test cases ``test_mask``. Written
    last, so an interrupted run has none.

    Args:
        output_dir: destination folder (created if needed).
        num_cases, size, num_test, seed, lesion_prob, overwrite, progress: as ``make_demo_dataset``.
        test_mask: ``"healthy"`` or ``"unhealthy"`` (test lesion cases inpaint the lesion region,
            to be scored against ``healthy_truth``).
        fraction, margin: healthy mask size and distance from the lesion, as :func:`make_inpainting_subject`.

    Returns:
        Path of the written datalist.json.

    Raises:
        ValueError, FileExistsError: as ``make_demo_dataset``; ``ValueError`` also for a bad
            ``test_mask`` or when no healthy mask fits.
    """
    if test_mask not in MASK_KINDS:
        raise ValueError(f"'test_mask' must be one of {MASK_KINDS}; got {test_mask!r}.")
    args = (output_dir, num_cases, num_test, size, seed, lesion_prob, overwrite, "inpainting")
    root, shape, num_cases, num_test, seed = _prepare_dataset(*args)
    num_train = num_cases - num_test
    entries = []
    for i in _progress(range(num_cases), progress):
        case, kind = f"BraTS-DEMO-{i:05d}-000", "healthy" if i < num_train else test_mask
        arrays = make_inpainting_subject(shape, (seed, i), None, lesion_prob, kind, fraction, margin)
        has_lesion = bool(arrays["lesion"])
        (root / case).mkdir(exist_ok=True)
        entry: dict = {"case": case, "lesion": has_lesion, "mask_kind": kind if has_lesion else "healthy"}
        for key, suffix in INPAINTING_SUFFIXES.items():
            if key == "healthy_truth" and not has_lesion:
                continue
            rel = f"{case}/{case}{suffix}"
            _save_nifti(arrays[key], arrays["affine"], root / rel)
            entry[key] = rel
        entries.append(entry)
    return write_datalist(
        root / "datalist.json",
        entries,
        num_train,
        description="Synthetic inpainting demo data in the BraTS Local Synthesis layout (t1n), with the healthy "
        "truth of lesion cases, made by wdm_bundle.data.demo_inpainting.",
        size=list(shape),
        spacing=[float(s) for s in np.asarray(FOV_MM) / np.asarray(shape)],
        seed=seed,
        lesion_prob=float(lesion_prob),
        test_mask=test_mask,
        suffixes=dict(INPAINTING_SUFFIXES),
    )
