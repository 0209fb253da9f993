"""Make a BraSyn-like pseudo-validation set: complete cases with one random contrast moved aside.

Runs from the repository root without installing the package::

    python scripts/make_pseudo_validation.py --input_dir demo_data --output_dir pseudo_val --gt_dir pseudo_val_gt
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # repo root, for `wdm_bundle`

import fire  # noqa: E402

from wdm_bundle.data.io import CONTRASTS  # noqa: E402
from wdm_bundle.data.pseudo_validation import make_pseudo_validation as _make  # noqa: E402


def make_pseudo_validation(
    input_dir: str | None = None, output_dir: str = "pseudo_val", gt_dir: str = "pseudo_val_gt", **options
) -> str:
    """Copy complete cases to ``output_dir`` minus one contrast each, which goes to ``gt_dir``.

    The dropped contrast of a case depends only on (seed, case name). Writes
    ``<output_dir>/missing.json`` ({case: contrast}); incomplete cases are reported and skipped.
    Refuses non-empty ``output_dir``/``gt_dir`` unless ``--overwrite``. The options are those of
    :func:`wdm_bundle.data.pseudo_validation.make_pseudo_validation`.

    Example::

        python scripts/make_pseudo_validation.py --input_dir demo_data --output_dir pv --gt_dir pv_gt --seed 0
        python scripts/make_pseudo_validation.py --datalist demo_data/datalist.json --split test \\
            --output_dir pv --gt_dir pv_gt --contrasts "['t1n','t1c','t2w','t2f']"

    Args:
        input_dir: folder of case folders ``<case>/<case>-<contrast>.nii.gz``; default the
            folder of ``--datalist``.
        output_dir: destination of the cases with one contrast missing.
        gt_dir: destination of the dropped contrasts, ``<gt_dir>/<case>/<case>-<contrast>.nii.gz``.
        seed: non-negative seed (default 0).
        contrasts: the contrasts of a complete case; one of them is dropped (default t1n, t1c, t2w, t2f).
        cases: only these case names (not with ``--datalist``).
        datalist: pick the cases of a datalist JSON's ``--split``.
        split: datalist split (default ``test``).
        keep_seg: also copy ``<case>-seg`` (default False).
        overwrite: write into non-empty folders (the written cases' folders are replaced; default False).

    Returns:
        Path of the written missing.json.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    missing = _make(input_dir, output_dir, gt_dir, **options)
    counts = {c: sum(v == c for v in missing.values()) for c in options.get("contrasts", CONTRASTS)}
    print(f"{len(missing)} case(s) written; dropped: " + ", ".join(f"{c} {n}" for c, n in counts.items()))
    return str(Path(output_dir) / "missing.json")


if __name__ == "__main__":
    fire.Fire(make_pseudo_validation)
