"""ingest stage: raw dataset -> normalised PNG images + manifest.csv.

    python -m ferpipe.ingest --dataset data/jaffe --out artifacts/ingest
"""

from __future__ import annotations

import argparse
import collections
import logging
import re
import sys
import time
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from . import classes, config
from .config import IngestParams, load_section
from .imaging import FaceCropper, normalise_image
from .io import atomic_dir, write_json, write_run_record
from .readers import DatasetError, read_dataset

log = logging.getLogger("ferpipe.ingest")

MANIFEST_COLUMNS = ["path", "label", "subject", "source_path", "sha256",
                    "width", "height", "face_found"]  # fmt: skip


def safe_name(source: str, root: Path) -> str:
    try:
        rel = Path(source).relative_to(root)
        stem = str(rel.with_suffix(""))
    except ValueError:
        stem = Path(source.replace("#row=", "_row")).name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("_") + ".png"


def ingest(dataset: Path, out_dir: Path, p: IngestParams, layout: str = "auto", class_setting="paper") -> pd.DataFrame:
    t0 = time.time()
    layout, records = read_dataset(dataset, layout, p.kdef_views)
    root = dataset if dataset.is_dir() else dataset.parent

    keep = classes.wanted(class_setting)  # None: every label (data.classes: auto)

    def kept(r) -> bool:
        return r.label is not None and (keep is None or r.label in keep)

    unknown = [r for r in records if not kept(r)]
    dropped = collections.Counter(r.raw_label for r in unknown)
    if unknown and not p.drop_unknown_labels:
        listing = ", ".join(f"{r.source} ('{r.raw_label}')" for r in unknown[:10])
        raise DatasetError(
            f"{len(unknown)} image(s) have labels outside {list(keep or [])}: {listing}"
            + (" ..." if len(unknown) > 10 else "")
            + " (set ingest.drop_unknown_labels: true to drop them, or data.classes: auto / a list to keep them)"
        )
    records = [r for r in records if kept(r)]
    if p.max_images:
        records = records[: p.max_images]
    if not records:
        raise DatasetError(f"{dataset}: no images with a label among {list(keep or ['any label'])}")
    run_classes = classes.resolve(class_setting, (r.label for r in records))

    cropper = FaceCropper(p.face_margin) if p.face_crop == "haar" else None
    # Build into a sibling temp folder, then swap it in: a crash never leaves half an output.
    with atomic_dir(out_dir) as tmp:
        (tmp / "images").mkdir()
        rows, names = [], set()
        for rec in tqdm(records, desc="ingest", unit="img", disable=None, mininterval=2):
            im = rec.loader()
            img, face = normalise_image(im, p, cropper)
            name = safe_name(rec.source, root)
            if name in names:
                raise DatasetError(f"{rec.source}: output name {name} collides with another file")
            names.add(name)
            img.save(tmp / "images" / name, format="PNG", optimize=False)
            rows.append({
                "path": f"images/{name}", "label": rec.label, "subject": rec.subject or "",
                "source_path": rec.source, "sha256": rec.hasher(),
                "width": img.width, "height": img.height,
                "face_found": "" if face is None else bool(face),
            })  # fmt: skip
        manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
        manifest.to_csv(tmp / "manifest.csv", index=False, lineterminator="\n")
        counts = manifest["label"].value_counts()
        report = {
            "dataset": str(dataset),
            "layout": layout,
            "n_images": len(manifest),
            "n_subjects": int(manifest.loc[manifest["subject"] != "", "subject"].nunique()),
            "classes": list(run_classes),
            "class_counts": {c: int(counts.get(c, 0)) for c in run_classes},
            "dropped_labels": dict(sorted(dropped.items())),
            "face_crop": p.face_crop,
            "faces_not_found": int((manifest["face_found"] == False).sum()),  # noqa: E712
            "image_size": p.image_size,
        }
        write_json(tmp / "ingest_report.json", report)
        classes.write(tmp, run_classes, class_setting)  # the run's class list, read by every later stage
        write_run_record(tmp, {"stage": "ingest", "seconds": round(time.time() - t0, 2)})
    log.info("ingest: %d images (%s layout), classes %s, dropped %s",
             len(manifest), layout, report["class_counts"], report["dropped_labels"])  # fmt: skip
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dataset", type=Path, help="raw dataset folder or CSV (default: params data.dataset)")
    ap.add_argument("--layout", help="dataset layout (default: params data.layout, 'auto' detects)")
    ap.add_argument("--out", type=Path, default=config.INGEST_DIR, help="output folder (images/ + manifest.csv)")
    ap.add_argument("--params", type=Path, default=config.PARAMS_FILE, help="params.yaml to read 'data' and 'ingest' from")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        data = load_section("data", args.params)
        p = load_section("ingest", args.params)
        if p.face_crop not in ("none", "haar"):
            raise config.ParamsError(f"params.yaml: ingest.face_crop: expected none or haar, got {p.face_crop!r}")
        if p.image_size < 32:
            raise config.ParamsError(f"params.yaml: ingest.image_size: expected >= 32, got {p.image_size}")
        ingest(args.dataset or Path(data.dataset), args.out, p, args.layout or data.layout, data.classes)
    except (DatasetError, config.ParamsError) as exc:
        print(f"ingest: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
