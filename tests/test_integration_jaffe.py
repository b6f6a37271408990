"""Integration on the real JAFFE images in ../shared (never copied into the repo)."""

import pytest
from conftest import SHARED_JAFFE, jaffe_available

from ferpipe import ingest, split, validate
from ferpipe.config import IngestParams, SplitParams

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not jaffe_available(), reason="../shared/data/jaffe not present"),
]


def test_jaffe_ingest_validate_split(tmp_path):
    m = ingest.ingest(SHARED_JAFFE, tmp_path / "ing", IngestParams(image_size=224))
    assert len(m) == 213
    assert m["label"].value_counts().to_dict() == {
        "fear": 32, "happy": 31, "sadness": 31, "anger": 30, "neutral": 30, "surprise": 30, "disgust": 29}
    assert m["subject"].nunique() == 10
    s = validate.validate(tmp_path / "ing" / "manifest.csv", tmp_path / "val", 224, 10, True)
    assert s["success"], s["failures"]
    plan, summary = split.make_plan(m, SplitParams())
    assert len(plan) == 2 * 10 * 10 * 213
    assert summary["runs"]["stratified/run01"]["per_class_max"] - summary["runs"]["stratified/run01"]["per_class_min"] <= 2
    # 10 subjects in 10 groups: leave-one-subject-out, the same split in every run
    assert summary["distinct_groupings"]["subject"]["n_distinct"] == 1
    assert summary["distinct_groupings"]["stratified"]["n_distinct"] == 10
