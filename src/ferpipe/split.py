"""split stage: manifest -> the (protocol, run, fold) plan of the paper's 10x10 protocol.

Per run every image gets one of G groups; fold k tests group k, validates on group
(k mod G) + 1 and trains on the other G-2 groups (runs, folds and groups are 1-based).

- stratified (the paper): per class, group sizes differ by at most one
  (scikit-learn StratifiedKFold allocates each class round-robin over the groups).
  Byte-identical images (same sha256) always share a group, or a copy in the training
  groups would leak the test image: when the manifest has such copies the groups come
  from StratifiedGroupKFold over the sha256 values instead (without copies, as on JAFFE,
  the plain StratifiedKFold runs, so its plans are unchanged).
- subject (person-independent): whole subjects per group, classes balanced as well as
  the subjects allow (StratifiedGroupKFold).

Also the protocol audit (``ferpipe.audit``): per test image, whether its fold's training
images hold the same subject or a sibling (same subject, same expression), and its highest
pixel similarity to them -> ``protocol_audit.csv`` and the shares in ``split_summary.json``.

    python -m ferpipe.split --manifest artifacts/ingest/manifest.csv --out artifacts/split
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from . import audit, classes, config, cv
from .config import PROTOCOLS, SplitParams, load_section
from .io import write_json, write_text

ROLES = ("train", "val", "test")


class SplitError(ValueError):
    """The requested protocol is impossible on this manifest."""


def run_seed(seed: int, protocol: str, run: int) -> int:
    # Independent, reproducible stream per (protocol, run); a new grouping each run.
    ss = np.random.SeedSequence([seed, PROTOCOLS.index(protocol), run])
    return int(ss.generate_state(1)[0])


def assign_groups(manifest: pd.DataFrame, protocol: str, n_groups: int, seed: int,
                  run_classes: tuple[str, ...] | None = None) -> np.ndarray:  # fmt: skip
    """Group number (1..G) for every manifest row."""
    run_classes = run_classes or classes.resolve("auto", manifest["label"])
    y = classes.label_ids(manifest["label"], run_classes)
    counts = np.bincount(y, minlength=len(run_classes))
    if protocol == "stratified":
        short = [f"{run_classes[i]} ({n})" for i, n in enumerate(counts) if 0 < n < n_groups]
        if short:
            raise SplitError(f"stratified split needs >= {n_groups} images per class; "
                             f"too few: {', '.join(short)}")  # fmt: skip
        sha = manifest["sha256"].astype(str).to_numpy() if "sha256" in manifest else None
        if sha is not None and len(set(sha)) < len(sha):  # copies stay together: no leak
            splitter = StratifiedGroupKFold(n_splits=n_groups, shuffle=True, random_state=seed)
            folds = splitter.split(np.zeros(len(y)), y, groups=sha)
        else:
            splitter = StratifiedKFold(n_splits=n_groups, shuffle=True, random_state=seed)
            folds = splitter.split(np.zeros(len(y)), y)
    elif protocol == "subject":
        subjects = manifest["subject"].fillna("").astype(str)
        if (subjects == "").any():
            missing = manifest.loc[subjects == "", "path"].head(5).tolist()
            raise SplitError(f"subject protocol needs a subject for every image; missing for "
                             f"{(subjects == '').sum()} image(s), e.g. {missing}")  # fmt: skip
        n_subj = subjects.nunique()
        if n_subj < n_groups:
            raise SplitError(f"subject protocol needs at least {n_groups} subjects for "
                             f"{n_groups} groups; the manifest has {n_subj}")  # fmt: skip
        splitter = StratifiedGroupKFold(n_splits=n_groups, shuffle=True, random_state=seed)
        folds = splitter.split(np.zeros(len(y)), y, groups=subjects.to_numpy())
    else:
        raise SplitError(f"unknown protocol '{protocol}' (expected one of {PROTOCOLS})")
    group = np.zeros(len(y), dtype=np.int64)
    for g, (_, test_idx) in enumerate(folds, start=1):
        group[test_idx] = g
    return group


def make_plan(manifest: pd.DataFrame, p: SplitParams,
              run_classes: tuple[str, ...] | None = None) -> tuple[pd.DataFrame, dict]:  # fmt: skip
    if p.n_groups < 3:
        raise SplitError(f"split.n_groups must be >= 3 (one test, one validation, >= 1 train); got {p.n_groups}")
    run_classes = run_classes or classes.resolve("auto", manifest["label"])
    images = manifest["path"].to_numpy()
    frames, groups_summary = [], {}
    for protocol in p.protocols:
        for run in range(1, p.n_runs + 1):
            group = assign_groups(manifest, protocol, p.n_groups, run_seed(p.seed, protocol, run), run_classes)
            sizes = pd.crosstab(manifest["label"], group).reindex(run_classes, fill_value=0)
            groups_summary[f"{protocol}/run{run:02d}"] = {
                "group_sizes": np.bincount(group, minlength=p.n_groups + 1)[1:].tolist(),
                "per_class_min": int(sizes.to_numpy().min()),
                "per_class_max": int(sizes.to_numpy().max()),
            }
            for fold in range(1, p.n_groups + 1):
                val_group = fold % p.n_groups + 1
                role = np.where(group == fold, "test", np.where(group == val_group, "val", "train"))
                frames.append(pd.DataFrame({"protocol": protocol, "run": run, "fold": fold,
                                            "image": images, "role": role}))  # fmt: skip
    plan = pd.concat(frames, ignore_index=True)
    summary = {
        "params": config.as_dict(p),
        "n_images": int(len(manifest)),
        "n_rows": int(len(plan)),
        "distinct_groupings": distinct_groupings(plan),
        "runs": groups_summary,
    }
    return plan, summary


def distinct_groupings(plan: pd.DataFrame) -> dict[str, dict]:
    """Per protocol: how many runs, how many different partitions into groups they use.

    Runs that repeat a partition test the same images with the same training sets (only
    the validation group differs), so they are not independent samples of the method's
    accuracy; compare uses one run per distinct partition for its tests."""
    out = {}
    test = plan[plan["role"] == "test"]
    for protocol, df in test.groupby("protocol", sort=False):
        keys = {run: cv.grouping_digest(g.groupby("fold")["image"].apply(list)) for run, g in df.groupby("run")}
        first: dict = {}
        for run, key in sorted(keys.items()):
            first.setdefault(key, run)
        out[protocol] = {"n_runs": len(keys), "n_distinct": len(first), "distinct_runs": sorted(first.values())}
    return out


def plan_markdown(plan: pd.DataFrame, manifest: pd.DataFrame, run_classes: tuple[str, ...]) -> str:
    lab = manifest.set_index("path")["label"]
    first = plan[(plan["run"] == 1)]
    lines = ["# Split plan summary", ""]
    for protocol, df in first.groupby("protocol", sort=False):
        test = df[df["role"] == "test"]
        tab = pd.crosstab(test["fold"], test["image"].map(lab)).reindex(columns=run_classes, fill_value=0)
        lines += [f"## {protocol}: test images per class and fold (run 1)", "",
                  "| fold | " + " | ".join(run_classes) + " | total |",
                  "|---" * (len(run_classes) + 2) + "|"]  # fmt: skip
        for fold, row in tab.iterrows():
            lines.append(f"| {fold} | " + " | ".join(str(v) for v in row) + f" | {row.sum()} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--manifest", type=Path, default=config.MANIFEST, help="manifest.csv from ingest")
    ap.add_argument("--out", type=Path, default=config.SPLIT_DIR, help="output folder for split_plan.csv + summaries")
    ap.add_argument("--params", type=Path, default=config.PARAMS_FILE, help="params.yaml with a 'split' section")
    args = ap.parse_args(argv)
    try:
        p = load_section("split", args.params)
        manifest = pd.read_csv(args.manifest, dtype={"subject": str}, keep_default_na=False)
        run_classes = classes.read(args.manifest)
        plan, summary = make_plan(manifest, p, run_classes)
    except (SplitError, config.ParamsError, FileNotFoundError, ValueError) as exc:
        print(f"split: error: {exc}", file=sys.stderr)
        return 2
    for protocol, d in summary["distinct_groupings"].items():
        if d["n_distinct"] < d["n_runs"]:
            print(f"split: warning: protocol {protocol}: the {d['n_runs']} runs use only {d['n_distinct']} distinct "
                  "grouping(s) (e.g. as many groups as subjects: leave-one-subject-out is the same split every "
                  "run); repeated runs are not independent samples, compare tests one run per grouping",
                  file=sys.stderr)  # fmt: skip
    try:  # what each test image's fold lets a model memorise (ferpipe.audit)
        pixels = audit.pixel_vectors(manifest, args.manifest.parent)
    except (FileNotFoundError, OSError) as exc:
        print(f"split: error: protocol audit: cannot read the ingested images ({exc})", file=sys.stderr)
        return 2
    table = audit.audit_plan(plan, manifest, pixels)
    summary["protocol_audit"] = audit.shares(table)
    for protocol, a in summary["protocol_audit"].items():
        share = a["sibling_in_train_share"]
        print(f"split: protocol audit: {protocol}: " + (f"{100 * share:.1f} % of test images have a sibling (same "
              "subject, same expression) in training" if share is not None else a["why_unknown"]))  # fmt: skip
    write_text(args.out / "protocol_audit.csv", table.to_csv(index=False, lineterminator="\n"))
    write_text(args.out / "split_plan.csv", plan.to_csv(index=False, lineterminator="\n"))
    write_json(args.out / "split_summary.json", summary)
    write_text(args.out / "split_summary.md", plan_markdown(plan, manifest, run_classes))
    print(f"split: {len(plan)} rows for protocols {p.protocols}, {p.n_runs} runs x {p.n_groups} folds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
