"""predict: classify face photos with the final model.

    python -m ferpipe.predict PATH [PATH ...] [--model artifacts/final_model]
        [--csv out.csv] [--json out.json] [--face-crop haar|none] [--no-face-check] [--keep-going]

PATH: image files or folders (searched recursively for .jpg/.jpeg/.png/.tif/.tiff/.bmp/
.gif/.webp/.pgm/.ppm). Gray or colour, at least 32 px on the short side. Each image gets
the ingest stage's preprocessing (gray -> 3 channels, the Haar face crop when asked,
centre square, resize). By default the ingest face detector must find a face, or the file
gets an error row ("no face found") and no label; ``--no-face-check`` classifies the whole
image anyway. A file that cannot be read or decoded gets an error row; the others still
run. Each prediction carries ``ood_distance`` and ``out_of_distribution``: how far the
image's features lie from the training images, flagged above the threshold calibrated on
held-out validation images (``ferpipe.ood``).

--model: a folder written by the final_model stage (default ``artifacts/final_model``),
or an MLflow model URI (``models:/ferpipe-resnet50@champion``, ``models:/<name>/<version>``,
``runs:/<run>/model``), loaded with mlflow.pyfunc from ``MLFLOW_TRACKING_URI`` (default:
the repo's ``mlflow.db``).

Output: a table on stdout (file, label, probability per class, face, OOD, error); ``--csv``
and ``--json`` write the same rows (atomically). Exit status: 0 when every file was
classified, 1 when any file failed (with ``--keep-going``: only when every file failed),
2 on a usage error (no such model, bad option).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

from .config import CLASSES

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".pgm", ".ppm"}
DEFAULT_MODEL = Path("artifacts/final_model")


def columns(classes) -> list[str]:
    """Output columns for a model of these classes (its model.json / MLflow metadata)."""
    return ["file", "label", *classes, "face", "ood_distance", "out_of_distribution", "error"]


COLUMNS = columns(CLASSES)  # for a model of the paper's seven classes
CHUNK = 64  # files decoded and classified at a time


def is_model_uri(model: str) -> bool:
    return "://" in model or model.startswith(("models:/", "runs:/"))


def collect_files(paths: list[str]) -> list[tuple[str, Path | None, str]]:
    """[(display name, path or None, error)]: folders expand to their image files (sorted)."""
    out = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                           and not f.name.startswith("."))  # fmt: skip
            if not found:
                out.append((raw, None, f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder"))
            out.extend((str(f), f, "") for f in found)
        elif p.is_file():
            out.append((raw, p, ""))
        else:
            out.append((raw, None, "no such file or folder"))
    return out


class LocalModel:
    def __init__(self, folder: Path, batch_size: int):
        from .serving import FerPredictor

        self.predictor = FerPredictor.load(folder, batch_size=batch_size)
        self.face_crop = self.predictor.face_crop
        self.classes = self.predictor.classes

    def predict(self, blobs: list, face_crop: str | None, face_check: bool = True) -> list[dict]:
        return self.predictor.predict_bytes(blobs, face_crop, face_check)


class MlflowModel:
    def __init__(self, uri: str):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        import mlflow

        from . import tracking

        mlflow.set_tracking_uri(tracking.tracking_uri())
        self.model = mlflow.pyfunc.load_model(uri)
        params = self.model.metadata.get_params_schema()
        self.face_crop = next((p.default for p in (params.params if params else []) if p.name == "face_crop"), "none")
        custom = getattr(self.model.metadata, "metadata", None) or {}
        self.classes = list(custom.get("classes") or CLASSES)  # final_model logs the model's class list

    def predict(self, blobs: list, face_crop: str | None, face_check: bool = True) -> list[dict]:
        import base64

        import pandas as pd

        from .serving import error_row

        rows: list[dict] = [{} for _ in blobs]
        ok = [i for i, b in enumerate(blobs) if not isinstance(b, Exception)]
        for i, b in enumerate(blobs):
            if isinstance(b, Exception):
                rows[i] = error_row(b, self.classes)
        if ok:
            frame = pd.DataFrame({"image": [base64.b64encode(blobs[i]).decode("ascii") for i in ok]})
            params = {"face_check": face_check, **({"face_crop": face_crop} if face_crop else {})}
            out = self.model.predict(frame, params=params)
            for i, rec in zip(ok, out.to_dict(orient="records"), strict=True):
                rows[i] = rec
        return rows


def load_model(model: str, batch_size: int = 16):
    if is_model_uri(model):
        return MlflowModel(model)
    folder = Path(model)
    if not (folder / "model.json").exists():
        raise FileNotFoundError(f"{folder}: no model.json (run the final_model stage, or pass --model models:/NAME@ALIAS)")
    return LocalModel(folder, batch_size)


def predict_files(model, files: list[tuple[str, Path | None, str]], face_crop: str | None,
                  chunk: int = CHUNK, face_check: bool = True) -> list[dict]:  # fmt: skip
    rows: list[dict] = []
    for s in range(0, len(files), chunk):  # bounded memory for big folders
        blobs: list = []
        for _name, path, err in files[s : s + chunk]:
            if err:
                blobs.append(FileNotFoundError(err))
                continue
            try:
                blobs.append(path.read_bytes())
            except OSError as exc:
                blobs.append(exc)
        rows += model.predict(blobs, face_crop, face_check)
    out = []
    for (name, _p, _e), row in zip(files, rows, strict=True):
        rec = {"file": name, **{k: row.get(k) for k in columns(model.classes) if k != "file"}}
        for c in model.classes:
            v = rec[c]
            rec[c] = None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
        label = rec["label"]
        rec["label"] = label if isinstance(label, str) and label else None
        rec["error"] = rec["error"] or ""
        rec["face"] = rec["face"] or ""
        d = rec.get("ood_distance")
        rec["ood_distance"] = None if d is None or (isinstance(d, float) and math.isnan(d)) else float(d)
        flag = rec.get("out_of_distribution")
        rec["out_of_distribution"] = None if rec["ood_distance"] is None or flag is None else bool(flag)
        out.append(rec)
    return out


def table(rows: list[dict], classes=CLASSES) -> str:
    head = ["file", "label", *classes, "note"]
    lines = []
    for r in rows:
        note = r["error"] or ("no face found (centre square used)" if r["face"] == "not_found" else "")
        if r.get("out_of_distribution"):
            note = f"out of distribution (distance {r['ood_distance']:.3f}): unlike the training images"
        probs = [f"{r[c]:.3f}" if r[c] is not None else "-" for c in classes]
        lines.append([r["file"], r["label"] or "ERROR", *probs, note])
    widths = [max(len(h), *(len(str(line[i])) for line in lines)) if lines else len(h) for i, h in enumerate(head)]
    widths[-1] = len(head[-1])  # the note column runs free
    fmt = "  ".join(f"{{:{'<' if i in (0, 1, len(head) - 1) else '>'}{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*head), *(fmt.format(*line) for line in lines)])


def write_outputs(rows: list[dict], csv_path: Path | None, json_path: Path | None, meta: dict) -> None:
    from .io import write_json, write_text

    if csv_path:
        import pandas as pd

        frame = pd.DataFrame(rows, columns=columns(meta.get("classes", CLASSES)))
        write_text(csv_path, frame.to_csv(index=False, lineterminator="\n", float_format="%.6f"))
    if json_path:
        write_json(json_path, {**meta, "predictions": rows})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ferpipe.predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("paths", nargs="+", metavar="PATH", help="image files and/or folders (recursive)")
    ap.add_argument("--model", default=str(DEFAULT_MODEL),
                    help="final model folder, or an MLflow URI such as models:/ferpipe-resnet50@champion "
                         f"(default: {DEFAULT_MODEL})")  # fmt: skip
    ap.add_argument("--csv", type=Path, help="write the predictions as CSV here")
    ap.add_argument("--json", type=Path, help="write the predictions as JSON here")
    ap.add_argument("--face-crop", choices=["haar", "none"],
                    help="face detection before classifying (default: the model's training setting)")
    ap.add_argument("--no-face-check", action="store_true",
                    help="classify images even when no face is found (default: such a file is an error)")
    ap.add_argument("--keep-going", action="store_true",
                    help="exit 0 when some files failed, as long as one was classified (default: exit 1)")
    ap.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--quiet", action="store_true", help="no table on stdout")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.time()
    try:
        model = load_model(args.model, args.batch_size)
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"predict: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - MLflow raises its own types for unknown models/aliases
        print(f"predict: error: cannot load model {args.model}: {exc}", file=sys.stderr)
        return 2
    t_load = time.time() - t0
    files = collect_files(args.paths)
    t0 = time.time()
    rows = predict_files(model, files, args.face_crop, face_check=not args.no_face_check)
    t_pred = time.time() - t0
    n_ok = sum(1 for r in rows if not r["error"])
    face_crop = args.face_crop or model.face_crop
    for r in rows:
        if r["error"]:
            print(f"predict: {r['file']}: {r['error']}", file=sys.stderr)
        elif r["face"] == "not_found":
            print(f"predict: {r['file']}: no face found, classified the centre square", file=sys.stderr)
    meta = {"model": args.model, "face_crop": face_crop, "classes": list(model.classes), "n_files": len(rows),
            "n_predicted": n_ok, "n_failed": len(rows) - n_ok,
            "seconds": {"load_model": round(t_load, 3), "predict": round(t_pred, 3)}}  # fmt: skip
    write_outputs(rows, args.csv, args.json, meta)
    if not args.quiet:
        print(table(rows, model.classes))
    print(f"predict: {n_ok}/{len(rows)} file(s) classified (face crop: {face_crop}); "
          f"model load {t_load:.1f} s, {t_pred / max(len(rows), 1):.3f} s per file", file=sys.stderr)  # fmt: skip
    n_failed = len(rows) - n_ok
    if n_failed and not args.keep_going:
        print(f"predict: {n_failed} file(s) failed (exit 1; --keep-going exits 0 when some were classified)",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0 if n_ok else 1


if __name__ == "__main__":
    sys.exit(main())
