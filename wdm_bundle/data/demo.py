"""Download-free generator of small, realistic brain MR data sets in the BraTS layout.

The anatomy comes from the MNI152 2009a (ICBM 09a symmetric) templates that ship inside
nilearn's wheel (T1 image and GM/WM probability maps; CSF = brain mask - GM - WM). Each
subject is a randomly deformed copy of the template (small affine + smooth displacement
field), optionally with a tumour-like lesion (necrotic core, enhancing rim, oedema), rendered
into the four BraTS contrasts ``t1n``, ``t1c``, ``t2w`` and ``t2f`` with per-subject tissue
intensities, a smooth bias field per contrast, Rician noise and BraTS-like skull stripping
(exactly 0 outside the brain mask). Images are non-negative float32 on a scanner-like scale
(WM roughly 400-1000), not normalised. The output grid covers a fixed 160 x 192 x 160 mm field
of view around the brain (RAS, MNI mm), so the voxel spacing is ``FOV_MM / size``.

All random draws that define the anatomy, the lesion and the tissue intensities do not depend on
``size``: the same seed at another ``size`` gives the same subject at another resolution (only
the voxel noise differs).
"""

from __future__ import annotations

import functools
import importlib.resources
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from wdm_bundle.data.datalists import write_datalist
from wdm_bundle.data.io import CONTRASTS
from wdm_bundle.utils import as_bool

__all__ = ["FOV_MM", "SEG_LABELS", "load_mni_templates", "make_demo_dataset", "make_demo_subject"]

FOV_MM: tuple[float, float, float] = (160.0, 192.0, 160.0)
SEG_LABELS: dict[int, str] = {0: "background", 1: "necrotic core", 2: "oedema", 3: "enhancing tumour"}

_TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
# Mean intensity per tissue class:   GM    WM   CSF  core  enh   oed
_TISSUES = ("gm", "wm", "csf", "core", "enh", "oed")
_MEANS = {
    "t1n": (560.0, 850.0, 220.0, 260.0, 620.0, 640.0),  # WM > GM > CSF, core dark, oedema slightly dark
    "t1c": (580.0, 860.0, 200.0, 240.0, 1700.0, 600.0),  # like t1n, enhancing rim very bright
    "t2w": (720.0, 500.0, 1700.0, 1500.0, 950.0, 1250.0),  # CSF brightest, GM > WM, lesion bright
    "t2f": (700.0, 500.0, 120.0, 650.0, 900.0, 1300.0),  # CSF dark, GM > WM, oedema very bright
}


@functools.lru_cache(maxsize=1)
def _load_templates_cached() -> dict[str, np.ndarray]:
    data_dir = importlib.resources.files("nilearn.datasets") / "data"
    out: dict[str, np.ndarray] = {}
    for key, name in _TEMPLATE_FILES.items():
        with importlib.resources.as_file(data_dir / name) as path:
            img = nib.load(str(path))
            arr = np.asarray(img.dataobj, dtype=np.float32)
            out["affine"] = np.asarray(img.affine, dtype=np.float64)
        out[key] = arr / max(float(arr.max()), 1e-6)  # stored as uint8 0..255 -> [0, 1]
    # The T1 template is already brain-extracted: the brain mask is its support, holes filled.
    mask = ndi.binary_fill_holes(out["t1"] > 0.02).astype(np.float32)
    out["gm"] *= mask
    out["wm"] *= mask
    out["csf"] = np.clip(mask - out["gm"] - out["wm"], 0.0, 1.0)  # ventricles + sulci (dark in T1)
    out["mask"] = mask
    for arr in out.values():
        arr.setflags(write=False)
    return out


def load_mni_templates() -> dict[str, np.ndarray]:
    """Load the MNI152 2009a templates shipped with nilearn (cached in-process, read-only arrays).

    Returns:
        dict with float32 arrays of shape (197, 233, 189) on the 1 mm MNI grid: ``"t1"`` (T1
        intensity scaled to [0, 1], brain-extracted), ``"gm"``, ``"wm"``, ``"csf"`` (tissue
        probabilities in [0, 1], ``csf = clip(mask - gm - wm)``), ``"mask"`` (brain mask, 0/1),
        and ``"affine"`` (4x4 float64 voxel -> MNI mm, RAS).
    """
    return dict(_load_templates_cached())


@functools.lru_cache(maxsize=1)
def _template_geometry() -> tuple[np.ndarray, tuple[slice, ...], np.ndarray]:
    """Brain bounding-box centre (mm), crop of the template around the brain, lesion centres (mm)."""
    t = _load_templates_cached()
    idx = np.argwhere(t["mask"] > 0)
    lo, hi = idx.min(0), idx.max(0)
    centre = (t["affine"] @ np.r_[(lo + hi) / 2.0, 1.0])[:3]
    crop = tuple(slice(max(a - 4, 0), b + 5) for a, b in zip(lo, hi))
    # Candidate lesion centres: deep supratentorial white matter.
    vox = np.argwhere(ndi.binary_erosion(t["wm"] > 0.9, iterations=3))
    mm = vox @ t["affine"][:3, :3].T + t["affine"][:3, 3]
    return centre, crop, mm[mm[:, 2] > -10.0]


@functools.lru_cache(maxsize=2)
def _smoothed_templates(sigma: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(4, X, Y, Z) stack of GM, WM, CSF, mask cropped and anti-alias smoothed; its inverse affine."""
    t = _load_templates_cached()
    _, crop, _ = _template_geometry()
    stack = np.stack([t[k][crop] for k in ("gm", "wm", "csf", "mask")])
    if max(sigma) > 0:
        for c in range(len(stack)):
            stack[c] = ndi.gaussian_filter(stack[c], sigma, truncate=3.0)
    affine = t["affine"].copy()
    affine[:3, 3] += affine[:3, :3] @ np.array([s.start for s in crop], dtype=np.float64)
    return stack, np.linalg.inv(affine)


def _as_shape(size: int | Sequence[int]) -> tuple[int, int, int]:
    shape = (int(size),) * 3 if np.isscalar(size) else tuple(int(s) for s in size)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"'size' must be an int or 3 ints, each >= 8; got {size!r}.")
    return shape  # type: ignore[return-value]


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix from three angles (radians) about x, y, z."""
    (cx, cy, cz), (sx, sy, sz) = np.cos(angles), np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], n_ctrl: int) -> np.ndarray:
    """Smooth random field of the given shape (zero mean, unit std), from ``n_ctrl``^3 control points.

    The field is defined on the normalised field of view, so it does not depend on the
    resolution; its correlation length is about one control spacing (FOV / (n_ctrl - 1)).
    """
    ctrl = rng.standard_normal((n_ctrl,) * len(shape))
    mats = []
    for n in shape:
        u = (np.arange(n) + 0.5) / n * (n_ctrl - 1)
        w = np.exp(-0.5 * ((u[:, None] - np.arange(n_ctrl)[None, :]) / 0.7) ** 2)
        mats.append(w / w.sum(1, keepdims=True))
    field = np.einsum("ia,jb,kc,abc->ijk", *mats, ctrl, optimize=True)
    return (field - field.mean()) / (field.std() + 1e-8)


def _random_waves(rng: np.random.Generator, d: np.ndarray, radius: float, k: int = 6) -> np.ndarray:
    """Smooth random function (about unit std) of offsets ``d`` (3, N) in mm; wavelength ~ radius."""
    dirs = rng.standard_normal((k, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    freqs = rng.uniform(0.5, 1.5, (k, 1)) / radius
    phases, amps = rng.uniform(0, 2 * np.pi, (k, 1)), rng.standard_normal((k, 1)) * np.sqrt(2.0 / k)
    return (amps * np.cos(2 * np.pi * freqs * (dirs @ d) + phases)).sum(0)


def _lesion_fractions(rng: np.random.Generator, pts: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, ...]:
    """Soft nested lesion memberships (oedema ⊇ enhancing ⊇ core) at template points ``pts`` (3, N) mm."""
    candidates = _template_geometry()[2]
    centre = candidates[rng.integers(len(candidates))] + rng.uniform(-2, 2, 3)
    radius = rng.uniform(0.09, 0.16) * float(np.mean(FOV_MM))  # oedema radius, ~15-27 mm
    axes = rng.uniform(0.75, 1.25, 3)
    rot = _rotation(rng.uniform(-np.pi, np.pi, 3))
    d = pts - centre[:, None]
    rho = np.linalg.norm((rot @ d) / axes[:, None], axis=0) / radius
    width = max(0.1, float(np.mean(spacing)) / radius)  # edge ~1 voxel: partial volume at coarse grids
    levels = (1.0, rng.uniform(0.55, 0.75), rng.uniform(0.3, 0.5))
    fracs = []
    for level in levels:
        r = rho + (0.25 if level == 1.0 else 0.12 * level) * _random_waves(rng, d, radius)
        t = np.clip((level - r) / width + 0.5, 0.0, 1.0)  # compact partial-volume edge (smoothstep)
        fracs.append(t * t * (3.0 - 2.0 * t))
    f_oed, f_enh, f_core = fracs
    f_enh = np.minimum(f_enh, f_oed)
    return f_oed, f_enh, np.minimum(f_core, f_enh)


def _grid(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Output affine (4x4), spacing (3,) and world coordinates (3, N) in MNI mm of the voxel centres."""
    centre = _template_geometry()[0]
    fov = np.asarray(FOV_MM)
    spacing = fov / np.asarray(shape)
    origin = centre - fov / 2 + spacing / 2
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    axes = [origin[k] + spacing[k] * np.arange(shape[k]) for k in range(3)]
    world = np.stack([a.ravel() for a in np.meshgrid(*axes, indexing="ij")])
    return affine, spacing, world


def _warped_tissues(shape: tuple[int, int, int], rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """A randomly deformed template on the output grid.

    Returns:
        affine (4x4), spacing (3,), the template points of the voxels (3, N) in mm, the tissue
        fractions gm, wm, csf (summing to 1 inside the mask) and the brain mask (bool).
    """
    affine, spacing, world = _grid(shape)
    sigma = tuple(float(0.42 * s) if s > 1.5 else 0.0 for s in spacing)  # template voxels are 1 mm
    stack, inv_tpl = _smoothed_templates(sigma)  # type: ignore[arg-type]
    centre = _template_geometry()[0]

    # Random smooth deformation: output (subject) mm -> template mm.
    lin = _rotation(np.deg2rad(rng.uniform(-4, 4, 3))) @ np.diag(rng.uniform(0.93, 1.07, 3))
    shift = rng.uniform(-4, 4, 3)
    amp = rng.uniform(1.5, 3.0)  # displacement std in mm (peaks ~2.5x)
    disp = np.stack([_smooth_noise(rng, shape, 5).ravel() * amp for _ in range(3)])
    pts = lin @ (world - centre[:, None]) + (centre + shift)[:, None] + disp
    vox = inv_tpl[:3, :3] @ pts + inv_tpl[:3, 3:]
    gm, wm, csf, msoft = (ndi.map_coordinates(m, vox, order=1, cval=0.0, prefilter=False).reshape(shape) for m in stack)
    mask = msoft > 0.5
    norm = np.where(mask, 1.0 / np.maximum(gm + wm + csf, 1e-3), 0.0).astype(np.float32)
    return affine, spacing, pts, gm * norm, wm * norm, csf * norm, mask


def _tissue_classes(
    gm: np.ndarray, wm: np.ndarray, csf: np.ndarray, mask: np.ndarray, lesion: tuple[np.ndarray, ...] | None
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Fractions of the classes of ``_TISSUES`` (lesion memberships ``(oedema, enhancing, core)`` or None) and seg."""
    paren = gm + wm
    f_oed, f_enh, f_core = lesion if lesion is not None else (np.zeros(gm.shape, np.float32),) * 3
    # The tumour proper (core + rim) replaces all parenchyma; oedema spreads in WM, spares half the GM.
    oed = (wm + 0.5 * gm) * (f_oed - f_enh)
    gm_left, wm_left = gm * (1 - f_enh - 0.5 * (f_oed - f_enh)), wm * (1 - f_oed)
    fractions = (gm_left, wm_left, csf, paren * f_core, paren * (f_enh - f_core), oed)  # order of _TISSUES
    seg = np.zeros(gm.shape, np.uint8)
    seg[paren * f_enh + oed >= 0.5] = 2
    seg[paren * f_enh >= 0.5] = 3
    seg[paren * f_core >= 0.5] = 1
    seg[~mask] = 0
    return fractions, seg


def _render(name: str, rng: np.random.Generator, fractions: Sequence[np.ndarray], mask: np.ndarray) -> np.ndarray:
    """Contrast ``name`` of the tissue ``fractions``: per-subject means, bias field, Rician noise; 0 outside ``mask``.

    ``fractions`` are in the order of ``_TISSUES``.
    """
    shape = mask.shape
    means = np.asarray(_MEANS[name]) * rng.uniform(0.85, 1.2) * rng.uniform(0.9, 1.1, len(_TISSUES))
    bias = np.exp(rng.uniform(0.05, 0.15) * _smooth_noise(rng, shape, 3)).astype(np.float32)
    noise_sd = float(rng.uniform(0.02, 0.04) * means[1])  # Rician noise, a few % of WM
    clean = sum(f * np.float32(m) for f, m in zip(fractions, means)) * bias
    real, imag = (noise_sd * rng.standard_normal(shape, np.float32) for _ in range(2))
    noisy = np.hypot(clean + real, imag)
    return np.where(mask, noisy, 0.0).astype(np.float32)


def make_demo_subject(
    size: int | Sequence[int] = 32,
    seed: int | Sequence[int] = 0,
    lesion: bool | None = None,
    lesion_prob: float = 0.5,
    return_tissues: bool = False,
    return_healthy: bool = False,
) -> dict[str, np.ndarray]:
    """Generate one synthetic subject.

    Args:
        size: output grid, an int (cube) or 3 ints, each >= 8; spacing = (160, 192, 160) mm / size.
        seed: non-negative int or sequence of ints (e.g. ``(seed, case_index)``) for
            ``numpy.random.SeedSequence``; the same seed gives the identical subject.
        lesion: force a lesion (True) or none (False); None draws it with ``lesion_prob``.
            Anatomy and intensities do not depend on whether a lesion is present.
        lesion_prob: probability of a lesion when ``lesion`` is None.
        return_tissues: also return the rendered tissue fractions ``"gm"``, ``"wm"``, ``"csf"``
            (float32 in [0, 1], lesion excluded; with the lesion classes they sum to 1 in the brain).
        return_healthy: also return the subject rendered without its lesion (same anatomy, intensities, bias,
            noise): ``"<contrast>_healthy"`` (float32) and ``"lesion_region"`` (bool, the brain voxels whose tissue
            the lesion changed, ⊇ ``seg > 0``; all False without lesion); outside it ``healthy == image`` exactly.

    Returns:
        dict with ``"t1n"``, ``"t1c"``, ``"t2w"``, ``"t2f"`` (float32, shape ``size``, >= 0, exactly
        0 outside the brain mask, WM ~ 400-1000), ``"seg"`` (uint8, same shape; 0 background,
        1 necrotic core, 2 oedema, 3 enhancing) and ``"affine"`` (4x4 float64, voxel -> MNI mm RAS,
        spacing on the diagonal).
    """
    shape = _as_shape(size)
    if not 0.0 <= lesion_prob <= 1.0:
        raise ValueError(f"'lesion_prob' must be in [0, 1]; got {lesion_prob}.")
    entropy = [int(seed)] if np.isscalar(seed) else [int(s) for s in seed]
    if min(entropy, default=-1) < 0:
        raise ValueError(f"'seed' must be a non-negative int or a non-empty sequence of them; got {seed!r}.")
    r_choice, r_deform, r_lesion = map(np.random.default_rng, (seeds := np.random.SeedSequence(entropy).spawn(7))[:3])
    has_lesion = bool(r_choice.random() < lesion_prob) if lesion is None else bool(lesion)

    affine, spacing, pts, gm, wm, csf, mask = _warped_tissues(shape, r_deform)
    fracs = None
    if has_lesion:
        fracs = tuple(f.reshape(shape).astype(np.float32) for f in _lesion_fractions(r_lesion, pts, spacing))
    fractions, seg = _tissue_classes(gm, wm, csf, mask, fracs)
    healthy = _tissue_classes(gm, wm, csf, mask, None)[0] if return_healthy else None
    out: dict[str, np.ndarray] = {}
    if healthy is not None:
        out["lesion_region"] = mask & (fracs[0] > 0) if fracs is not None else np.zeros(shape, bool)
    for c, s in zip(CONTRASTS, seeds[3:]):
        out[c] = _render(c, np.random.default_rng(s), fractions, mask)
        if healthy is not None:  # the same draws (a fresh generator from the same seed), lesion-free tissues
            out[f"{c}_healthy"] = _render(c, np.random.default_rng(s), healthy, mask)
    out.update(seg=seg, affine=affine)
    if return_tissues:
        out.update(gm=fractions[0], wm=fractions[1], csf=csf)
    return out


def _save_nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def _progress(items: Sequence, enabled: bool) -> Iterable:
    if not as_bool(enabled, "progress"):
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with MONAI in practice
        return items
    return tqdm(items, desc="demo cases", unit="case")


def _prepare_dataset(output_dir, num_cases, num_test, size, seed, lesion_prob, overwrite, kind="demo") -> tuple:
    """Check a data-set writer's arguments (as ``make_demo_dataset``), make the folder: root, shape, the 3 ints."""
    if int(num_cases) != num_cases or num_cases < 1:
        raise ValueError(f"'num_cases' must be an int >= 1; got {num_cases!r}.")
    if int(num_test) != num_test or not 0 <= num_test < num_cases:
        raise ValueError(f"'num_test' must be an int with 0 <= num_test < num_cases ({num_cases}); got {num_test!r}.")
    shape = _as_shape(size)
    if int(seed) != seed or seed < 0:
        raise ValueError(f"'seed' must be a non-negative int; got {seed!r}.")
    if not 0.0 <= lesion_prob <= 1.0:
        raise ValueError(f"'lesion_prob' must be in [0, 1]; got {lesion_prob!r}.")
    root = Path(output_dir)
    datalist_path = root / "datalist.json"
    existing = [datalist_path] if datalist_path.exists() else sorted(p for p in root.glob("BraTS-DEMO-*") if p.is_dir())
    if existing and not as_bool(overwrite, "overwrite"):  # "false" from a command line is not True
        message = f"'{root}' already holds a {kind} data set ({existing[0]}); pass overwrite=True to replace it."
        raise FileExistsError(message)
    root.mkdir(parents=True, exist_ok=True)
    return root, shape, int(num_cases), int(num_test), int(seed)


def make_demo_dataset(
    output_dir: str | os.PathLike,
    num_cases: int = 40,
    size: int | Sequence[int] = 32,
    num_test: int = 8,
    seed: int = 0,
    lesion_prob: float = 0.5,
    overwrite: bool = False,
    progress: bool = True,
) -> str:
    """Write a synthetic BraTS-layout data set and its ``datalist.json``; return the datalist path.

    Layout: ``<output_dir>/<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz`` with cases
    ``BraTS-DEMO-00000-000``, ... and ``<output_dir>/datalist.json`` with ``"training"`` and
    ``"test"`` lists of ``{"case", "t1n", "t1c", "t2w", "t2f", "seg"}`` (paths relative to
    ``output_dir``); the last ``num_test`` cases are the test split. Case ``i`` is
    ``make_demo_subject(size, seed=(seed, i), lesion_prob=lesion_prob)``, independent of
    ``num_cases``. ``datalist.json`` is written last, so an interrupted run has none.

    Raises:
        ValueError: invalid ``num_cases`` (< 1), ``num_test`` (not in [0, num_cases)),
            ``size`` (< 8), ``seed`` (< 0) or ``lesion_prob`` (not in [0, 1]).
        FileExistsError: ``output_dir`` already holds ``datalist.json`` or ``BraTS-DEMO-*`` case
            folders and ``overwrite`` is False. With ``overwrite=True`` files are replaced, but
            stale case folders of an earlier, larger run are left in place.
    """
    root, shape, num_cases, num_test, seed = _prepare_dataset(
        output_dir, num_cases, num_test, size, seed, lesion_prob, overwrite
    )
    datalist_path = root / "datalist.json"

    entries = []
    for i in _progress(range(num_cases), progress):
        case = f"BraTS-DEMO-{i:05d}-000"
        subject = make_demo_subject(shape, seed=(seed, i), lesion_prob=lesion_prob)
        (root / case).mkdir(exist_ok=True)
        entry = {"case": case}
        for key in (*CONTRASTS, "seg"):
            rel = f"{case}/{case}-{key}.nii.gz"
            _save_nifti(subject[key], subject["affine"], root / rel)
            entry[key] = rel
        entries.append(entry)

    return write_datalist(
        datalist_path,
        entries,
        num_cases - num_test,
        description="Synthetic BraTS-layout brain MR demo data (deformed MNI152 2009a anatomy from nilearn, "
        "optional tumour-like lesion) made by wdm_bundle.data.demo.",
        size=list(shape),
        spacing=[float(s) for s in np.asarray(FOV_MM) / np.asarray(shape)],
        seed=seed,
        lesion_prob=float(lesion_prob),
        contrasts=list(CONTRASTS),
        labels={str(k): v for k, v in SEG_LABELS.items()},
    )
