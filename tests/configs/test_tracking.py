"""Experiment tracking with MONAI's built-in MLflow support (`monai.bundle run ... --tracking mlflow`)."""

import pytest
from monai.bundle import ConfigWorkflow

pytestmark = pytest.mark.slow
mlflow = pytest.importorskip("mlflow")


def test_mlflow_records_loss_params_and_previews(repo_root, demo_data, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    wf = ConfigWorkflow(
        config_file=[str(repo_root / "configs" / c) for c in ("train.json", "demo.json")],
        workflow_type="train",
        tracking="mlflow",
        bundle_root=str(tmp_path),
        dataset_dir=str(demo_data),
        num_workers=0,
        num_iterations=3,
        save_every=100,
        preview_every=2,
        preview_steps=2,
        log_every=100,
        learning_rate=0.002,
    )
    wf.initialize()
    wf.run()
    wf.finalize()

    # the default store: a SQLite database beside an artifact folder in output_dir, TensorBoard as before
    eval_dir = tmp_path / "eval"
    assert list((eval_dir / "tensorboard").glob("events.out.tfevents.*"))
    client = mlflow.MlflowClient(f"sqlite:///{eval_dir / 'mlruns.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "monai_experiment"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    losses = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in losses] == [1, 2, 3] and all(0 < m.value < 10 for m in losses)
    params = run.data.params
    assert params["learning_rate"] == "0.002" and params["batch_size"] == "4" and params["num_iterations"] == "3"
    assert params["image_size"] == "[32, 32, 32]" and params["world_size"] == "1"
    assert int(params["network_parameters"]) > 1000

    # run folder: the executed config and the preview PNG as artifacts
    run_dir = eval_dir / "mlruns" / run.info.run_id / "artifacts"
    assert (run_dir / "previews" / "preview_00000002.png").stat().st_size > 1000
    assert len(list(run_dir.glob("config_*.json"))) == 1
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id, "previews")) == [
        "previews/preview_00000002.png"
    ]
