"""ferpipe.predict and the serving preprocessing on generated images (random-init model, 32 px)."""

from __future__ import annotations

import base64
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ferpipe import data, final_model, ingest, predict, serving
from ferpipe.config import CLASSES, IngestParams
from ferpipe.weights import random_init_state_dict, save_safetensors


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from conftest import make_image

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("pred")
    i = 0
    for subj in ["KA", "KL"]:
        for code in ["AN", "DI", "FE", "HA", "NE", "SA", "SU"]:
            i += 1
            make_image(root / "raw" / f"{subj}.{code}1.{i}.tiff", seed=i, size=40)
    ingest.ingest(root / "raw", root / "ing", IngestParams(image_size=32))
    save_safetensors(random_init_state_dict(), root / "w.safetensors")
    raw = {"train": {"image_size": 32, "threads": 1, "taps": ["layer2:2", "layer3:2"], "spatial_image_size": 32}, "ingest": {"image_size": 32}, "final_model": {"log_mlflow": False}}
    final_model.run_stage(root / "ing" / "manifest.csv", root / "w.safetensors", root / "model", raw, None, None)
    return root / "model"


@pytest.fixture
def images(tmp_path):
    """Gray/colour, PNG/JPEG/TIFF (8 and 16 bit), odd sizes (>= 48 px), a nested folder, two broken files."""
    rng = np.random.default_rng(3)
    d = tmp_path / "photos"
    (d / "nested").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (57, 91), dtype=np.uint8), "L").save(d / "gray_57x91.png")
    Image.fromarray(rng.integers(0, 256, (123, 45, 3), dtype=np.uint8), "RGB").save(d / "colour.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8), "RGB").save(d / "nested" / "big.tiff")
    Image.fromarray(rng.integers(0, 65535, (50, 64), dtype=np.uint16)).save(d / "deep16.tif")
    Image.fromarray(rng.integers(0, 256, (49, 51, 4), dtype=np.uint8), "RGBA").save(d / "alpha.PNG")
    Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8), "L").convert("P").save(d / "palette.gif")
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    good = (d / "gray_57x91.png").read_bytes()
    (d / "nested" / "truncated.png").write_bytes(good[: len(good) // 2])
    (d / "notes.txt").write_text("not an image, not listed")
    return d


def strict_json(path):
    def no_nan(x):
        raise ValueError(f"non-standard JSON constant {x}")

    return json.loads(path.read_text(), parse_constant=no_nan)


def test_folder_of_mixed_images_with_corrupt_files(model_dir, images, tmp_path, capsys):
    args = [str(images), "--model", str(model_dir), "--csv", str(tmp_path / "o.csv"), "--json", str(tmp_path / "o.json"),
            "--no-face-check"]  # fmt: skip
    assert predict.main(args) == 1  # two files failed: an error exit, whatever else was classified
    assert "2 file(s) failed" in capsys.readouterr().err
    assert predict.main([*args, "--keep-going"]) == 0
    out = capsys.readouterr()
    res = strict_json(tmp_path / "o.json")
    rows = {r["file"].split("/")[-1]: r for r in res["predictions"]}
    assert set(rows) == {"gray_57x91.png", "colour.jpg", "big.tiff", "deep16.tif", "alpha.PNG", "palette.gif",
                         "corrupt.jpg", "truncated.png"}  # fmt: skip
    assert res["n_predicted"] == 6 and res["n_failed"] == 2
    for name in ("corrupt.jpg", "truncated.png"):
        assert rows[name]["error"] and rows[name]["label"] is None and rows[name]["anger"] is None
        assert name in out.err
    for name, r in rows.items():
        if name not in ("corrupt.jpg", "truncated.png"):
            assert r["error"] == "" and r["label"] in CLASSES and r["face"] == "not_searched"
            assert abs(sum(r[c] for c in CLASSES) - 1) < 1e-5
            assert r["label"] == max(CLASSES, key=lambda c: r[c])
    csv = pd.read_csv(tmp_path / "o.csv", keep_default_na=False)
    assert list(csv.columns) == predict.COLUMNS and len(csv) == 8
    assert "corrupt.jpg" in out.out and "ERROR" in out.out  # the table


def test_exit_codes(model_dir, images, tmp_path, capsys):
    good, bad = str(images / "colour.jpg"), str(images / "corrupt.jpg")
    assert predict.main([bad, "--model", str(model_dir)]) == 1  # every file failed
    assert predict.main([bad, "--model", str(model_dir), "--keep-going"]) == 1
    assert predict.main([str(tmp_path / "missing.png"), "--model", str(model_dir)]) == 1
    assert predict.main([good, bad, "--model", str(model_dir), "--no-face-check"]) == 1  # one failed
    assert predict.main([good, bad, "--model", str(model_dir), "--no-face-check", "--keep-going"]) == 0
    assert predict.main([good, "--model", str(model_dir), "--no-face-check"]) == 0
    assert predict.main([good, "--model", str(tmp_path / "no_model")]) == 2
    assert "no model.json" in capsys.readouterr().err


def test_an_image_without_a_face_is_an_error_not_a_label(model_dir, images, tmp_path, capsys):
    """Face check on by default (ingest's detector), with or without the Haar crop."""
    for extra in ([], ["--face-crop", "haar"]):
        assert predict.main([str(images / "colour.jpg"), "--model", str(model_dir), "--json", str(tmp_path / "o.json"),
                             *extra]) == 1  # fmt: skip
        row = strict_json(tmp_path / "o.json")["predictions"][0]
        assert row["label"] is None and "no face found" in row["error"]
        assert "no face found" in capsys.readouterr().err


def test_predictions_use_exactly_the_ingest_preprocessing(model_dir, tmp_path):
    """A raw photo through predict == the same photo through ingest + the train loader + the module."""
    rng = np.random.default_rng(11)
    raw = tmp_path / "raw"
    raw.mkdir()
    Image.fromarray(rng.integers(0, 256, (256, 200), dtype=np.uint8), "L").save(raw / "KA.HA1.1.tiff")
    ingest.ingest(raw, tmp_path / "ing", IngestParams(image_size=32))
    m = data.read_manifest(tmp_path / "ing" / "manifest.csv")
    x = data.load_images_uint8(m, tmp_path / "ing", 32)
    net, _ = serving.load_net(model_dir)
    with torch.no_grad():
        ref = net(x.float() / 255).numpy()[0]
    pred = serving.FerPredictor.load(model_dir)
    row = pred.predict_bytes([(raw / "KA.HA1.1.tiff").read_bytes()], face_check=False)[0]
    assert np.allclose([row[c] for c in CLASSES], ref, atol=1e-5)


def test_pyfunc_wrapper_accepts_base64_data_uri_and_bytes(model_dir, images):
    model = serving._load_pyfunc(str(model_dir))
    png = (images / "gray_57x91.png").read_bytes()
    b64 = base64.b64encode(png).decode()
    frame = pd.DataFrame({"image": [b64, "data:image/png;base64," + b64, png, "%%%"]})
    assert list(model.predict(frame)["error"][:3]) == [serving.NO_FACE] * 3  # the face check, by default
    out = model.predict(frame, params={"face_check": False})
    assert list(out.columns) == serving.OUTPUT_COLUMNS and len(out) == 4
    assert out["label"][0] == out["label"][1] == out["label"][2] and out["label"][0] in CLASSES
    assert out["label"][3] is None and out["error"][3]
    with pytest.raises(ValueError, match="column 'image'"):
        model.predict(pd.DataFrame({"img": [b64]}))


def test_chunked_prediction_equals_one_pass(model_dir, images):
    model = predict.load_model(str(model_dir))
    files = predict.collect_files([str(images)])
    a = predict.predict_files(model, files, None, chunk=3, face_check=False)
    b = predict.predict_files(model, files, None, face_check=False)
    assert [r["file"] for r in a] == [r["file"] for r in b] and len(a) == 8
    for ra, rb in zip(a, b, strict=True):
        assert ra["label"] == rb["label"] and ra["error"] == rb["error"]
        if not ra["error"]:
            assert np.allclose([ra[c] for c in CLASSES], [rb[c] for c in CLASSES], atol=1e-6)
