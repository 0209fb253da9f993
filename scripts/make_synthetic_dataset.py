"""Turn a folder of tumour label maps into a synthetic BraTS-layout data set with a label-conditioned model.

Runs ``configs/inference_label2image.json`` from the repository root without installing the package::

    python scripts/make_synthetic_dataset.py --label_dir label_maps --output_dir synthetic \\
        --bundle_root . --num_inference_steps 20 [--cases "[case1,case2]"]
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # repo root, for `wdm_bundle`

import fire  # noqa: E402
from monai.bundle import ConfigWorkflow  # noqa: E402

from wdm_bundle.data.label_maps import check_case_name  # noqa: E402
from wdm_bundle.diffusion.schedulers import Sampler  # noqa: E402
from wdm_bundle.utils import as_bool, install_error_report  # noqa: E402


def _is_plain_name(name: str) -> bool:
    try:
        return check_case_name(name) == name
    except ValueError:
        return False


def _names(value: str | Sequence[str] | None, what: str) -> list[str] | None:
    """A list of plain names from fire's value: a list, or a string "a", "a,b" or "[a,b]" (fire leaves names with '-'
    unparsed)."""
    if value is None:
        return None
    items = value.strip().strip("[]").split(",") if isinstance(value, str) else list(value)
    names = [str(v).strip().strip("'\"").strip() for v in items if str(v).strip()]
    bad = [n for n in names if not _is_plain_name(n)]
    if not names or bad:
        raise ValueError(f"--{what} must be plain names (letters, digits, '_.-'), got {value!r:.80}.")
    return names


def _folder(path: str | None, what: str) -> str | None:
    # an absolute path never starts with '$', '@' or '%', so ConfigParser takes it as a plain string
    return None if path is None else str(Path(str(path)).expanduser().resolve())


def make_synthetic_dataset(
    label_dir: str,
    output_dir: str,
    bundle_root: str | None = None,
    ckpt_path: str | None = None,
    contrasts: str | Sequence[str] | None = None,
    num_inference_steps: int | None = None,
    sampler: str = "ddim",
    seed: int = 0,
    cases: str | Sequence[str] | None = None,
    overwrite: bool = False,
    allow_empty_labels: bool = False,
    progress: bool = True,
) -> str:
    """Generate every case of ``label_dir`` into ``output_dir``; returns the path of the written ``datalist.json``.

    Example::

        python scripts/make_synthetic_dataset.py --label_dir brats_labels --output_dir synthetic --bundle_root . \\
            --num_inference_steps 20 --cases "[BraTS-GLI-00000-000,BraTS-GLI-00002-000]" --contrasts "[t1c,t2f]"

    Args:
        label_dir: folder of case folders ``<case>/<case>-seg.nii.gz``, each with ``<case>-brainmask.nii.gz`` or a
            skull-stripped contrast ``<case>-{t1n,t1c,t2w,t2f}.nii.gz`` whose non-zero voxels are the brain.
        output_dir: destination: ``<case>/<case>-<contrast>.nii.gz``, ``<case>/<case>-seg.nii.gz``, ``datalist.json``.
        bundle_root: bundle folder with ``models/label2image/model.pt`` (default the repository).
        ckpt_path: the model file instead (overrides ``bundle_root``'s).
        contrasts: write only these of the model's contrasts (default all).
        num_inference_steps: sampling steps (DDIM/RFlow; default the config's: DDPM over all training steps).
        sampler: ``ddim`` (default), ``ddpm`` or ``rflow``.
        seed: noise seed; a case's noise depends only on (seed, case name).
        cases: only these case names.
        overwrite: replace existing output files (else the run is refused before any sampling).
        allow_empty_labels: accept label maps without any tumour voxel (healthy brains; refused by default).
        progress: show progress bars.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    install_error_report()
    override = {
        "bundle_root": _folder(bundle_root, "bundle_root") or str(REPO),
        "input_dir": _folder(label_dir, "label_dir"),
        "output_dir": _folder(output_dir, "output_dir"),
        "sampler": Sampler(str(sampler)).value,
        "seed": int(seed),
        "overwrite": as_bool(overwrite, "overwrite"),
        "progress": as_bool(progress, "progress"),
        "allow_empty_labels": as_bool(allow_empty_labels, "allow_empty_labels"),
        "output_contrasts": _names(contrasts, "contrasts"),
        "cases": None if cases is None else [check_case_name(c) for c in _names(cases, "cases")],
    }
    if ckpt_path is not None:
        override["ckpt_path"] = _folder(ckpt_path, "ckpt_path")
    if num_inference_steps is not None:
        override["num_inference_steps"] = int(num_inference_steps)
    workflow = ConfigWorkflow(
        config_file=str(REPO / "configs" / "inference_label2image.json"),
        meta_file=str(REPO / "configs" / "metadata.json"),
        logging_file=str(REPO / "configs" / "logging.conf"),
        workflow_type="infer",
        **override,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    datalist = Path(override["output_dir"]) / "datalist.json"
    print(f"wrote the synthetic data set '{override['output_dir']}' ({datalist})")
    return str(datalist)


if __name__ == "__main__":
    fire.Fire(make_synthetic_dataset)
