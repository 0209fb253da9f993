"""Generation metrics workflow: FID on Med3D features, MS-SSIM diversity, metrics.json, and configs/evaluate.json."""

import json
import tracemalloc

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from wdm_bundle.metrics.diversity import truncated_ms_ssim_weights
from wdm_bundle.metrics.med3d import Med3DResNet50
from wdm_bundle.reports.generation import GenerationEvaluator, feature_statistics


def _write(folder, n, size, seed, prefix):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        vol = np.full((size,) * 3, -1.0, np.float32)
        c = size // 4
        vol[c:-c, c:-c, c:-c] = rng.uniform(-0.5, 1.0, (size - 2 * c,) * 3)  # a "brain" on a -1 background
        nib.save(nib.Nifti1Image(vol, np.eye(4)), folder / f"{prefix}_{i:03d}.nii.gz")
    return folder


def test_feature_statistics_streams_with_bounded_memory():
    size, count = 16, 300  # 300 float32 16^3 volumes = 4.9 MB in all, each 16 KB
    cap = 1_000_000

    def volumes():
        rng = np.random.default_rng(0)
        for _ in range(count):
            yield rng.uniform(-1, 1, (size,) * 3).astype(np.float32)

    def extractor(x):  # cheap stand-in for Med3D: 8 block means
        return x.reshape(1, 8, -1).mean(-1)

    tracemalloc.start()
    try:
        stats = feature_statistics(volumes(), extractor, (-1, 1))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stats.n == count and stats.mean.shape == (8,)
    assert count * size**3 * 4 > 4 * cap and peak < cap, peak


def test_missing_empty_and_mismatched_dirs(tmp_path):
    real = _write(tmp_path / "real", 2, 8, 0, "real")
    with pytest.raises(FileNotFoundError, match="fake_dir .*nope.* does not exist"):
        GenerationEvaluator(real, tmp_path / "nope", tmp_path / "out").run()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="fake_dir .*empty.* holds no NIfTI files"):
        GenerationEvaluator(real, tmp_path / "empty", tmp_path / "out").run()
    fake = _write(tmp_path / "fake", 2, 10, 1, "gen")
    with pytest.raises(ValueError, match=r"gen_000.nii.gz has \(10, 10, 10\) but .*real_000.nii.gz has \(8, 8, 8\)"):
        GenerationEvaluator(real, fake, tmp_path / "out").run()
    with pytest.raises(ValueError, match="data_range"):
        GenerationEvaluator(real, fake, tmp_path / "out", data_range=(1, -1))


def test_fid_with_weights(tmp_path, monkeypatch):
    torch.manual_seed(0)
    torch.save({"state_dict": {"module." + k: v for k, v in Med3DResNet50().state_dict().items()}}, tmp_path / "w.pth")
    # keep 64 of the 2048 pooled features: two eigen-decompositions of 2048^2 take ~20 s on a busy 2-core CI box
    monkeypatch.setattr(Med3DResNet50, "forward", lambda self, x: self.feature_map(x).mean(dim=(2, 3, 4))[:, :64])
    real = _write(tmp_path / "real", 2, 16, 0, "real")
    fake = _write(tmp_path / "fake", 3, 16, 1, "gen")
    ev = GenerationEvaluator(
        real,
        fake,
        tmp_path / "out",
        med3d_weights=tmp_path / "w.pth",
        progress=False,
        ms_ssim_weights=truncated_ms_ssim_weights(2),
        num_preview=1,
    )
    m = ev.run()
    assert m["fid"]["value"] is not None and m["fid"]["value"] > 0 and m["fid"]["direction"] == "lower is better"
    assert m["num_real"] == 2 and m["num_fake"] == 3 and m["ms_ssim_real"]["num_pairs"] == 1
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["fid"]["value"] == pytest.approx(
        m["fid"]["value"]
    )


def test_evaluate_config_end_to_end_without_weights(repo_root, tmp_path):
    real = _write(tmp_path / "real", 3, 32, 0, "real")
    fake = _write(tmp_path / "fake", 4, 32, 1, "gen")
    out = tmp_path / "out"
    wf = ConfigWorkflow(
        config_file=str(repo_root / "configs" / "evaluate.json"),
        meta_file=str(repo_root / "configs" / "metadata.json"),
        logging_file=str(repo_root / "configs" / "logging.conf"),
        workflow_type=None,
        run_id="evaluate",
        bundle_root=str(tmp_path),
        real_dir=str(real),
        fake_dir=str(fake),
        output_dir=str(out),
        device="cpu",
        progress=False,
        max_pairs=4,
    )
    wf.initialize()
    wf.run()
    m = json.loads((out / "metrics.json").read_text())
    assert m["num_real"] == 3 and m["num_fake"] == 4
    assert m["fid"]["value"] is None and "--med3d_weights path/to/resnet_50.pth" in m["fid"]["skipped"]
    assert 0 < m["ms_ssim_fake"]["value"] < 1 and m["ms_ssim_fake"]["num_pairs"] == 4
    assert m["ms_ssim_real"]["num_pairs"] == 3 and "lower is more diverse" in m["ms_ssim_real"]["direction"]
    assert m["ms_ssim_real"]["weights"] == pytest.approx(truncated_ms_ssim_weights(3))  # 32^3: 3 scales chosen
    assert (out / "real_vs_generated.png").stat().st_size > 1000
