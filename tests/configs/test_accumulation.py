"""Gradient accumulation (`gradient_accumulation_steps`): what one iteration means for the optimizer."""

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow

from wdm_bundle.engines import list_checkpoints

pytestmark = pytest.mark.slow


def test_accumulation_steps_optimizer_every_k_iterations(repo_root, demo_data, tmp_path):
    """One iteration = one mini-batch; the optimizer steps every k iterations and at each epoch's end."""
    wf = ConfigWorkflow(
        config_file=[str(repo_root / "configs" / c) for c in ("train.json", "demo.json")],
        workflow_type="train",
        bundle_root=str(tmp_path),
        dataset_dir=str(demo_data),
        num_workers=0,
        num_iterations=6,
        epoch_length=3,
        gradient_accumulation_steps=2,
        save_every=100,
        preview_every=100,
        log_every=100,
    )
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    network = wf.parser.get_parsed_content("network")
    snapshots = [[p.detach().clone() for p in network.parameters()]]
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: snapshots.append([p.detach().clone() for p in network.parameters()])
    )
    wf.run()
    wf.finalize()
    stepped = [
        i
        for i in range(1, len(snapshots))
        if any(not torch.equal(a, b) for a, b in zip(snapshots[i - 1], snapshots[i]))
    ]
    # epoch_length 3 is not a multiple of 2: the last, half-filled accumulation of each epoch is flushed
    assert stepped == [2, 3, 5, 6]
    assert [p.name for p in list_checkpoints(tmp_path / "models")] == ["checkpoint_00000006.pt"]
