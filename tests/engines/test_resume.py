"""Exact resume: N iterations straight equal N/2 + ``--resume true`` N/2, bit for bit, on the real workflows."""

import pytest
from ignite.engine import Events
from workflow_helpers import assert_same_training, workflow

pytestmark = pytest.mark.slow

N = 24
# 16 demo cases in batches of 3 (drop_last): 5 batches a pass; epochs of 7: the resume at N/2 = 12 lands mid-pass
# (pass 2, batch 2) and mid-epoch; a preview at the save exercises the handlers that run after the checkpointer
COMMON = dict(
    batch_size=3, epoch_length=7, save_every=N // 2, preview_every=N // 2, preview_steps=2, log_every=100, num_workers=0
)


def _train(repo_root, configs, root, demo_data, num_iterations, **override):
    wf = workflow(
        repo_root,
        configs,
        "train",
        bundle_root=str(root),
        dataset_dir=str(demo_data),
        num_iterations=num_iterations,
        **{**COMMON, **override},
    )
    trainer = wf.parser.get_parsed_content("train#trainer")
    loss = {}
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: loss.__setitem__(e.state.iteration, float(e.state.output[0]["loss"]))
    )
    wf.run()
    out = {
        "loss": loss,
        "model": wf.parser.get_parsed_content("network").state_dict(),
        "ema": wf.parser.get_parsed_content("ema").ema_model.state_dict(),
        "optimizer": wf.parser.get_parsed_content("optimizer").state_dict(),
    }
    wf.finalize()
    return out


@pytest.mark.parametrize(
    "configs, override",
    [
        (["train.json", "demo.json"], {"image_size": [16, 16, 16]}),
        # the unified cWDM model also draws each sample's target contrast
        (["train.json", "train_cwdm.json", "demo.json"], {"pad_crop_size": [16, 16, 16]}),
        # the BraTS demo cases have no -mask-healthy: the inpainting model draws a random mask per item
        (["train.json", "train_inpaint.json", "demo.json"], {"image_size": [16, 16, 16]}),
    ],
    ids=["wdm", "cwdm_unified", "inpainting_random_masks"],
)
def test_resume_is_exact(repo_root, demo_data, tmp_path, configs, override):
    straight = _train(repo_root, configs, tmp_path / "straight", demo_data, N, **override)
    _train(repo_root, configs, tmp_path / "resumed", demo_data, N // 2, **override)
    resumed = _train(repo_root, configs, tmp_path / "resumed", demo_data, N, resume=True, **override)
    assert min(resumed["loss"]) == N // 2 + 1
    assert_same_training(straight, resumed)
