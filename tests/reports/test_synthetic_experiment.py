"""The synthetic-data experiment's plan, table and error paths (the whole run: tests/configs/test_segmentation_quality.py)."""

import json
import sys

import pytest

from wdm_bundle.reports import synthetic_experiment as exp


def _datalist(tmp_path, num_train, num_test):
    def entry(i):
        case = f"C{i:03d}"
        return {"case": case, **{k: f"{case}/{case}-{k}.nii.gz" for k in ("t1n", "t1c", "t2w", "t2f", "seg")}}

    path = tmp_path / "datalist.json"
    path.write_text(
        json.dumps(
            {
                "training": [entry(i) for i in range(num_train)],
                "test": [entry(i) for i in range(num_train, num_train + num_test)],
            }
        )
    )
    return path


def test_plan_is_disjoint_seeded_and_absolute(tmp_path):
    path = _datalist(tmp_path, 20, 3)
    plan = exp.plan_experiment(path, num_real=4, num_synthetic=6, seed=1)
    real, labels = [e["case"] for e in plan["real"]], [e["case"] for e in plan["labels"]]
    assert len(real) == 4 and len(labels) == 6 and not set(real) & set(labels)
    assert [e["case"] for e in plan["test"]] == ["C020", "C021", "C022"]
    assert plan["real"][0]["seg"] == str((tmp_path / real[0] / f"{real[0]}-seg.nii.gz").resolve())
    assert exp.plan_experiment(path, 4, 6, seed=1) == plan
    assert [e["case"] for e in exp.plan_experiment(path, 4, 6, seed=2)["real"]] != real
    # synthetic-only trains on num_real synthetic pairs: the label sources are at least num_real
    assert len(exp.plan_experiment(path, 8, 2, seed=0)["labels"]) == 8


@pytest.mark.parametrize(
    "num_train, num_test, num_real, num_synthetic, message",
    [(10, 2, 4, 8, "needs num_real"), (20, 0, 4, 4, "no non-empty list under .test."), (20, 2, 0, 4, ">= 1")],
)
def test_plan_refuses(tmp_path, num_train, num_test, num_real, num_synthetic, message):
    with pytest.raises(ValueError, match=message):
        exp.plan_experiment(_datalist(tmp_path, num_train, num_test), num_real, num_synthetic)


def test_plan_refuses_entries_without_labels(tmp_path):
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": [{"case": "A", "t1n": "a.nii.gz"}], "test": []}))
    with pytest.raises(ValueError, match="case 'A' has no 't1c'"):
        exp.plan_experiment(path, 1, 1)


def test_table_and_plot(tmp_path):
    rows = []
    for arm, dice in (("real", 0.6), ("synthetic", 0.4), ("real+synthetic", 0.7)):
        for case, tumour in (("A", True), ("B", True), ("C", False)):
            for region in exp.REGIONS:
                d = 1.0 if not tumour else dice + (0.1 if case == "A" else -0.1)
                rows.append({"arm": arm, "case": case, "tumour": tumour, "region": region, "dice": d, "hd95": 2.0})
    sizes = {"real": "8 real", "synthetic": "8 synthetic", "real+synthetic": "8 real + 24 synthetic"}
    summary = exp._summary(rows, ["real", "synthetic", "real+synthetic"], sizes)
    assert summary["arms"]["real"]["tumour_cases"]["WT"]["dice"]["mean"] == pytest.approx(0.6)
    assert summary["arms"]["real"]["all_cases"]["WT"]["dice"]["mean"] == pytest.approx((0.7 + 0.5 + 1.0) / 3)
    table = exp._markdown(summary)
    assert "| real+synthetic | 8 real + 24 synthetic | 0.700 ± 0.1" in table
    exp._plot(summary, tmp_path / "experiment.png")
    assert (tmp_path / "experiment.png").stat().st_size > 1000


def test_failed_step_names_itself_with_its_output():
    with pytest.raises(RuntimeError, match=r"(?s)segmenter 'x' failed \(exit 3\):.*boom"):
        exp._run([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], "segmenter 'x'")


def test_refuses_to_replace_an_experiment(tmp_path):
    (tmp_path / "experiment.json").write_text("{}")
    with pytest.raises(FileExistsError, match="--overwrite true"):
        exp.run_synthetic_data_experiment(_datalist(tmp_path, 20, 2), tmp_path / "gen", tmp_path)
