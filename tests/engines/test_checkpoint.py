import os

import pytest
import torch
from ignite.engine import Engine, Events

from wdm_bundle.engines import TrainingCheckpointer, atomic_save, latest_checkpoint, list_checkpoints, load_weights
from wdm_bundle.networks import WaveletDiffusionUNet

SMALL = dict(channels=(8, 16), num_res_blocks=1, norm_num_groups=8)


def _engine(net, opt):
    def step(engine, batch):
        opt.zero_grad()
        loss = net(torch.randn(1, 8, 4, 4, 4), torch.tensor([1])).pow(2).mean() + sum(
            p.sum() * 0 for p in net.parameters()
        )
        loss.backward()
        opt.step()
        return loss.item()

    return Engine(step)


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    atomic_save({"a": torch.ones(2)}, tmp_path / "x.pt")

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError):
        atomic_save({"a": torch.zeros(2)}, tmp_path / "x.pt")
    assert sorted(os.listdir(tmp_path)) == ["x.pt"]
    assert torch.load(tmp_path / "x.pt", weights_only=True)["a"].tolist() == [1.0, 1.0]


def test_save_prune_refuse_and_resume(tmp_path):
    net = WaveletDiffusionUNet(**SMALL)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    engine = _engine(net, opt)
    TrainingCheckpointer(tmp_path, net, opt, save_every=2, n_saved=2).attach(engine)
    engine.run(range(7), max_epochs=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint_00000006.pt", "checkpoint_00000007.pt"]
    assert torch.load(tmp_path / "model.pt", weights_only=True)["iteration"] == 7

    # a new run in the same folder must not destroy the old one by accident
    with pytest.raises(FileExistsError, match="--resume true"):
        TrainingCheckpointer(tmp_path, net, opt).attach(_engine(net, opt))

    net2 = WaveletDiffusionUNet(**SMALL)
    opt2 = torch.optim.Adam(net2.parameters(), 1e-3)
    engine2 = _engine(net2, opt2)
    seen = []
    engine2.add_event_handler(Events.ITERATION_STARTED, lambda e: seen.append(e.state.iteration))
    engine2.state.max_epochs = 2
    TrainingCheckpointer(tmp_path, net2, opt2, save_every=100, resume=True).attach(engine2)
    assert engine2.state.iteration == 7
    for a, b in zip(net.state_dict().values(), net2.state_dict().values()):
        assert torch.equal(a, b)
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    engine2.run(range(7), max_epochs=2)
    assert seen[0] == 8 and engine2.state.iteration == 14  # ignite counts the running iteration
    assert latest_checkpoint(tmp_path).name == "checkpoint_00000014.pt"


def test_load_weights_errors(tmp_path):
    net = WaveletDiffusionUNet(**SMALL)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_weights(net, tmp_path / "none.pt")
    other = WaveletDiffusionUNet(channels=(8, 16, 16), num_res_blocks=1, norm_num_groups=8)
    atomic_save({"model": other.state_dict()}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="unexpected keys: backbone.*shape mismatches"):
        load_weights(net, tmp_path / "other.pt", key="model")
    wide = WaveletDiffusionUNet(channels=(16, 16), num_res_blocks=1, norm_num_groups=8)
    atomic_save(wide.state_dict(), tmp_path / "wide.pt")
    with pytest.raises(ValueError, match=r"shape mismatches.*\(16, 8, 3, 3, 3\) vs \(8, 8, 3, 3, 3\)"):
        load_weights(net, tmp_path / "wide.pt", key=None)
    atomic_save({"model": net.state_dict(), "ema": {k: v + 1 for k, v in net.state_dict().items()}}, tmp_path / "m.pt")
    fresh = WaveletDiffusionUNet(**SMALL)
    load_weights(fresh, tmp_path / "m.pt", key="ema")
    key = next(iter(net.state_dict()))
    assert torch.equal(fresh.state_dict()[key], net.state_dict()[key] + 1)


def test_atomic_write_keeps_the_suffix_for_format_detection(tmp_path):
    import nibabel as nib
    import numpy as np

    from wdm_bundle.utils import atomic_write

    img = nib.Nifti1Image(np.ones((2, 2, 2), np.float32), np.eye(4))
    atomic_write(tmp_path / "x.nii.gz", lambda tmp: nib.save(img, tmp))
    assert (tmp_path / "x.nii.gz").read_bytes()[:2] == b"\x1f\x8b"  # gzip, as the final name says
    assert os.listdir(tmp_path) == ["x.nii.gz"]


def test_random_state_round_trip_loads_weights_only(tmp_path):
    import random

    import numpy as np

    from wdm_bundle.engines import random_state, set_random_state

    gen = torch.Generator().manual_seed(1)

    def draws():
        return (
            torch.rand(3).tolist(),
            np.random.rand(3).tolist(),
            np.random.randn(1).tolist(),
            random.random(),
            torch.rand(2, generator=gen).tolist(),
        )

    np.random.randn(1)  # leave a cached gaussian in numpy's state
    atomic_save({"rng": [random_state(gen)]}, tmp_path / "s.pt")
    first = draws()
    set_random_state(torch.load(tmp_path / "s.pt", weights_only=True)["rng"][0], gen)
    assert draws() == first


def test_checkpoint_without_random_state_resumes_with_a_warning(tmp_path, caplog):
    net = WaveletDiffusionUNet(**SMALL)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    engine = _engine(net, opt)
    TrainingCheckpointer(tmp_path, net, opt, save_every=2).attach(engine)
    engine.run(range(2), max_epochs=1)
    path = latest_checkpoint(tmp_path)
    state = torch.load(path, weights_only=True)
    assert len(state["rng"]) == 1 and {"torch", "numpy", "python"} <= state["rng"][0].keys()
    atomic_save({k: v for k, v in state.items() if k not in ("rng", "data")}, path)  # as an older version wrote it

    engine2 = _engine(net, opt)
    TrainingCheckpointer(tmp_path, net, opt, resume=True).attach(engine2)
    with caplog.at_level("WARNING", logger="wdm_bundle.engines.checkpoint"):
        engine2.run(range(2), max_epochs=2)
    assert engine2.state.iteration == 4
    assert "is not exact" in caplog.text and "holds no random state" in caplog.text
