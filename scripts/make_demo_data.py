"""Write a small synthetic brain MR data set in the BraTS layout (no download needed).

Runs from the repository root without installing the package::

    python scripts/make_demo_data.py --output_dir demo_data --num_cases 40 --size 32
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # repo root, for `wdm_bundle`

import fire  # noqa: E402

from wdm_bundle.data.demo import make_demo_dataset  # noqa: E402
from wdm_bundle.data.demo_inpainting import make_inpainting_dataset  # noqa: E402

LAYOUTS = {"brats": make_demo_dataset, "inpainting": make_inpainting_dataset}


def make_demo_data(output_dir: str = "demo_data", layout: str = "brats", **options) -> str:
    """Generate ``num_cases`` synthetic subjects (t1n, t1c, t2w, t2f, seg) and a datalist.json.

    Anatomy is a randomly deformed MNI152 2009a template from nilearn's wheel; about
    ``lesion_prob`` of the cases get a tumour-like lesion. The last ``num_test`` cases form the
    "test" split. Refuses to write into a folder that already holds a data set unless
    ``--overwrite``. The options are those of :func:`wdm_bundle.data.demo.make_demo_dataset`.

    Example::

        python scripts/make_demo_data.py --output_dir demo_data --num_cases 40 --size 32
        python scripts/make_demo_data.py --output_dir demo64 --size 64 --num_test 4 --overwrite

    ``--layout inpainting`` writes the BraTS "Local Synthesis" layout instead (t1n only): per case
    ``-t1n``, ``-mask-healthy`` (a random tumour-like mask in healthy tissue), ``-mask-unhealthy`` (the
    lesion region; all-zero without lesion), ``-mask`` (the region to inpaint), ``-t1n-voided`` (the
    image with that region set to 0) and, for lesion cases, ``-t1n-healthy`` (the same subject rendered
    without its lesion); its options are those of
    :func:`wdm_bundle.data.demo_inpainting.make_inpainting_dataset` (``--test_mask healthy|unhealthy``,
    ``--fraction``, ``--margin``; 20 cases, 4 of them test, by default)::

        python scripts/make_demo_data.py --layout inpainting --output_dir inpainting_data --size 32

    Args:
        output_dir: destination folder (created if needed).
        layout: ``brats`` (the four contrasts and seg) or ``inpainting``.
        num_cases: number of cases, >= 1 (default 40).
        size: grid size, an int (cube) or 3 ints like ``[64,64,48]``; each >= 8 (default 32).
        num_test: number of test cases, 0 <= num_test < num_cases (default 8).
        seed: base seed; case i uses seed (seed, i) (default 0).
        lesion_prob: probability that a case has a lesion (default 0.5).
        overwrite: allow writing into a folder that already holds a data set (default False).
        progress: show a progress bar (default True).

    Returns:
        Path of the written datalist.json.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"--layout must be one of {sorted(LAYOUTS)}, got {layout!r}.")
    return LAYOUTS[layout](output_dir, **options)


if __name__ == "__main__":
    fire.Fire(make_demo_data)
