"""validate stage: the data contract on the manifest, checked with Great Expectations.

Pandas derives the facts GE cannot see from a CSV (does the file exist and decode, its
real size, label conflicts among identical sources, images per class); GE checks them
all as one suite. On any failed expectation the stage exits non-zero, naming each
expectation and the offending rows, so nothing downstream runs on invalid data.

    python -m ferpipe.validate --manifest artifacts/ingest/manifest.csv --out artifacts/validate
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import pandas as pd
from PIL import Image

from . import classes, config
from .config import load_section
from .io import write_json, write_text

REQUIRED_COLUMNS = ["path", "label", "subject", "source_path", "sha256", "width", "height"]


def probe_images(manifest: pd.DataFrame, root: Path) -> pd.DataFrame:
    """Add file_exists / decodes / actual_width / actual_height columns."""
    exists, decodes, widths, heights = [], [], [], []
    for rel in manifest["path"]:
        f = root / str(rel)
        ok = f.is_file() and f.stat().st_size > 0
        w = h = -1
        dec = False
        if ok:
            try:
                with Image.open(f) as im:
                    im.load()
                    w, h = im.size
                dec = True
            except Exception:
                dec = False
        exists.append(ok)
        decodes.append(dec)
        widths.append(w)
        heights.append(h)
    out = manifest.copy()
    out["file_exists"], out["decodes"] = exists, decodes
    out["actual_width"], out["actual_height"] = widths, heights
    return out


def label_conflicts(manifest: pd.DataFrame) -> pd.Series:
    """True for rows whose source bytes (sha256) also appear with a different label."""
    n_labels = manifest.groupby("sha256")["label"].transform("nunique")
    return n_labels > 1


def build_checks(manifest: pd.DataFrame, root: Path, run_classes) -> tuple[pd.DataFrame, pd.DataFrame]:
    df = probe_images(manifest, root)
    df["label_conflict"] = label_conflicts(df)
    df["duplicate_source"] = df.duplicated("sha256", keep=False)
    counts = df["label"].value_counts()
    per_class = pd.DataFrame({"label": list(run_classes), "n_images": [int(counts.get(c, 0)) for c in run_classes]})
    return df, per_class


def run_suite(df: pd.DataFrame, per_class: pd.DataFrame, image_size: int, n_groups: int,
              require_subject: bool, fail_on_duplicates: bool, run_classes) -> list[dict]:  # fmt: skip
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    src = ctx.data_sources.add_pandas("ferpipe")
    E = gx.expectations

    manifest_suite = gx.ExpectationSuite(name="manifest_contract")
    for col in REQUIRED_COLUMNS:
        manifest_suite.add_expectation(E.ExpectColumnToExist(column=col))
    present = set(df.columns)
    rows = [
        E.ExpectColumnValuesToNotBeNull(column="path"),
        E.ExpectColumnValuesToBeUnique(column="path"),
        E.ExpectColumnValuesToBeInSet(column="label", value_set=list(run_classes)),
        E.ExpectColumnValuesToBeInSet(column="file_exists", value_set=[True]),
        E.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True]),
        E.ExpectColumnValuesToBeBetween(column="actual_width", min_value=image_size, max_value=image_size),
        E.ExpectColumnValuesToBeBetween(column="actual_height", min_value=image_size, max_value=image_size),
        E.ExpectColumnValuesToBeInSet(column="label_conflict", value_set=[False]),
    ]
    if fail_on_duplicates:
        rows.append(E.ExpectColumnValuesToBeInSet(column="duplicate_source", value_set=[False]))
    if require_subject and "subject" in present:
        rows.append(E.ExpectColumnValueLengthsToBeBetween(column="subject", min_value=1))
    for exp in rows:
        manifest_suite.add_expectation(exp)

    class_suite = gx.ExpectationSuite(name="class_counts")
    class_suite.add_expectation(E.ExpectColumnValuesToBeBetween(column="n_images", min_value=n_groups))

    results = []
    fmt = {"result_format": "COMPLETE", "unexpected_index_column_names": ["path"]}
    for name, frame, suite, key in (("manifest", df, manifest_suite, "path"),
                                    ("class_counts", per_class, class_suite, "label")):  # fmt: skip
        frame = frame.copy()
        if "subject" in frame:
            frame["subject"] = frame["subject"].fillna("").astype(str)
        asset = src.add_dataframe_asset(name)
        batch = asset.add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": frame})
        fmt["unexpected_index_column_names"] = [key]
        res = batch.validate(suite, result_format=dict(fmt))
        for r in res.results:
            cfg = r.expectation_config
            kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id", "result_format")}
            idx = r.result.get("unexpected_index_list") or []
            offending = [row.get(key) for row in idx if isinstance(row, dict)]
            results.append({
                "table": name, "expectation": cfg.type, "kwargs": kwargs,
                "success": bool(r.success), "unexpected_count": r.result.get("unexpected_count", 0),
                "offending": offending[:50],
            })  # fmt: skip
    return results


def explain(result: dict, df: pd.DataFrame, per_class: pd.DataFrame, run_classes, setting=None) -> str:
    col = result["kwargs"].get("column", "")
    msgs = {
        "file_exists": "image file missing or empty",
        "decodes": "image file does not decode",
        "actual_width": "image width differs from ingest.image_size",
        "actual_height": "image height differs from ingest.image_size",
        "label_conflict": "the same source image (sha256) carries different labels",
        "duplicate_source": "the same source image appears more than once",
        "label": f"label outside the run's classes {list(run_classes)}",
        "subject": "subject id missing (needed for the subject protocol)",
        "n_images": "too few images in a class for the protocol's groups",
    }
    what = msgs.get(col, result["expectation"])
    if result["table"] == "class_counts":
        short = per_class[per_class["label"].isin(result["offending"])]
        msg = f"{what}: " + ", ".join(f"{r.label}={r.n_images}" for r in short.itertuples())
        if setting == "paper" and (short["n_images"] == 0).any():
            msg += (" (data.classes: paper needs all of the paper's classes; data.classes: auto keeps the classes "
                    "this dataset has, or list them explicitly)")  # fmt: skip
        return msg
    offenders = result["offending"]
    if col == "label_conflict":
        bad = df[df["path"].isin(offenders)]
        offenders = [f"{r.path} ({r.label}, source {r.source_path})" for r in bad.itertuples()]
    if not offenders:
        return f"{result['expectation']}({result['kwargs']})"
    more = f" (+{result['unexpected_count'] - len(offenders)} more)" if result["unexpected_count"] > len(offenders) else ""
    return f"{what}: {', '.join(map(str, offenders[:10]))}{more}"


def validate(manifest_path: Path, out_dir: Path, image_size: int, n_groups: int,
             require_subject: bool, fail_on_duplicates: bool = False) -> dict:  # fmt: skip
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path}: manifest not found (run the ingest stage first)")
    manifest = pd.read_csv(manifest_path, dtype={"subject": str, "sha256": str}, keep_default_na=False)
    missing = [c for c in REQUIRED_COLUMNS if c not in manifest.columns]
    for c in missing:  # add empty columns so the suite reports them instead of crashing
        manifest[c] = ""
    run_classes = classes.read(manifest_path)
    setting = classes.read_setting(manifest_path)
    df, per_class = build_checks(manifest, manifest_path.parent, run_classes)
    results = run_suite(df, per_class, image_size, n_groups, require_subject, fail_on_duplicates, run_classes)
    for r in results:
        if r["expectation"] == "expect_column_to_exist" and r["kwargs"]["column"] in missing:
            r["success"] = False
    failed = [r for r in results if not r["success"]]
    dup = df[df["duplicate_source"]]
    summary = {
        "success": not failed,
        "manifest": str(manifest_path),
        "n_images": int(len(df)),
        "classes": list(run_classes),
        "class_counts": dict(zip(per_class["label"], per_class["n_images"].astype(int).tolist(), strict=True)),
        "n_subjects": int(df.loc[df["subject"].astype(str) != "", "subject"].nunique()),
        "duplicate_sources": dup.groupby("sha256")["path"].apply(list).tolist(),
        "failures": [{"expectation": r["expectation"], "column": r["kwargs"].get("column"),
                      "message": explain(r, df, per_class, run_classes, setting)} for r in failed],  # fmt: skip
        "expectations": results,
    }
    lines = ["# Data validation (Great Expectations)", "",
             f"- result: **{'PASS' if summary['success'] else 'FAIL'}** "
             f"({len(results) - len(failed)}/{len(results)} expectations met)",
             f"- images: {summary['n_images']}, subjects: {summary['n_subjects']}",
             "- per class: " + ", ".join(f"{k} {v}" for k, v in summary["class_counts"].items()),
             f"- duplicate sources: {len(summary['duplicate_sources'])} group(s)", ""]  # fmt: skip
    for f in summary["failures"]:
        lines.append(f"- FAILED {f['expectation']} [{f['column']}]: {f['message']}")
    write_json(out_dir / "validation.json", summary)
    write_text(out_dir / "validation.md", "\n".join(lines) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--manifest", type=Path, default=config.MANIFEST, help="manifest.csv written by ingest")
    ap.add_argument("--out", type=Path, default=config.VALIDATE_DIR, help="folder for validation.json / validation.md")
    ap.add_argument("--params", type=Path, default=config.PARAMS_FILE, help="params.yaml (ingest, split, validate sections)")
    args = ap.parse_args(argv)
    try:
        ing = load_section("ingest", args.params)
        spl = load_section("split", args.params)
        val = load_section("validate", args.params)
        require_subject = val.require_subject and "subject" in spl.protocols
        summary = validate(args.manifest, args.out, ing.image_size, spl.n_groups,
                           require_subject, val.fail_on_duplicates)  # fmt: skip
    except (config.ParamsError, FileNotFoundError) as exc:
        print(f"validate: error: {exc}", file=sys.stderr)
        return 2
    if not summary["success"]:
        print(f"validate: the manifest violates the data contract ({args.manifest}):", file=sys.stderr)
        for f in summary["failures"]:
            print(f"  - {f['expectation']} [{f['column']}]: {f['message']}", file=sys.stderr)
        print(f"  report: {args.out / 'validation.md'}", file=sys.stderr)
        return 1
    print(f"validate: PASS, {summary['n_images']} images, {len(summary['expectations'])} expectations met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
