"""Datasets with fewer or more classes than the paper's seven (data.classes: auto / a list).

A generated class-folder set runs through every stage that touches the class list:
ingest -> validate -> split -> train (frozen, tiny, random weights) + baselines (HWT) -> aggregate -> compare
-> report -> final_model -> predict; each output carries exactly the dataset's classes.
"""

import json

import pandas as pd
import pytest
from conftest import make_image, write_params

from ferpipe import aggregate, compare, final_model, ingest, predict, report, split, train, validate
from ferpipe.baselines import stage as baselines_stage
from ferpipe.config import CLASSES
from ferpipe.weights import random_init_state_dict, save_safetensors

SIX = ["anger", "disgust", "fear", "happy", "sadness", "surprise"]  # no neutral (as several CK+ derivatives)
EIGHT = [*CLASSES, "contempt"]


def class_folders(root, labels, per_class=6):
    for k, label in enumerate(labels):
        for i in range(per_class):
            make_image(root / label / f"{label}_{i}.png", seed=100 * k + i, size=36)
    return root


def params(tmp_path, dataset, classes="auto"):
    return write_params(
        tmp_path / "params.yaml",
        data={"dataset": str(dataset), "layout": "folders", "classes": classes},
        ingest={"image_size": 32},
        validate={"require_subject": False},
        split={"protocols": ["stratified"], "n_runs": 2, "n_groups": 3, "seed": 3},
        train={"image_size": 32, "threads": 1, "batch_size": 16, "head_c_grid": [1.0], "log_mlflow": False,
               "taps": ["layer2:2", "layer3:2"], "spatial_image_size": 32},
        baselines={"methods": ["hwt"], "threads": 1, "hwt": {"image_size": 32, "c_grid": [1.0]}},
        final_model={"log_mlflow": False, "c_source": "any"},
    )


def run_pipeline(tmp_path, labels, classes="auto"):
    raw = class_folders(tmp_path / "raw", labels)
    prm = str(params(tmp_path, raw, classes))
    w = tmp_path / "w.safetensors"
    save_safetensors(random_init_state_dict(), w)
    man = str(tmp_path / "ing" / "manifest.csv")
    assert ingest.main(["--out", str(tmp_path / "ing"), "--params", prm]) == 0
    assert validate.main(["--manifest", man, "--out", str(tmp_path / "val"), "--params", prm]) == 0
    assert split.main(["--manifest", man, "--out", str(tmp_path / "split"), "--params", prm]) == 0
    plan = str(tmp_path / "split" / "split_plan.csv")
    assert train.main(["--manifest", man, "--plan", plan, "--weights", str(w), "--out", str(tmp_path / "train"),
                       "--params", prm]) == 0  # fmt: skip
    assert baselines_stage.main(["--manifest", man, "--plan", plan, "--out", str(tmp_path / "bl"), "--params", prm]) == 0
    assert aggregate.main(["--results", str(tmp_path / "train"), str(tmp_path / "bl"), "--out", str(tmp_path / "agg"), "--no-plots",
                           "--metrics", str(tmp_path / "metrics.json"), "--no-mlflow"]) == 0  # fmt: skip
    assert compare.main(["--aggregate", str(tmp_path / "agg"), "--out", str(tmp_path / "cmp"),
                         "--metrics", str(tmp_path / "cmp.json")]) == 0  # fmt: skip
    assert report.main(["--out", str(tmp_path / "rep"), "--ingest-report", str(tmp_path / "ing" / "ingest_report.json"),
                        "--validation", str(tmp_path / "val" / "validation.json"),
                        "--split-summary", str(tmp_path / "split" / "split_summary.json"),
                        "--aggregate", str(tmp_path / "agg"), "--compare", str(tmp_path / "cmp"),
                        "--train-summary", str(tmp_path / "train" / "train_summary.json"),
                        "--final-model", str(tmp_path / "none"), "--params", prm, "--no-mlflow"]) == 0  # fmt: skip
    assert final_model.main(["--manifest", man, "--weights", str(w), "--out", str(tmp_path / "fm"), "--params", prm,
                             "--train-results", str(tmp_path / "train"), "--plan", plan, "--no-mlflow"]) == 0  # fmt: skip
    csv = tmp_path / "pred.csv"
    photos = [str(raw / labels[0] / f"{labels[0]}_0.png"), str(raw / labels[-1] / f"{labels[-1]}_1.png")]
    assert predict.main([*photos, "--model", str(tmp_path / "fm"), "--csv", str(csv), "--quiet", "--no-face-check"]) == 0
    return tmp_path, pd.read_csv(csv)


@pytest.mark.parametrize("labels, expected", [(SIX, SIX), (EIGHT, EIGHT)], ids=["six-no-neutral", "eight-contempt"])
def test_every_stage_carries_the_datasets_classes(tmp_path, labels, expected):
    root, pred = run_pipeline(tmp_path, list(reversed(labels)))  # folder order must not matter
    assert json.loads((root / "ing" / "classes.json").read_text())["classes"] == expected  # paper order, extras after
    assert json.loads((root / "val" / "validation.json").read_text())["classes"] == expected
    fold = json.loads(next((root / "train" / "resnet50_spatial" / "stratified").glob("*.json")).read_text())
    assert fold["classes"] == expected and len(fold["confusion_matrix"]) == len(expected)
    assert len(fold["probabilities"][0]) == len(expected)
    summary = json.loads((root / "agg" / "resnet50_spatial" / "stratified" / "summary.json").read_text())
    assert summary["classes"] == expected and len(summary["grand_matrix"]) == len(expected)
    table1 = pd.read_csv(root / "agg" / "resnet50_spatial" / "stratified" / "table1_sensitivity.csv")
    assert list(table1.columns) == ["run", *expected]
    grand = pd.read_csv(root / "agg" / "resnet50_spatial" / "stratified" / "grand_confusion_matrix.csv", index_col=0)
    assert list(grand.columns) == expected and list(grand.index) == expected
    hwt = json.loads(next((root / "bl" / "hwt" / "stratified").glob("*.json")).read_text())
    assert hwt["classes"] == expected and len(hwt["probabilities"][0]) == len(expected)
    cmp = json.loads((root / "cmp" / "compare.json").read_text())["stratified"]
    assert {row["method"] for row in cmp["methods"]} == {"hwt", "resnet50_gap", "resnet50_spatial"}
    assert cmp["classes"] == expected and cmp["published_comparable"] is False
    assert all(row["published_oa"] is None for row in cmp["methods"])  # the paper's numbers are for its 7 classes
    md = (root / "rep" / "report.md").read_text()
    assert "| run | " + " | ".join(expected) + " |" in md and "not the paper's seven" in md
    meta = json.loads((root / "fm" / "model.json").read_text())
    assert meta["classes"] == expected
    assert list(pred.columns) == ["file", "label", *expected, "face", "ood_distance", "out_of_distribution", "error"]
    assert set(pred["label"]) <= set(expected) and (pred[expected].sum(axis=1).round(4) == 1).all()


def test_paper_setting_still_fails_on_a_missing_class_with_a_hint(tmp_path, capsys):
    raw = class_folders(tmp_path / "raw", SIX)
    prm = str(params(tmp_path, raw, classes="paper"))
    assert ingest.main(["--out", str(tmp_path / "ing"), "--params", prm]) == 0
    rc = validate.main(["--manifest", str(tmp_path / "ing" / "manifest.csv"), "--out", str(tmp_path / "val"),
                        "--params", prm])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and "neutral=0" in err and "data.classes: auto" in err


def test_explicit_list_decides_order_and_which_labels_stay(tmp_path):
    raw = class_folders(tmp_path / "raw", EIGHT)
    prm = str(params(tmp_path, raw, classes=["happy", "contempt", "anger"]))
    assert ingest.main(["--out", str(tmp_path / "ing"), "--params", prm]) == 0
    m = pd.read_csv(tmp_path / "ing" / "manifest.csv")
    assert sorted(set(m["label"])) == ["anger", "contempt", "happy"]
    assert json.loads((tmp_path / "ing" / "classes.json").read_text())["classes"] == ["happy", "contempt", "anger"]


def test_bad_class_setting_is_named(tmp_path, capsys):
    raw = class_folders(tmp_path / "raw", SIX[:3])
    prm = str(params(tmp_path, raw, classes="some"))
    assert ingest.main(["--out", str(tmp_path / "ing"), "--params", prm]) == 2
    assert "data.classes: expected 'paper', 'auto' or a list" in capsys.readouterr().err
