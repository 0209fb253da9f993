"""Inpainting quality vs sampling steps: DDIM with 2-50 steps (each timestep spacing) against DDPM over all T.

Runs from the repository root without installing the package::

    python scripts/inpainting_steps.py --ckpt_path models/model.pt --data_dir inpainting_validation \\
        --output_dir eval/steps --steps 2,5,10,50,1000 --spacings linspace,leading,trailing --num_cases 8
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # repo root, for `wdm_bundle`

import fire  # noqa: E402
import torch  # noqa: E402

from wdm_bundle.engines import load_record, load_weights, recorded_network  # noqa: E402
from wdm_bundle.reports.steps import run_steps_study  # noqa: E402


def _ints(value) -> list[int]:
    """``2,5,10`` (fire gives a tuple, an int or a string) -> [2, 5, 10]."""
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
    return [int(v) for v in items if str(v).strip()]


def _names(value) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(v).strip() for v in items if str(v).strip()]


def inpainting_steps(
    ckpt_path: str,
    data_dir: str,
    output_dir: str = "eval/inpainting_steps",
    steps="2,5,10,50,1000",
    spacings="linspace,leading,trailing",
    num_cases: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    jump_length: int = 10,
    jump_n_sample: int = 1,
    use_ema: bool = True,
    device: str | None = None,
    voided_suffix: str = "t1n-voided",
    mask_suffix: str = "mask",
    truth_suffix: str = "t1n",
    progress: bool = True,
) -> str:
    """Inpaint the cases of ``data_dir`` with each sampling option of one model; score them; write the report.

    Options: DDIM with each of ``steps`` below T in each of ``spacings`` (`TimestepSpacing`), and DDPM over all
    T steps (T, the model's ``num_train_timesteps``, must be in ``steps``; the reference). An inpainting model
    (record task ``inpainting``) samples conditioned on the voided image; a WDM model (task ``generation``) runs
    RePaint. Every option uses the same noise seed. Writes into ``output_dir``: ``steps.csv`` (per option and
    case: SSIM, PSNR, MSE and the other challenge metrics inside the mask, seconds, network calls), ``steps.md``
    (mean ± std per option), ``steps.png`` (metrics vs steps) and ``steps.json`` (per spacing the fewest steps
    within 10 % of DDPM-T on every metric: SSIM >= 0.9 ref, PSNR >= 0.9 ref, MSE <= 1.1 ref; null if none).

    Args:
        ckpt_path: a bundle checkpoint with a training record.
        data_dir: case folders ``<case>/<case>-<voided_suffix>.nii.gz``, ``-<mask_suffix>`` (1 = inpaint) and the
            truth ``-<truth_suffix>`` (e.g. ``python scripts/make_demo_data.py --layout inpainting``).
        output_dir: where the report goes; existing report files are refused unless ``overwrite``.
        steps, spacings: comma-separated, e.g. ``2,5,10,50,1000`` and ``linspace,leading,trailing``.
        num_cases: the first cases (sorted) that load; None = all. seed: the noise seed.
        jump_length, jump_n_sample: RePaint's resampling (WDM models only; 1 = none; the jump is shortened to
            steps - 1 for few steps).
        use_ema: EMA weights (else the raw ones). device: default cuda if available.

    Returns:
        Path of the written steps.json (its ``fewest_steps`` is printed). Exits non-zero if no case was scored.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    record = load_record(ckpt_path, ("inpainting", "generation"), {})
    network = recorded_network(record)
    load_weights(network, ckpt_path, "ema" if use_ema else "model", sampler="ddpm", diffusion=record["diffusion"])
    network = network.to(device).eval()
    result = run_steps_study(
        network,
        record,
        data_dir,
        output_dir,
        steps=_ints(steps),
        spacings=_names(spacings),
        num_cases=num_cases,
        seed=seed,
        overwrite=overwrite,
        device=device,
        jump_length=jump_length,
        jump_n_sample=jump_n_sample,
        suffixes={"voided": voided_suffix, "mask": mask_suffix, "truth": truth_suffix},
        progress=progress,
    )
    print(json.dumps({"fewest_steps": result["fewest_steps"], "files": result["files"]}, indent=2))
    return result["files"]["json"]


if __name__ == "__main__":
    fire.Fire(inpainting_steps)
