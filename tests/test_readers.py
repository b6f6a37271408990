import csv

import numpy as np
import pytest
from conftest import make_image

from ferpipe.readers import DatasetError, detect_layout, normalize_label, read_dataset


def labels(recs):
    return sorted((r.label, r.subject) for r in recs)


def test_synonyms_and_unknown():
    assert normalize_label("Angry") == "anger"
    assert normalize_label("happiness") == "happy"
    assert normalize_label("sad") == "sadness"
    assert normalize_label("surprised") == "surprise"
    assert normalize_label("Contempt ") == "contempt"  # not a synonym: kept as itself (data.classes decides)
    assert normalize_label("  ") is None


def test_jaffe_names(jaffe_like):
    layout, recs = read_dataset(jaffe_like)
    assert layout == "jaffe" and len(recs) == 56
    assert {r.subject for r in recs} == {"KA", "KL", "KM", "KR"}
    assert {r.label for r in recs} == {"anger", "disgust", "fear", "happy", "neutral", "sadness", "surprise"}


def test_jaffe_palette_tiff_is_read_as_gray(tmp_path):
    from PIL import Image

    p = tmp_path / "j" / "KA.AN1.1.tiff"
    p.parent.mkdir()
    im = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).convert("P")
    im.save(p)
    _, recs = read_dataset(p.parent)
    assert recs[0].loader().mode == "P"  # normalisation converts it to L in ingest


def test_ckplus_official(tmp_path):
    root = tmp_path / "ck"
    for i, (subj, seq, code) in enumerate([("S005", "001", 3), ("S010", "002", 5), ("S011", "001", 2)]):
        stem = f"{subj}_{seq}_{i + 10:08d}"
        make_image(root / "cohn-kanade-images" / subj / seq / f"{stem}.png", seed=i)
        make_image(root / "cohn-kanade-images" / subj / seq / f"{subj}_{seq}_00000001.png", seed=100 + i)
        lab = root / "Emotion" / subj / seq / f"{stem}_emotion.txt"
        lab.parent.mkdir(parents=True, exist_ok=True)
        lab.write_text(f"   {code}.0000000e+00\n")
    layout, recs = read_dataset(root)
    assert layout == "ckplus"
    # contempt (code 2) is read; ingest drops it unless data.classes keeps it (auto or a list)
    assert [(r.raw_label, r.label, r.subject) for r in recs] == [
        ("disgust", "disgust", "S005"), ("happy", "happy", "S010"), ("contempt", "contempt", "S011")]


def test_ckplus_folders(tmp_path):
    root = tmp_path / "ck48"
    make_image(root / "anger" / "S010_004_00000017.png", 1)
    make_image(root / "happy" / "S011_006_00000013.png", 2)
    layout, recs = read_dataset(root)
    assert layout == "ckplus_folders"
    assert labels(recs) == [("anger", "S010"), ("happy", "S011")]


def test_kdef_keeps_straight_views(tmp_path):
    root = tmp_path / "kdef"
    make_image(root / "AF01" / "AF01ANS.JPG", 1, mode="RGB")
    make_image(root / "AF01" / "AF01ANFL.JPG", 2, mode="RGB")
    make_image(root / "BM12" / "BM12SUS.JPG", 3, mode="RGB")
    make_image(root / "AF01" / "AF01AFS.JPG", 4, mode="RGB")
    layout, recs = read_dataset(root)
    assert layout == "kdef"
    assert labels(recs) == [("anger", "F01"), ("fear", "F01"), ("surprise", "M12")]
    _, all_views = read_dataset(root, kdef_views=["S", "FL"])
    assert len(all_views) == 4


def test_fer2013_csv(tmp_path):
    f = tmp_path / "fer2013.csv"
    with open(f, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["emotion", "pixels", "Usage"])
        w.writerow([0, " ".join(["10"] * 2304), "Training"])
        w.writerow([6, " ".join(["200"] * 2304), "PublicTest"])
    layout, recs = read_dataset(f)
    assert layout == "fer2013"
    assert [r.label for r in recs] == ["anger", "neutral"]
    assert recs[0].loader().size == (48, 48)


def test_fer2013_bad_row(tmp_path):
    f = tmp_path / "fer.csv"
    f.write_text("emotion,pixels\n0,1 2 3\n")
    with pytest.raises(DatasetError, match=r"row 2: 3 pixels is not a square"):
        read_dataset(f)


def test_fer2013_folders_and_generic(tmp_path):
    root = tmp_path / "fer"
    make_image(root / "train" / "angry" / "1.png", 1)
    make_image(root / "test" / "surprise" / "2.png", 2)
    assert detect_layout(root) == "folders"
    _, recs = read_dataset(root, layout="fer2013")
    assert labels(recs) == [("anger", None), ("surprise", None)]


def test_csv_manifest(tmp_path):
    make_image(tmp_path / "imgs" / "a.png", 1)
    make_image(tmp_path / "imgs" / "b.png", 2)
    (tmp_path / "list.csv").write_text("path,label,subject\nimgs/a.png,sad,p1\nimgs/b.png,Happiness,p2\n")
    layout, recs = read_dataset(tmp_path / "list.csv")
    assert layout == "csv"
    assert labels(recs) == [("happy", "p2"), ("sadness", "p1")]


def test_csv_manifest_missing_column(tmp_path):
    (tmp_path / "list.csv").write_text("file,label\na.png,sad\n")
    with pytest.raises(DatasetError, match="neither path,label"):
        read_dataset(tmp_path / "list.csv")


def test_missing_and_empty_folder(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        read_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty"):
        read_dataset(tmp_path / "empty")
