"""BraSyn-like pseudo-validation sets: complete cases with one contrast dropped at random."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wdm_bundle.data.datalists import read_split
from wdm_bundle.data.io import CONTRASTS, find_case_files, find_cases, require_folder

__all__ = ["choose_missing", "make_pseudo_validation"]

logger = logging.getLogger(__name__)


def choose_missing(case: str, contrasts: Sequence[str], seed: int = 0) -> str:
    """The contrast to drop for ``case``: a function of ``(seed, case)`` only (stable across runs and machines)."""
    if not contrasts:
        raise ValueError("'contrasts' is empty.")
    digest = int.from_bytes(hashlib.sha256(case.encode("utf-8")).digest()[:8], "little")
    rng = np.random.default_rng([int(seed), digest])
    return str(contrasts[int(rng.integers(len(contrasts)))])


def _check_empty(folder: Path, name: str, overwrite: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"'{name}' {folder} exists and is not a folder.")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"'{name}' {folder} is not empty; pass overwrite=True to write into it.")


def _cases_from_datalist(datalist: Path, split: str) -> list[str]:
    cases = []
    for i, item in enumerate(read_split(datalist, split)):
        if not isinstance(item, dict) or "case" not in item:
            raise ValueError(f"datalist '{datalist}', {split}[{i}]: no 'case' entry.")
        cases.append(str(item["case"]))
    return cases


def _check_arguments(
    seed: int,
    contrasts: Sequence[str],
    cases: Sequence[str] | None,
    datalist: str | os.PathLike | None,
    input_dir: str | os.PathLike | None,
) -> tuple[list[str], str | os.PathLike]:
    """The contrasts as a list of names and the input folder (default: the datalist's folder); ValueError if bad."""
    if int(seed) != seed or seed < 0:
        raise ValueError(f"'seed' must be a non-negative int; got {seed!r}.")
    contrasts = [str(c) for c in ([contrasts] if isinstance(contrasts, str) else contrasts)]
    if len(contrasts) < 2 or len(set(contrasts)) != len(contrasts):
        raise ValueError(f"'contrasts' must name >= 2 distinct contrasts; got {contrasts}.")
    if cases is not None and datalist is not None:
        raise ValueError("give either 'cases' or 'datalist' (with 'split'), not both.")
    if input_dir is None:
        if datalist is None:
            raise ValueError("'input_dir' is required unless 'datalist' is given.")
        input_dir = Path(datalist).parent
    return contrasts, input_dir


def _case_names(root: Path, cases: Sequence[str] | None, datalist: str | os.PathLike | None, split: str) -> list[str]:
    """The case names to use: from ``datalist``, else ``cases``, else every case folder of ``root``; all must exist."""
    if datalist is not None:
        names = _cases_from_datalist(Path(datalist), split)
    elif cases is not None:
        names = [str(c) for c in ([cases] if isinstance(cases, str) else cases)]
    else:
        names = [p.name for p in find_cases(root)]
    absent = [c for c in names if not (root / c).is_dir()]
    if absent:
        raise FileNotFoundError(f"{len(absent)} case folder(s) not in '{root}': {', '.join(absent)}")
    return names


def _split_case(files: dict[str, str], case: str, drop: str, keep: Sequence[str], out: Path, gt: Path) -> None:
    """Copy ``files[keep]`` to ``<out>/<case>/`` and ``files[drop]`` to ``<gt>/<case>/``, replacing those folders."""
    for folder in (out / case, gt / case):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    for key in keep:
        shutil.copyfile(files[key], out / case / Path(files[key]).name)
    shutil.copyfile(files[drop], gt / case / Path(files[drop]).name)


def make_pseudo_validation(
    input_dir: str | os.PathLike | None,
    output_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    seed: int = 0,
    contrasts: Sequence[str] = CONTRASTS,
    cases: Sequence[str] | None = None,
    datalist: str | os.PathLike | None = None,
    split: str = "test",
    keep_seg: bool = False,
    overwrite: bool = False,
) -> dict[str, str]:
    """Copy complete cases to ``output_dir`` with one contrast moved to ``gt_dir`` (BraSyn layout).

    For each case ``<input_dir>/<case>/`` holding all ``contrasts``, the contrast files (and
    ``<case>-seg`` if ``keep_seg``; nothing else) are copied to ``<output_dir>/<case>/``, except
    one, :func:`choose_missing` ``(case, contrasts, seed)``, which is copied to
    ``<gt_dir>/<case>/<case>-<contrast>.nii.gz``. ``<output_dir>/missing.json`` maps case ->
    dropped contrast. Incomplete cases are logged (warning) and skipped.

    Args:
        input_dir: folder of case folders; ``None`` means the folder of ``datalist``.
        output_dir: destination of the incomplete cases (must be empty unless ``overwrite``).
        gt_dir: destination of the dropped contrasts (must be empty unless ``overwrite``).
        seed: non-negative int; the choice for a case depends only on (seed, case name).
        contrasts: the contrast suffixes a complete case has; one of them is dropped.
        cases: case names to use; default all case folders in ``input_dir``.
        datalist: a datalist JSON whose ``split`` entries' ``"case"`` names pick the cases
            (not with ``cases``).
        split: the datalist split, e.g. ``"test"``.
        keep_seg: also copy ``<case>-seg`` to ``output_dir``.
        overwrite: write into non-empty folders; a case's existing ``<case>`` folders in
            ``output_dir`` and ``gt_dir`` are replaced, other content is left in place.

    Returns:
        ``{case: dropped contrast}`` for the cases written, sorted by case.

    Raises:
        ValueError: bad ``seed``/``contrasts``, both ``cases`` and ``datalist``, output folders
            equal to each other or to ``input_dir``, or no complete case.
        FileNotFoundError: ``input_dir``, ``datalist`` or a requested case folder does not exist.
        FileExistsError: ``output_dir`` or ``gt_dir`` is not empty and ``overwrite`` is False.
    """
    contrasts, input_dir = _check_arguments(seed, contrasts, cases, datalist, input_dir)
    root, out, gt = require_folder(input_dir, "input_dir"), Path(output_dir), Path(gt_dir)
    resolved = {"input_dir": root.resolve(), "output_dir": out.resolve(), "gt_dir": gt.resolve()}
    if len(set(resolved.values())) != 3:
        raise ValueError(f"'input_dir', 'output_dir' and 'gt_dir' must be three different folders; got {resolved}.")
    _check_empty(out, "output_dir", overwrite)
    _check_empty(gt, "gt_dir", overwrite)
    names = _case_names(root, cases, datalist, split)

    missing: dict[str, str] = {}
    skipped = []
    for case in sorted(set(names)):
        files = find_case_files(root / case)
        lacking = [c for c in contrasts if c not in files]
        if lacking:
            skipped.append(f"{case}: lacks {', '.join(lacking)}")
            continue
        drop = choose_missing(case, contrasts, seed)
        keep = [c for c in contrasts if c != drop] + (["seg"] if keep_seg and "seg" in files else [])
        _split_case(files, case, drop, keep, out, gt)
        missing[case] = drop
    if skipped:
        logger.warning("skipped %d incomplete case(s):\n  %s", len(skipped), "\n  ".join(skipped))
    if not missing:
        raise ValueError(f"no complete case (with all of {contrasts}) among {len(names)} case(s) in '{root}'.")
    (out / "missing.json").write_text(json.dumps(missing, indent=2) + "\n")
    return missing
