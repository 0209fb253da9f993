"""The training record: written with the weights, validated on read, the only source of inference's settings."""

import logging

import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser
from workflow_helpers import error_messages, run_workflow, workflow

from wdm_bundle.diffusion import make_scheduler
from wdm_bundle.engines import (
    LEGACY_RECORDS,
    TrainingCheckpointer,
    atomic_save,
    authors_record,
    load_record,
    read_record,
    recorded_network,
    training_record,
    validate_record,
)
from wdm_bundle.networks import WaveletDiffusionUNet

SMALL = dict(channels=(8, 16), num_res_blocks=1, norm_num_groups=8)


def _record(**kw):
    net = WaveletDiffusionUNet(lll_scale=2.0, **SMALL)
    scheduler = make_scheduler("ddpm", num_train_timesteps=500, beta_end=0.01)
    args = dict(
        task="generation",
        diffusion="ddpm",
        scheduler=scheduler,
        network=net,
        data_range=(-1, 1),
        image_size=(16, 16, 16),
        pad_crop_size=None,
        placement="symmetric",
        modality="t1n",
    )
    args.update(kw)
    return net, training_record(**args)


def test_record_holds_every_setting_and_rebuilds_the_network():
    net, record = _record()
    assert record["num_train_timesteps"] == 500 and record["beta_end"] == 0.01 and record["beta_start"] == 1e-4
    assert record["variance_type"] == "fixed_large" and record["schedule"] == "linear_beta"
    assert record["lll_scale"] == 2.0 and record["data_range"] == [-1.0, 1.0] and record["image_size"] == [16] * 3
    assert record["placement"] == "symmetric" and record["clip_percentiles"] == [0.1, 99.9]
    rebuilt = recorded_network(record)
    assert rebuilt.wavelet.lll_scale == 2.0
    rebuilt.load_state_dict(net.state_dict(), strict=True)  # same architecture, key for key


def test_records_of_earlier_versions_read_with_the_current_names(caplog):
    """0.2.0 wrote the pad/crop size as `roi_size` and no voxel size: read as `pad_crop_size`, quietly."""
    _, record = _record(pad_crop_size=[20, 20, 20])
    old = {("roi_size" if k == "pad_crop_size" else k): v for k, v in record.items() if k != "spacing"}
    with caplog.at_level(logging.WARNING):
        assert validate_record(old) == {**record, "spacing": None}
    assert "unknown" not in caplog.text


def test_checkpointer_writes_the_record_and_refuses_to_resume_with_other_settings(tmp_path):
    net, record = _record()
    opt = torch.optim.Adam(net.parameters())
    engine = Engine(lambda e, b: 0.0)
    TrainingCheckpointer(tmp_path, net, opt, save_every=2, record=record).attach(engine)
    engine.run(range(2), max_epochs=1)
    assert read_record(tmp_path / "model.pt") == record
    assert read_record(tmp_path / "checkpoint_00000002.pt") == record

    _, other = _record(scheduler=make_scheduler("ddpm", num_train_timesteps=500, beta_end=0.02))
    with pytest.raises(ValueError, match=r"beta_end: 0.02 now, 0.01 recorded"):
        TrainingCheckpointer(tmp_path, net, opt, resume=True, record=other).attach(Engine(lambda e, b: 0.0))


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("network", {"backbone": {"class": "os.system", "args": {}}}, None),  # checked when built, below
        ("beta_end", "0.02; import os", "beta_end must be a number"),
        ("beta_end", 2.0, "beta_end must be a number in"),
        ("data_range", [1.0, -1.0], "data_range must be 2 increasing"),
        ("placement", "middle", "placement must be one of"),
        ("variance_type", "__import__('os')", "variance_type must be one of"),
        ("image_size", [16, 16], "image_size must be 3 integers"),
        ("contrasts", ["t1n", "../../etc"], "contrasts"),
        ("task", "training", "task must be one of"),
    ],
)
def test_hostile_or_broken_records_are_refused(tmp_path, key, value, message):
    _, record = _record()
    bad = {**record, key: value}
    path = tmp_path / "model.pt"
    atomic_save({"model": {}, "record": bad}, path)
    if message is None:
        with pytest.raises(ValueError, match="recorded backbone must be one of"):
            recorded_network(read_record(path))
        return
    with pytest.raises(ValueError, match=message) as err:
        read_record(path)
    assert str(path) in str(err.value)


def test_config_values_must_agree_with_the_record(tmp_path):
    _, record = _record()
    path = tmp_path / "model.pt"
    atomic_save({"model": {}, "record": record}, path)
    assert load_record(path, "generation", {"beta_end": None, "num_train_timesteps": 500})["beta_end"] == 0.01
    with pytest.raises(ValueError) as err:
        load_record(path, "generation", {"beta_end": 0.02, "num_train_timesteps": 1000, "lll_scale": 2})
    msg = str(err.value)
    assert "beta_end: 0.02 given, 0.01 recorded" in msg and "num_train_timesteps: 1000 given, 500 recorded" in msg
    assert "lll_scale" not in msg and str(path) in msg
    with pytest.raises(ValueError, match=r"network_def#channels: \[8, 32\] given, \[8, 16\] recorded"):
        recorded_network(load_record(path, "generation"), channels=[8, 32])
    assert recorded_network(load_record(path, "generation"), channels=[8, 16]).wavelet.lll_scale == 2.0
    with pytest.raises(ValueError, match="is a generation model; use the generation configs"):
        load_record(path, "synthesis")


def test_a_file_without_record_keeps_working_with_a_warning(tmp_path, caplog):
    path = tmp_path / "old.pt"
    atomic_save({"model": {}, "ema": {}, "iteration": 3, "diffusion": "rflow"}, path)
    with caplog.at_level(logging.WARNING):
        record = load_record(path, "generation", {"image_size": [32, 32, 32]})
    assert "holds no training record" in caplog.text and str(path) in caplog.text
    assert record["assumed"] and record["diffusion"] == "rflow" and record["image_size"] == [32, 32, 32]
    assert record["network"]["channels"] == LEGACY_RECORDS["generation"]["network"]["channels"]
    net = recorded_network(record, **SMALL)  # network_def overrides apply to an assumed record
    assert list(net.config["channels"]) == [8, 16]


def test_per_contrast_records_must_agree(tmp_path):
    base = LEGACY_RECORDS["synthesis"]
    network = {**base["network"], "condition_channels": 3, "extra_channels": 0}
    for target, beta_end in (("t1n", 0.02), ("t2f", 0.01)):
        atomic_save(
            {"record": validate_record({**base, "target_contrast": target, "network": network, "beta_end": beta_end})},
            tmp_path / f"{target}.pt",
        )
    with pytest.raises(ValueError, match="trained with different settings: beta_end"):
        load_record({"t1n": tmp_path / "t1n.pt", "t2f": tmp_path / "t2f.pt"}, "synthesis")


def test_authors_record_is_the_reference_framing():
    cwdm = authors_record("cwdm_unet", "t1c")
    assert cwdm["placement"] == "end" and cwdm["pad_crop_size"] == [224, 224, 160] and cwdm["data_range"] == [0.0, 1.0]
    assert cwdm["variance_type"] == "fixed_large" and cwdm["network"]["backbone"]["args"]["skip_mode"] == "concat"
    wdm = authors_record("wdm_unet_128")
    assert wdm["placement"] == "symmetric" and wdm["pad_crop_size"] == [256] * 3 and wdm["data_range"] == [-1.0, 1.0]
    with pytest.raises(ValueError, match="--target_contrast"):
        authors_record("cwdm_unet")


@pytest.mark.slow
def test_training_settings_reach_inference_and_previews_without_overrides(repo_root, demo_data, tmp_path):
    """Train with non-default T, betas and LLL scale; inference reads them, previews sample with them, and a
    contradicting command-line value is refused naming both values."""
    settings = dict(num_train_timesteps=400, beta_end=0.01, lll_scale=2.0)
    wf = run_workflow(
        repo_root,
        ["train.json", "demo.json"],
        "train",
        bundle_root=str(tmp_path),
        dataset_dir=str(demo_data),
        datalist=str(demo_data / "datalist.json"),
        num_iterations=4,
        epoch_length=2,
        save_every=4,
        preview_every=4,
        preview_steps=2,
        batch_size=2,
        **settings,
    )
    trained = wf.parser.get_parsed_content("noise_scheduler")
    preview = wf.parser.get_parsed_content("train#handler#previews")
    torch.testing.assert_close(preview.scheduler.alphas_cumprod, trained.alphas_cumprod, rtol=0, atol=0)
    assert preview.scheduler.num_train_timesteps == 400 and float(preview.scheduler.betas[-1]) == 0.01
    assert (tmp_path / "eval" / "previews" / "preview_00000004.png").is_file()

    infer = workflow(
        repo_root,
        ["inference.json"],
        "infer",
        bundle_root=str(tmp_path),
        num_samples=1,
        batch_size=1,
        num_inference_steps=2,
        progress=False,
    )
    scheduler = infer.parser.get_parsed_content("noise_scheduler")
    torch.testing.assert_close(scheduler.alphas_cumprod, trained.alphas_cumprod, rtol=0, atol=0)
    assert infer.parser.get_parsed_content("network").wavelet.lll_scale == 2.0
    assert infer.parser.get_parsed_content("generator").image_shape == (1, 32, 32, 32)
    infer.run()
    assert (tmp_path / "samples" / "sample_0000.nii.gz").is_file()

    parser = ConfigParser()
    parser.read_config([str(repo_root / "configs" / f) for f in ("inference.json",)])
    parser.update({"bundle_root": str(tmp_path), "beta_end": 0.02})
    with pytest.raises(Exception) as err:
        parser.get_parsed_content("noise_scheduler")
    assert "beta_end: 0.02 given, 0.01 recorded" in error_messages(err.value)


def test_a_record_without_spacing_takes_the_given_one_or_the_former_default(tmp_path):
    net, record = _record()
    assert record["spacing"] is None
    atomic_save({"model": net.state_dict(), "record": record}, tmp_path / "model.pt")
    assert load_record(tmp_path / "model.pt", "generation")["spacing"] == [2.0, 2.0, 2.0]
    assert load_record(tmp_path / "model.pt", "generation", {"spacing": [1, 1.5, 1]})["spacing"] == [1.0, 1.5, 1.0]
    _, recorded = _record(spacing=[5.0, 6.0, 5.0])
    atomic_save({"model": net.state_dict(), "record": recorded}, tmp_path / "recorded.pt")
    with pytest.raises(ValueError, match=r"spacing: \[1, 1, 1\] given, \[5.0, 6.0, 5.0\] recorded"):
        load_record(tmp_path / "recorded.pt", "generation", {"spacing": [1, 1, 1]})
