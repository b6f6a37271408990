"""Protocol audit (ferpipe.audit) on a generated plan whose siblings are known."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ferpipe import audit
from ferpipe.foldio import FoldResult


def manifest(subjects: bool = True) -> pd.DataFrame:
    # 2 subjects x 2 labels x 2 shots = 8 images
    rows = [(f"images/{s}.{lab}{k}.png", lab, s if subjects else "") for s in ("KA", "KB") for lab in ("happy", "sad")
            for k in (1, 2)]  # fmt: skip
    return pd.DataFrame(rows, columns=["path", "label", "subject"])


def plan() -> pd.DataFrame:
    m = manifest()
    roles = {
        # fold 1 (image-level): test one shot of KA.happy and one of KB.sad; their other shots train
        1: {"images/KA.happy1.png": "test", "images/KB.sad1.png": "test", "images/KA.sad1.png": "val"},
        # fold 2 (person-level): test all of KA; KB trains
        2: {p: ("test" if "KA." in p else "train") for p in m["path"]},
    }
    rows = []
    for fold, r in roles.items():
        for p in m["path"]:
            role = r.get(p, "train")
            rows.append(("stratified" if fold == 1 else "subject", 1, fold, p, role))
    df = pd.DataFrame(rows, columns=["protocol", "run", "fold", "image", "role"])
    df.loc[(df.fold == 2) & (df.image == "images/KB.happy1.png"), "role"] = "val"
    return df


def test_the_audit_finds_the_known_siblings():
    m = manifest()
    pixels = np.eye(8, dtype=np.float32)  # every image unlike every other: similarity 0
    pixels[1] = pixels[0]  # KA.happy2 is a copy of KA.happy1: similarity 1
    table = audit.audit_plan(plan(), m, pixels)
    strat = table[table.protocol == "stratified"].set_index("image")
    assert strat.loc["images/KA.happy1.png", "sibling_in_train"] and strat.loc["images/KB.sad1.png", "sibling_in_train"]
    assert strat.loc["images/KA.happy1.png", "max_pixel_similarity"] == 1.0
    assert strat.loc["images/KB.sad1.png", "max_pixel_similarity"] == 0.0
    subj = table[table.protocol == "subject"]
    assert len(subj) == 4 and not subj["subject_in_train"].any() and not subj["sibling_in_train"].any()
    s = audit.shares(table)
    assert s["stratified"]["sibling_in_train_share"] == 1.0 and s["subject"]["sibling_in_train_share"] == 0.0


def test_accuracy_with_and_without_a_sibling():
    table = audit.audit_plan(plan(), manifest(), None)
    f1 = FoldResult("m", "stratified", 1, 1, "h", ["images/KA.happy1.png", "images/KB.sad1.png"], [0, 1], [0, 0])
    acc = audit.accuracy_by_sibling([f1], table[table.protocol == "stratified"])
    assert acc == {"with_sibling": {"n": 2, "accuracy": 50.0}, "without_sibling": {"n": 0, "accuracy": None}}


def test_results_from_another_plan_are_refused_naming_the_fold():
    import pytest

    table = audit.audit_plan(plan(), manifest(), None)
    stale = FoldResult("m", "stratified", 1, 1, "h", ["images/KB.happy2.png"], [0], [0])  # trained in fold 1
    with pytest.raises(ValueError, match="m/stratified run 1 fold 1: test image images/KB.happy2.png is not in"):
        audit.accuracy_by_sibling([stale], table[table.protocol == "stratified"])


def test_without_subject_ids_the_audit_says_it_cannot_tell(tmp_path):
    m = manifest(subjects=False)
    table = audit.audit_plan(plan(), m, np.eye(8, dtype=np.float32))
    assert table["sibling_in_train"].isna().all()
    s = audit.shares(table)["stratified"]
    assert s["sibling_in_train_share"] is None and "no subject ids" in s["why_unknown"]
    table.to_csv(tmp_path / "a.csv", index=False)
    back = audit.read_audit(tmp_path / "a.csv")
    assert audit.accuracy_by_sibling([], back) is None
