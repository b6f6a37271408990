"""final_model stage on generated faces with a random-init ResNet-50 (32 px, CPU-fast)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ferpipe import final_model, foldio, ingest, serving, tracking
from ferpipe.config import CLASSES, IngestParams
from ferpipe.weights import random_init_state_dict, save_safetensors

TINY = {"train": {"image_size": 32, "threads": 1, "batch_size": 16, "taps": ["layer2:2", "layer3:2"], "spatial_image_size": 32}, "ingest": {"image_size": 32}}


def make_workspace(root):
    from conftest import make_image

    codes = ["AN", "DI", "FE", "HA", "NE", "SA", "SU"]
    i = 0
    for subj in ["KA", "KL"]:
        for code in codes:
            for shot in (1, 2):
                i += 1
                make_image(root / "raw" / f"{subj}.{code}{shot}.{i}.tiff", seed=i, size=40, mode="L" if i % 3 else "RGB")
    ingest.ingest(root / "raw", root / "ing", IngestParams(image_size=32))
    save_safetensors(random_init_state_dict(), root / "w.safetensors")
    return root


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    torch.set_num_threads(1)
    return make_workspace(tmp_path_factory.mktemp("fm"))


def raw_params(**final):
    return {**TINY, "final_model": {"log_mlflow": False, **final}}


def test_fuse_head_equals_standardise_project_logreg():
    from sklearn.linear_model import LogisticRegression

    from ferpipe.heads import RowSpace

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 64)) * rng.uniform(0.1, 5, size=64) + rng.normal(size=64)
    y = np.arange(40) % len(CLASSES)
    space, z = RowSpace.fit(x)
    assert np.allclose(space(x), z, atol=1e-8)  # the training rows' coordinates come out of the fit
    lr = LogisticRegression(C=0.5, max_iter=2000).fit(z, y)
    w, b = final_model.fuse_head(lr.coef_, lr.intercept_, space.basis, space.mu, space.sd)
    x_new = rng.normal(size=(9, 64))
    assert np.allclose(x_new @ w.T + b, lr.decision_function(space(x_new)), atol=1e-8)


def write_fold(d, protocol, run, fold, **selected):
    r = foldio.FoldResult("resnet50_spatial", protocol, run, fold, "h", ["a.png"], [0], [0], extra={"selected": selected})
    foldio.save_fold(d / "resnet50_spatial", r)


def test_choose_c_most_frequent_protocol_then_fallbacks(tmp_path):
    for k, c in enumerate([1.0, 1.0, 0.1]):
        write_fold(tmp_path, "stratified", 1, k + 1, C=c)
    for k, c in enumerate([0.01, 0.1, 0.01, 0.1]):  # tie: the smaller C wins
        write_fold(tmp_path, "subject", 1, k + 1, C=c)
    fp = final_model.FinalModelParams
    assert final_model.choose_c(tmp_path, "resnet50_spatial", fp(c_source="subject"))[0] == 0.01
    assert final_model.choose_c(tmp_path, "resnet50_spatial", fp(c_source="stratified"))[0] == 1.0
    c, info = final_model.choose_c(tmp_path, "resnet50_spatial", fp(c_source="any"))
    assert c == 0.1 and info["counts"] == {"0.01": 2, "0.1": 3, "1.0": 2}
    assert final_model.choose_c(tmp_path, "resnet50_spatial", fp(c_source="params", head_c=3.0))[0] == 3.0
    c, info = final_model.choose_c(tmp_path / "none", "resnet50_spatial", fp(head_c=0.2))
    assert c == 0.2 and info["source"].startswith("params")


def test_stage_writes_one_fused_module_that_matches_the_head(ws, tmp_path):
    for k in range(3):
        write_fold(tmp_path / "train", "subject", 1, k + 1, C=0.5)
    out = tmp_path / "final"
    s = final_model.run_stage(ws / "ing" / "manifest.csv", ws / "w.safetensors", out, raw_params(), tmp_path / "train", None)
    assert s["C"] == 0.5 and s["choice"]["source"] == "folds:subject"
    assert s["fusion_max_abs_diff"] < 1e-4 and s["end_to_end_check"]["max_abs_diff_vs_head"] < 1e-3
    assert sorted(p.name for p in out.iterdir()) == ["final_model_summary.json", "model.json", "model.safetensors", "run.json"]
    assert s["ood"] == {"calibrated": False, "why": "no split plan given (--plan): predictions carry no OOD flag"}
    assert "timings_s" not in s or "timings_s" not in json.loads((out / "final_model_summary.json").read_text())
    meta = json.loads((out / "model.json").read_text())
    assert meta["classes"] == list(CLASSES) and meta["image_size"] == 32 and meta["flip_tta"] == "prob"
    assert meta["preprocessing"]["face_crop"] == "none" and meta["preprocessing"]["grayscale"] is True
    net, _ = serving.load_net(out)
    assert isinstance(net.head, torch.nn.Linear) and net.head.weight.shape == (len(CLASSES), 512 * 4 + 1024 * 4)  # layer2:2 + layer3:2
    with torch.no_grad():
        p = net(torch.rand(3, 3, 32, 32))
    assert torch.allclose(p.sum(1), torch.ones(3), atol=1e-5)
    # rerun replaces the folder atomically (no temp folders left behind)
    final_model.run_stage(ws / "ing" / "manifest.csv", ws / "w.safetensors", out, raw_params(), tmp_path / "train", None)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".final")]


def test_finetune_mode_reuses_train_and_saves_logit_tta(ws, tmp_path):
    raw = raw_params()
    raw["train"] = {**raw["train"], "mode": "finetune", "epochs": 1, "batch_size": 28, "precision": "fp32"}
    s = final_model.run_stage(ws / "ing" / "manifest.csv", ws / "w.safetensors", tmp_path / "ft", raw, None, None)
    assert s["method"] == "resnet50_finetune" and s["selected"]["epochs_run"] == 1
    pred = serving.FerPredictor.load(tmp_path / "ft")
    assert pred.meta["flip_tta"] == "logit"
    rows = pred.predict_bytes([(ws / "ing" / "images" / os.listdir(ws / "ing" / "images")[0]).read_bytes()],
                              face_check=False)  # generated images: no face to find
    assert rows[0]["label"] in CLASSES and abs(sum(rows[0][c] for c in CLASSES) - 1) < 1e-5

    # predict (from the image files) gives the fold code's probabilities (finetune.evaluate on
    # the same weights as a torchvision model), so serving preprocesses and averages like the folds
    from ferpipe import data, finetune, predict
    from ferpipe.model import build_resnet50, replace_head
    from ferpipe.train_params import TrainParams

    net, _ = serving.load_net(tmp_path / "ft")
    model = replace_head(build_resnet50(1000, "v1"), len(CLASSES))
    state = {**{k: v for k, v in net.backbone.state_dict().items()},
             "fc.weight": net.head.weight, "fc.bias": net.head.bias}  # fmt: skip
    model.load_state_dict(state, strict=True)
    manifest = data.read_manifest(ws / "ing" / "manifest.csv")
    images = data.load_images_uint8(manifest, ws / "ing", 32)
    idx = np.arange(6)
    p = TrainParams(image_size=32, batch_size=4, precision="fp32", taps=["layer2:2", "layer3:2"], spatial_image_size=32)
    fold_probs, _ = finetune.evaluate(model, images, data.labels_of(manifest), idx, p, torch.device("cpu"), None, len(CLASSES))
    files = [str(ws / "ing" / manifest["path"][i]) for i in idx]
    assert predict.main([*files, "--model", str(tmp_path / "ft"), "--csv", str(tmp_path / "p.csv"), "--quiet",
                         "--no-face-check"]) == 0  # fmt: skip
    served = pd.read_csv(tmp_path / "p.csv")[list(CLASSES)].to_numpy()
    assert np.abs(served - fold_probs).max() < 1e-4
    assert not np.allclose(fold_probs, 1 / len(CLASSES), atol=1e-3)  # a trained head, not a uniform output


def test_logged_registered_child_run_and_pyfunc(ws, store, monkeypatch, capsys):
    import mlflow

    from ferpipe import predict

    parent = tracking.start_parent({"final_model": {"x": 1}}, name="pipeline-test")
    monkeypatch.setenv(tracking.PARENT_ENV, parent)
    raw = {**TINY, "final_model": {"registered_model_name": "fer-test", "alias": "champion"}}
    s = final_model.run_stage(ws / "ing" / "manifest.csv", ws / "w.safetensors", store / "final", raw, None, None)
    rec = json.loads((store / "final" / "mlflow.json").read_text())
    assert rec["registered_uri"] == "models:/fer-test@champion" and s["mlflow"]["parent_run_id"] == parent
    c = tracking.client()
    run = c.get_run(rec["run_id"])
    assert run.data.tags[tracking.PARENT_TAG] == parent and run.data.tags["ferpipe.kind"] == "final_model"
    assert str(c.get_model_version_by_alias("fer-test", "champion").version) == rec["version"]

    model = mlflow.pyfunc.load_model("models:/fer-test@champion")
    sig = model.metadata.signature
    assert sig.inputs.input_names() == ["image"] and [p.name for p in sig.params.params] == ["face_crop", "face_check"]
    img = (ws / "ing" / "images").iterdir().__next__().read_bytes()
    frame = pd.DataFrame({"image": [base64.b64encode(img).decode(), "bm90IGFuIGltYWdl"]})
    assert model.predict(frame)["error"][0] == serving.NO_FACE  # the face check, on by default
    out = model.predict(frame, params={"face_crop": "haar", "face_check": False})
    assert list(out.columns) == serving.OUTPUT_COLUMNS
    assert out["label"][0] in CLASSES and abs(sum(out[c][0] for c in CLASSES) - 1) < 1e-5
    assert out["label"][1] is None and out["error"][1]
    from urllib.parse import urlparse

    location = c.get_logged_model(rec["model_uri"].split("/")[-1]).artifact_location
    text = (Path(urlparse(location).path) / "requirements.txt").read_text()
    assert "torch==" in text and "mlflow==" in text

    # predict CLI through the registry alias
    rc = predict.main([str(ws / "ing" / "images"), "--model", "models:/fer-test@champion", "--quiet",
                       "--json", str(store / "p.json"), "--no-face-check"])  # fmt: skip
    assert rc == 0
    res = json.loads((store / "p.json").read_text())
    assert res["n_predicted"] == len(os.listdir(ws / "ing" / "images")) and res["n_failed"] == 0


def test_cli_bad_param_names_the_key(ws, tmp_path, capsys):
    from conftest import REPO, write_params

    params = write_params(tmp_path / "p.yaml", final_model={"c_source": "everything"})
    rc = final_model.main(["--manifest", str(ws / "ing" / "manifest.csv"), "--weights", str(ws / "w.safetensors"),
                           "--out", str(tmp_path / "o"), "--params", str(params), "--no-mlflow"])  # fmt: skip
    assert rc == 2 and "final_model.c_source" in capsys.readouterr().err
    rc = final_model.main(["--manifest", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o"), "--no-mlflow",
                           "--params", str(REPO / "params.yaml")])  # fmt: skip
    assert rc == 2 and "manifest not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_predict_gives_the_fold_codes_probabilities_for_the_spatial_head(ws, tmp_path):
    """The served spatial model == the fold code (ferpipe.features taps + ferpipe.heads) on the same images."""
    from safetensors.torch import load_file
    from scipy.special import softmax

    from ferpipe import data, features, heads, predict
    from ferpipe.model import build_resnet50

    out = tmp_path / "final"
    s = final_model.run_stage(ws / "ing" / "manifest.csv", ws / "w.safetensors", out, raw_params(), None, None)
    meta = json.loads((out / "model.json").read_text())
    assert meta["method"] == "resnet50_spatial" and meta["taps"] == ["layer2:2", "layer3:2"]
    manifest = data.read_manifest(ws / "ing" / "manifest.csv")
    y = data.labels_of(manifest)
    images = data.load_images_uint8(manifest, ws / "ing", 32)
    backbone = build_resnet50(1000, "v1")
    backbone.load_state_dict(load_file(str(ws / "w.safetensors")))
    feats = features.extract_features(backbone, images, 16, True, torch.device("cpu"), None, meta["taps"])
    space, coef, intercept, _ = heads.fit_head(np.concatenate(list(feats)), np.tile(y, 2), s["C"], len(CLASSES))
    fold_code = np.mean([softmax(space(feats[v]) @ coef + intercept, axis=1) for v in range(2)], axis=0)
    files = [str(ws / "ing" / p) for p in manifest["path"][:6]]
    assert predict.main([*files, "--model", str(out), "--csv", str(tmp_path / "p.csv"), "--quiet", "--no-face-check"]) == 0
    served = pd.read_csv(tmp_path / "p.csv")[list(CLASSES)].to_numpy()
    assert np.abs(served - fold_code[:6]).max() < 1e-4
