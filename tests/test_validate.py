import pandas as pd
import pytest

from ferpipe import ingest, validate
from ferpipe.config import IngestParams


@pytest.fixture
def ingested(jaffe_like, tmp_path):
    out = tmp_path / "ing"
    ingest.ingest(jaffe_like, out, IngestParams(image_size=32))
    return out / "manifest.csv"


def run(manifest, tmp_path, n_groups=2, image_size=32, require_subject=True):
    return validate.validate(manifest, tmp_path / "val", image_size, n_groups, require_subject)


def messages(summary):
    return "\n".join(f["message"] for f in summary["failures"])


def test_valid_manifest_passes(ingested, tmp_path):
    s = run(ingested, tmp_path)
    assert s["success"], s["failures"]
    assert (tmp_path / "val" / "validation.md").read_text().count("PASS") == 1


def test_duplicate_with_two_labels_fails(ingested, tmp_path):
    m = pd.read_csv(ingested, keep_default_na=False)
    dup = m.iloc[[0]].copy()
    dup["path"] = m.loc[1, "path"]  # an existing file so only the conflict fails
    m.loc[1, "sha256"] = m.loc[0, "sha256"]
    m.loc[1, "label"] = "happy" if m.loc[0, "label"] != "happy" else "anger"
    m.to_csv(ingested, index=False)
    s = run(ingested, tmp_path)
    assert not s["success"]
    assert "same source image (sha256) carries different labels" in messages(s)
    assert m.loc[0, "path"] in messages(s) and m.loc[1, "path"] in messages(s)


def test_too_few_images_per_class(ingested, tmp_path):
    s = run(ingested, tmp_path, n_groups=10)  # 8 per class < 10 groups
    assert not s["success"]
    assert "too few images in a class" in messages(s) and "anger=8" in messages(s)


def test_missing_file_wrong_size_unknown_label_and_subject(ingested, tmp_path):
    m = pd.read_csv(ingested, keep_default_na=False)
    (ingested.parent / m.loc[0, "path"]).unlink()
    m.loc[2, "label"] = "contempt"
    m.loc[3, "subject"] = ""
    m.to_csv(ingested, index=False)
    s = run(ingested, tmp_path, image_size=48)
    msg = messages(s)
    assert f"image file missing or empty: {m.loc[0, 'path']}" in msg
    assert "label outside" in msg and m.loc[2, "path"] in msg
    assert "subject id missing" in msg and m.loc[3, "path"] in msg
    assert "image width differs from ingest.image_size" in msg


def test_corrupt_file_fails_decode(ingested, tmp_path):
    m = pd.read_csv(ingested, keep_default_na=False)
    (ingested.parent / m.loc[5, "path"]).write_bytes(b"garbage")
    s = run(ingested, tmp_path)
    assert f"image file does not decode: {m.loc[5, 'path']}" in messages(s)


def test_cli_exit_code_and_names_expectation(ingested, tmp_path, capsys, tiny_params):
    m = pd.read_csv(ingested, keep_default_na=False).drop(columns=["sha256"])
    m.to_csv(ingested, index=False)
    rc = validate.main(["--manifest", str(ingested), "--out", str(tmp_path / "v"), "--params", str(tiny_params)])
    err = capsys.readouterr().err
    assert rc == 1 and "expect_column_to_exist [sha256]" in err
