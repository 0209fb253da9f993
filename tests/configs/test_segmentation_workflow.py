"""The tumour segmenter trained through configs/train_segmentation.json + demo_segmentation.json: it learns, its
model.pt loads as a `Segmenter`, a finished run is not overwritten by accident, and resume is exact."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from workflow_helpers import assert_same_training, error_messages, workflow

from wdm_bundle.data.datalists import read_split
from wdm_bundle.data.segmentation_transforms import labels_to_regions
from wdm_bundle.engines.segmentation import load_segmenter
from wdm_bundle.utils import torch_load

pytestmark = pytest.mark.slow

CONFIGS = ["train_segmentation.json", "demo_segmentation.json"]
NUM_ITERATIONS = 150  # about 30 s on 2 CPU cores


@pytest.fixture(scope="module")
def tumour_data(tmp_path_factory):
    """12 demo cases at 32^3, every one with a tumour."""
    from wdm_bundle.data.demo import make_demo_dataset

    out = tmp_path_factory.mktemp("seg_demo")
    make_demo_dataset(str(out), num_cases=12, size=32, num_test=0, seed=0, lesion_prob=1.0, progress=False)
    return out


def _train(repo_root, root, data, stop_at=None, **override):
    """Train (killed after iteration ``stop_at``, if given); losses by iteration and the final states."""
    wf = workflow(repo_root, CONFIGS, "train", bundle_root=str(root), dataset_dir=str(data), **override)
    loss = {}
    trainer = wf.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: loss.__setitem__(e.state.iteration, float(e.state.output[0]["loss"]))
    )
    if stop_at is not None:
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=stop_at), lambda e: e.terminate())
    wf.run()
    out = {
        "loss": loss,
        "model": wf.parser.get_parsed_content("network").state_dict(),
        "optimizer": wf.parser.get_parsed_content("optimizer").state_dict(),
    }
    out["ema"] = out["model"]  # no EMA: compared twice
    wf.finalize()
    return out


def _dice(pred, truth):
    return 2 * float((pred & truth).sum()) / max(float(pred.sum() + truth.sum()), 1.0)


def test_train_segment_and_refuse_overwrite(repo_root, tumour_data, tmp_path):
    run = _train(repo_root, tmp_path, tumour_data, num_iterations=NUM_ITERATIONS, log_every=50)
    losses = [run["loss"][i] for i in sorted(run["loss"])]
    assert len(losses) == NUM_ITERATIONS and np.mean(losses[-20:]) < np.mean(losses[:20]) - 0.1
    model = tmp_path / "models" / "segmentation" / "model.pt"
    state = torch_load(model)
    assert state["iteration"] == NUM_ITERATIONS and state["record"]["task"] == "segmentation"
    assert state["record"]["network"]["init_filters"] == 8 and state["record"]["roi_size"] == [32, 32, 32]

    segmenter = load_segmenter(model)
    dice, trivial = [], []
    for entry in read_split(tumour_data / "datalist.json", "training"):
        labels, reference = segmenter.segment_files({c: tumour_data / entry[c] for c in segmenter.contrasts})
        truth = np.asarray(nib.load(tumour_data / entry["seg"]).dataobj)
        assert labels.shape == truth.shape and np.allclose(
            reference.affine, nib.load(tumour_data / entry["seg"]).affine
        )
        wt, wt_truth = labels_to_regions(labels)[1] > 0, labels_to_regions(truth)[1] > 0
        dice.append(_dice(wt, wt_truth))
        trivial.append(_dice(np.ones_like(wt_truth), wt_truth))  # tumour everywhere: the best constant guess
    assert np.mean(dice) > max(0.4, 3 * np.mean(trivial)), (np.mean(dice), np.mean(trivial))

    # a second run in the same folder neither resumes nor overwrites unless told
    with pytest.raises(Exception) as err:
        _train(repo_root, tmp_path, tumour_data, num_iterations=10)
    assert "already holds" in error_messages(err.value) and "--resume true" in error_messages(err.value)
    longer = _train(repo_root, tmp_path, tumour_data, num_iterations=NUM_ITERATIONS + 5, resume=True)
    assert sorted(longer["loss"]) == list(range(NUM_ITERATIONS + 1, NUM_ITERATIONS + 6))


def test_absolute_datalist(repo_root, tumour_data, tmp_path):
    """An experiment's own datalist ({"case", t1n, t1c, t2w, t2f, seg}, absolute paths) in place of dataset_dir."""
    entries = [
        {k: (str(tumour_data / v) if k != "case" else v) for k, v in e.items()}
        for e in read_split(tumour_data / "datalist.json", "training")[:4]
    ]
    datalist = tmp_path / "mine.json"
    datalist.write_text(json.dumps({"training": entries}))
    wf = workflow(
        repo_root, CONFIGS, "train", bundle_root=str(tmp_path / "b"), datalist=str(datalist), num_iterations=2
    )
    assert [e["case"] for e in wf.parser.get_parsed_content("train#datalist")] == [e["case"] for e in entries]
    wf.run()
    wf.finalize()
    assert (tmp_path / "b" / "models" / "segmentation" / "model.pt").is_file()


def test_resume_is_exact(repo_root, tumour_data, tmp_path):
    """N iterations straight equal a run stopped after N/2 + --resume true, bit for bit (data order, crops, flips,
    intensity augmentation, Adam, the annealed learning rate), resuming mid-pass and mid-epoch."""
    n = 8
    common = dict(batch_size=3, epoch_length=3, save_every=n // 2, roi_size=[16, 16, 16], log_every=100, lr_min=0.0)
    straight = _train(repo_root, tmp_path / "straight", tumour_data, num_iterations=n, **common)
    _train(repo_root, tmp_path / "resumed", tumour_data, stop_at=n // 2, num_iterations=n, **common)
    resumed = _train(repo_root, tmp_path / "resumed", tumour_data, num_iterations=n, resume=True, **common)
    assert min(resumed["loss"]) == n // 2 + 1
    assert_same_training(straight, resumed)
    assert not torch.equal(straight["model"]["conv_final.2.conv.weight"], torch.zeros(1))
