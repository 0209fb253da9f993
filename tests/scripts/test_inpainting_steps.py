"""The steps study (scripts/inpainting_steps.py, `wdm_bundle.reports.steps`): the 10 % rule on hand-made tables, the
options, and a whole run with a tiny random WDM model (RePaint) on 32^3 demo cases, T = 10."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wdm_bundle.data.demo_inpainting import make_inpainting_dataset
from wdm_bundle.engines import LEGACY_RECORDS, atomic_save, recorded_network, validate_record
from wdm_bundle.reports.steps import StepOption, fewest_steps_within, study_options, within
from wdm_bundle.reports.steps_report import fewest_steps

ROOT = Path(__file__).resolve().parents[2]
T = 10
REF = {"ssim": 0.5, "psnr": 20.0, "mse": 0.01}


def test_within_is_direction_aware():
    assert within("ssim", 0.46, 0.5) and not within("ssim", 0.44, 0.5) and within("ssim", 0.9, 0.5)  # better: in
    assert within("psnr", 18.1, 20.0) and not within("psnr", 17.9, 20.0) and within("psnr", 35.0, 20.0)
    assert within("mse", 0.0109, 0.01) and not within("mse", 0.0111, 0.01) and within("mse", 0.001, 0.01)
    assert within("ssim", 0.45, 0.5) and within("mse", 0.011, 0.01)  # the bounds themselves
    assert not within("ssim", math.nan, 0.5) and within("psnr", math.inf, 20.0) and not within("mse", 1.0, 0.01, 0.5)


def test_fewest_steps_rule_on_a_hand_made_table():
    table = {
        2: {"ssim": 0.30, "psnr": 19.0, "mse": 0.009},  # SSIM too low
        5: {"ssim": 0.49, "psnr": 15.0, "mse": 0.009},  # PSNR too low (also at 20 %)
        10: {"ssim": 0.60, "psnr": 21.0, "mse": 0.0115},  # MSE too high (though better on the others)
        50: {"ssim": 0.46, "psnr": 18.5, "mse": 0.0105},  # all within 10 %
        100: {"ssim": 0.55, "psnr": 22.0, "mse": 0.005},  # better everywhere, but more steps
    }
    assert fewest_steps_within(table, REF) == 50
    assert fewest_steps_within({k: v for k, v in table.items() if k < 50}, REF) is None
    assert fewest_steps_within(table, REF, tolerance=0.2) == 10  # MSE 0.0115 <= 0.012
    assert fewest_steps_within({7: table[2]}, {**REF, "ssim": 0.31}) == 7

    def row(sampler, steps, spacing, ssim, psnr, mse, n=3):
        name = StepOption(sampler, steps, spacing).name
        values = {"ssim": ssim, "psnr": psnr, "mse": mse}
        return {"option": name, "sampler": sampler, "steps": steps, "spacing": spacing, "n": n} | {
            k: {"mean": v, "std": 0.0} for k, v in values.items()
        }

    summary = [row("ddim", s, "trailing", *table[s].values()) for s in (2, 5, 10, 50)]
    summary += [row("ddim", 2, "leading", 0.5, 20.0, 0.01), row("ddim", 5, "linspace", math.nan, 20, 0.01, n=0)]
    summary += [row("ddpm", 1000, "", *REF.values())]
    assert fewest_steps(summary) == {"trailing": 50, "leading": 2, "linspace": None}
    summary[-1]["n"] = 0
    assert fewest_steps(summary) == {"trailing": None, "leading": None, "linspace": None}


def test_study_options():
    names = [o.name for o in study_options([5, 10, 2], ["trailing", "leading", "trailing"], T)]
    assert names == ["ddim-2-trailing", "ddim-5-trailing", "ddim-2-leading", "ddim-5-leading", "ddpm-10"]
    for steps, spacings, match in [([2, 5], ["leading"], "include T"), ([2, 11], ["leading"], r"\[1, 10\]")]:
        with pytest.raises(ValueError, match=match):
            study_options(steps, spacings, T)
    with pytest.raises(ValueError, match="use one of linspace, leading, trailing"):
        study_options([2, T], ["even"], T)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(checkpoint of a random tiny WDM model with T = 10, a folder of 3 demo inpainting cases at 32^3)."""
    root = tmp_path_factory.mktemp("steps")
    base = LEGACY_RECORDS["generation"]
    network = {**base["network"], "channels": [8, 8], "num_res_blocks": 1, "norm_num_groups": 8}
    record = validate_record(
        {**base, "pad_crop_size": [32] * 3, "image_size": [32] * 3, "num_train_timesteps": T, "network": network}
    )
    net, g = recorded_network(record), torch.Generator().manual_seed(0)
    with torch.no_grad():  # MONAI zero-initialises the output convolution: x0 would be 0 whatever the input
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    state = net.state_dict()
    ckpt = root / "model.pt"
    atomic_save({"model": state, "ema": state, "iteration": 1, "record": record}, ckpt)
    data = root / "data"
    make_inpainting_dataset(data, num_cases=3, num_test=1, size=32, progress=False)
    return ckpt, data


def test_study_writes_the_report(tiny, tmp_path):
    from inpainting_steps import inpainting_steps

    ckpt, data = tiny
    out = tmp_path / "report"
    args = dict(steps="2,5,10", spacings="linspace,leading,trailing", num_cases=2, device="cpu", progress=False)
    path = inpainting_steps(str(ckpt), str(data), str(out), **args)
    result = json.loads(Path(path).read_text())
    names = [o["option"] for o in result["options"]]
    assert names == [f"ddim-{n}-{s}" for s in ("linspace", "leading", "trailing") for n in (2, 5)] + ["ddpm-10"]
    with open(out / "steps.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(names) * 2 and {r["case"] for r in rows} == {"BraTS-DEMO-00000-000", "BraTS-DEMO-00001-000"}
    calls = {r["option"]: int(r["network_calls"]) for r in rows}
    assert calls["ddim-2-trailing"] == 2 and calls["ddim-5-leading"] == 5 and calls["ddpm-10"] == T
    assert all(0 < float(r["seconds"]) and -1 <= float(r["ssim"]) <= 1 and float(r["mse"]) >= 0 for r in rows)
    assert all(o["n"] == 2 and math.isfinite(o["psnr"]["mean"]) for o in result["options"])
    mse = {o["option"]: o["mse"]["mean"] for o in result["options"]}
    assert mse["ddim-2-linspace"] != mse["ddim-2-trailing"] != mse["ddpm-10"]  # other timesteps, other samples
    assert mse["ddim-5-linspace"] == mse["ddim-5-leading"]  # RePaint runs "linspace" DDIM at the leading levels
    assert set(result["fewest_steps"]) == {"linspace", "leading", "trailing"}
    assert result["settings"]["task"] == "generation" and result["num_train_timesteps"] == T
    table = (out / "steps.md").read_text()
    assert all(f"| {n} | 2 |" in table for n in names) and "Fewest DDIM steps within 10% of DDPM-10" in table
    assert (out / "steps.png").stat().st_size > 10_000
    with pytest.raises(FileExistsError, match="--overwrite"):
        inpainting_steps(str(ckpt), str(data), str(out), **args)
    args.update(steps="3,10", spacings="trailing", num_cases=1, overwrite=True)
    again = json.loads(Path(inpainting_steps(str(ckpt), str(data), str(out), **args)).read_text())
    assert [o["option"] for o in again["options"]] == ["ddim-3-trailing", "ddpm-10"]


def test_no_scored_case_exits_non_zero(tiny, tmp_path):
    ckpt, data = tiny
    cmd = [sys.executable, str(ROOT / "scripts" / "inpainting_steps.py"), "--ckpt_path", str(ckpt)]
    cmd += ["--data_dir", str(data), "--output_dir", str(tmp_path / "out"), "--steps", "2,10", "--device", "cpu"]
    proc = subprocess.run([*cmd, "--truth_suffix", "t1n-missing"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "no case of" in proc.stderr and "t1n-missing" in proc.stderr
    assert not (tmp_path / "out").exists()
