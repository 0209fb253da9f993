"""A demo-sized WDM checkpoint with a training record, as training writes it, and the export script's module."""

import importlib.util

import pytest
import torch

from wdm_bundle.diffusion import make_scheduler
from wdm_bundle.engines import training_record
from wdm_bundle.networks import WaveletDiffusionUNet

#: configs/demo.json's network (images 32^3, coefficients 16^3)
DEMO_NET = {"channels": [16, 32, 32], "num_res_blocks": 1, "norm_num_groups": 8}


@pytest.fixture(scope="session")
def export_script(repo_root):
    spec = importlib.util.spec_from_file_location(
        "export_checkpoint_script", repo_root / "scripts" / "export_checkpoint.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _demo_network(seed=0):
    """The demo network with every weight perturbed (MONAI zero-initialises the output convolution)."""
    torch.manual_seed(seed)
    net = WaveletDiffusionUNet(**DEMO_NET)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


@pytest.fixture(scope="session")
def demo_network():
    """``demo_network(seed)``: seed 0 gives the checkpoint's EMA weights, seed 1 its ``model`` weights."""
    return _demo_network


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """``<bundle_root>/models/model.pt``: ``model`` and (other) ``ema`` weights, the record, the objective."""
    root = tmp_path_factory.mktemp("bundle")
    (root / "models").mkdir()
    ema, model = _demo_network(0), _demo_network(1)
    record = training_record(
        task="generation",
        diffusion="ddpm",
        scheduler=make_scheduler("ddpm"),
        network=ema,
        data_range=(-1, 1),
        image_size=(32, 32, 32),
        spacing=(5.0, 6.0, 5.0),
        modality="t1n",
    )
    state = {
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "iteration": 10,
        "record": record,
        "diffusion": "ddpm",
    }
    torch.save(state, root / "models" / "model.pt")
    return root / "models" / "model.pt"
