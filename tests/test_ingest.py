import json

import numpy as np
import pandas as pd
import pytest
from conftest import make_image, write_params
from PIL import Image

from ferpipe import ingest
from ferpipe.config import IngestParams
from ferpipe.readers import DatasetError


def test_ingest_writes_manifest_and_images(jaffe_like, tmp_path):
    out = tmp_path / "out"
    m = ingest.ingest(jaffe_like, out, IngestParams(image_size=32))
    assert len(m) == 56
    assert list(m.columns) == ingest.MANIFEST_COLUMNS
    im = Image.open(out / m.loc[0, "path"])
    assert im.size == (32, 32) and im.mode == "RGB"
    arr = np.asarray(im)
    assert (arr[..., 0] == arr[..., 1]).all()  # gray replicated to 3 channels
    report = json.loads((out / "ingest_report.json").read_text())
    assert report["n_subjects"] == 4 and report["class_counts"]["anger"] == 8
    assert not list(tmp_path.glob(".out.*"))  # no temp folders left behind


def test_unknown_labels_dropped_with_count_or_rejected(tmp_path):
    root = tmp_path / "folders"
    make_image(root / "happy" / "a.png", 1)
    make_image(root / "contempt" / "b.png", 2)
    make_image(root / "contempt" / "c.png", 3)
    m = ingest.ingest(root, tmp_path / "o1", IngestParams(image_size=32))
    assert list(m["label"]) == ["happy"]
    report = json.loads((tmp_path / "o1" / "ingest_report.json").read_text())
    assert report["dropped_labels"] == {"contempt": 2}
    with pytest.raises(DatasetError, match=r"2 image\(s\) have labels outside .*contempt"):
        ingest.ingest(root, tmp_path / "o2", IngestParams(image_size=32, drop_unknown_labels=False))


def test_corrupt_image_names_the_file_and_keeps_previous_output(jaffe_like, tmp_path):
    out = tmp_path / "out"
    ingest.ingest(jaffe_like, out, IngestParams(image_size=32))
    before = (out / "manifest.csv").read_bytes()
    bad = jaffe_like / "KR.SU2.999.tiff"
    bad.write_bytes(b"this is not a tiff")
    with pytest.raises(DatasetError, match=r"KR\.SU2\.999\.tiff: cannot decode image"):
        ingest.ingest(jaffe_like, out, IngestParams(image_size=32))
    assert (out / "manifest.csv").read_bytes() == before  # earlier output untouched


def test_zero_byte_file(jaffe_like, tmp_path):
    (jaffe_like / "KA.HA9.998.tiff").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"KA\.HA9\.998\.tiff: zero-byte file"):
        ingest.ingest(jaffe_like, tmp_path / "out", IngestParams(image_size=32))


def test_haar_crop_falls_back_to_centre_and_counts(jaffe_like, tmp_path):
    m = ingest.ingest(jaffe_like, tmp_path / "out", IngestParams(image_size=32, face_crop="haar"))
    # noise images contain no face: every one falls back to the centre crop and is counted
    assert (m["face_found"] == False).all()  # noqa: E712
    report = json.loads((tmp_path / "out" / "ingest_report.json").read_text())
    assert report["faces_not_found"] == 56


def test_cli_bad_param_names_the_key(jaffe_like, tmp_path, capsys):
    params = write_params(tmp_path / "p.yaml", ingest={"image_size": "big"})
    rc = ingest.main(["--dataset", str(jaffe_like), "--out", str(tmp_path / "o"), "--params", str(params)])
    assert rc == 2
    assert "ingest.image_size: expected int, got 'big'" in capsys.readouterr().err
    params = write_params(tmp_path / "p.yaml", ingest={"imgsize": 32})
    assert ingest.main(["--dataset", str(jaffe_like), "--out", str(tmp_path / "o"), "--params", str(params)]) == 2
    assert "unknown key(s) in 'ingest': imgsize" in capsys.readouterr().err


def test_cli_missing_folder(tmp_path, capsys, tiny_params):
    rc = ingest.main(["--dataset", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--params", str(tiny_params)])
    assert rc == 2 and "missing: dataset folder or file not found" in capsys.readouterr().err


def test_manifest_reads_back(jaffe_like, tmp_path):
    ingest.ingest(jaffe_like, tmp_path / "out", IngestParams(image_size=32))
    m = pd.read_csv(tmp_path / "out" / "manifest.csv", keep_default_na=False)
    assert m["sha256"].str.len().eq(64).all() and m["source_path"].str.endswith(".tiff").all()
