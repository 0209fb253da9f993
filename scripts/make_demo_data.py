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


def make_demo_data(
    output_dir: str = "demo_data",
    num_cases: int = 40,
    size: int | tuple[int, int, int] = 32,
    num_test: int = 8,
    seed: int = 0,
    lesion_prob: float = 0.5,
    overwrite: bool = False,
    progress: bool = True,
) -> str:
    """Generate ``num_cases`` synthetic subjects (t1n, t1c, t2w, t2f, seg) and a datalist.json.

    Anatomy is a randomly deformed MNI152 2009a template from nilearn's wheel; about
    ``lesion_prob`` of the cases get a tumour-like lesion. The last ``num_test`` cases form the
    "test" split. Refuses to write into a folder that already holds a data set unless
    ``--overwrite``.

    Example::

        python scripts/make_demo_data.py --output_dir demo_data --num_cases 40 --size 32
        python scripts/make_demo_data.py --output_dir demo64 --size 64 --num_test 4 --overwrite

    Args:
        output_dir: destination folder (created if needed).
        num_cases: number of cases, >= 1.
        size: grid size, an int (cube) or 3 ints like ``[64,64,48]``; each >= 8.
        num_test: number of test cases, 0 <= num_test < num_cases.
        seed: base seed; case i uses seed (seed, i).
        lesion_prob: probability that a case has a lesion.
        overwrite: allow writing into a folder that already holds a data set.
        progress: show a progress bar.

    Returns:
        Path of the written datalist.json.
    """
    return make_demo_dataset(
        output_dir,
        num_cases=num_cases,
        size=size,
        num_test=num_test,
        seed=seed,
        lesion_prob=lesion_prob,
        overwrite=overwrite,
        progress=progress,
    )


if __name__ == "__main__":
    fire.Fire(make_demo_data)
