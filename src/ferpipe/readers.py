"""Dataset readers: each maps a layout on disk to records with a canonical label.

A record knows where its pixels come from (a file, or a row of the FER2013 CSV), its
raw label (before normalisation) and, where the layout encodes one, the subject id.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .config import CLASSES

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".pgm", ".ppm"}

# Synonyms seen across public FER sets; anything not here (e.g. contempt) is "unknown".
LABEL_SYNONYMS: dict[str, str] = {
    **{c: c for c in CLASSES},
    "angry": "anger", "an": "anger", "mad": "anger",
    "disgusted": "disgust", "di": "disgust",
    "afraid": "fear", "fearful": "fear", "scared": "fear", "fe": "fear", "af": "fear",
    "happiness": "happy", "joy": "happy", "ha": "happy",
    "neutrality": "neutral", "ne": "neutral",
    "sad": "sadness", "sa": "sadness",
    "surprised": "surprise", "su": "surprise",
}  # fmt: skip

JAFFE_RE = re.compile(r"^(?P<subject>[A-Z]{2})\.(?P<expr>[A-Z]{2})\d+\.\d+\.tiff?$", re.I)
KDEF_RE = re.compile(
    r"^(?P<session>[AB])(?P<sex>[FM])(?P<id>\d{2})(?P<expr>AF|AN|DI|HA|NE|SA|SU)"
    r"(?P<view>FL|FR|HL|HR|S)\.(jpe?g|png)$",
    re.I,
)
CKPLUS_RE = re.compile(r"^(?P<subject>S\d{3})_(?P<seq>\d{3})_(?P<frame>\d{8})", re.I)
# CK+ Emotion/*.txt codes (Lucey et al. 2010).
CKPLUS_CODES = {0: "neutral", 1: "anger", 2: "contempt", 3: "disgust",
                4: "fear", 5: "happy", 6: "sadness", 7: "surprise"}  # fmt: skip
# FER2013 'emotion' column codes.
FER2013_CODES = {0: "anger", 1: "disgust", 2: "fear", 3: "happy",
                 4: "sadness", 5: "surprise", 6: "neutral"}  # fmt: skip

LAYOUTS = ("jaffe", "ckplus", "ckplus_folders", "kdef", "fer2013", "folders", "csv")


class DatasetError(ValueError):
    """The dataset cannot be read as asked (names the file/row and what was expected)."""


def normalize_label(raw: str) -> str | None:
    """Canonical class name: a known synonym's class (one of the paper's 7), else the label
    itself in lower case (e.g. 'contempt'; which labels a run keeps is ``data.classes``).
    None for an empty label."""
    key = str(raw).strip().lower()
    return LABEL_SYNONYMS.get(key, key or None)


@dataclass
class Record:
    source: str  # file path, or 'file.csv#row=N' for pixels stored in a CSV
    raw_label: str
    subject: str | None
    loader: Callable[[], Image.Image]
    hasher: Callable[[], str]

    @property
    def label(self) -> str | None:
        return normalize_label(self.raw_label)


def _file_record(path: Path, raw_label: str, subject: str | None) -> Record:
    def load() -> Image.Image:
        return open_image(path)

    def digest() -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    return Record(str(path), raw_label, subject, load, digest)


def open_image(path: Path) -> Image.Image:
    """Open and fully decode an image, with a specific error for each failure kind."""
    if not path.exists():
        raise DatasetError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: zero-byte file (expected an image)")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except Exception as exc:  # PIL raises many types for broken files
        raise DatasetError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from exc


def _image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def read_jaffe(root: Path) -> list[Record]:
    recs = []
    for p in _image_files(root):
        m = JAFFE_RE.match(p.name)
        if not m:
            raise DatasetError(f"{p}: not a JAFFE file name (expected e.g. KA.AN1.39.tiff)")
        recs.append(_file_record(p, m["expr"], m["subject"].upper()))
    return recs


def read_kdef(root: Path, views: list[str]) -> list[Record]:
    wanted = {v.upper() for v in views}
    recs = []
    for p in _image_files(root):
        m = KDEF_RE.match(p.name)
        if not m:
            raise DatasetError(f"{p}: not a KDEF file name (expected e.g. AF01ANS.JPG)")
        if m["view"].upper() in wanted:
            recs.append(_file_record(p, m["expr"], f"{m['sex']}{m['id']}".upper()))
    return recs


def read_ckplus(root: Path) -> list[Record]:
    """Official CK+: cohn-kanade-images/S###/###/*.png + Emotion/S###/###/*_emotion.txt."""
    emo_root = next((d for d in (root / "Emotion", root / "Emotion_labels") if d.is_dir()), None)
    if emo_root is None:
        raise DatasetError(f"{root}: CK+ layout needs an 'Emotion' folder of *_emotion.txt files")
    images = {p.stem: p for p in _image_files(root)}
    recs = []
    for txt in sorted(emo_root.rglob("*_emotion.txt")):
        stem = txt.name[: -len("_emotion.txt")]
        try:
            code = int(float(txt.read_text().split()[0]))
        except (ValueError, IndexError) as exc:
            raise DatasetError(f"{txt}: expected one emotion code 0-7") from exc
        if code not in CKPLUS_CODES:
            raise DatasetError(f"{txt}: emotion code {code} is not in 0-7")
        if stem not in images:
            raise DatasetError(f"{txt}: no image named {stem}.png for this label")
        m = CKPLUS_RE.match(stem)
        recs.append(_file_record(images[stem], CKPLUS_CODES[code], m["subject"] if m else None))
    if not recs:
        raise DatasetError(f"{emo_root}: no *_emotion.txt label files found")
    return recs


def read_folders(root: Path, subject_pattern: re.Pattern | None = None) -> list[Record]:
    """Generic tree: the label is the image's parent folder name (train/angry/x.png works)."""
    recs = []
    for p in _image_files(root):
        subject = None
        if subject_pattern is not None:
            m = subject_pattern.match(p.name)
            if not m:
                raise DatasetError(f"{p}: file name carries no subject id (expected S###_...)")
            subject = m["subject"].upper()
        recs.append(_file_record(p, p.parent.name, subject))
    return recs


def read_csv_manifest(csv_path: Path) -> list[Record]:
    """CSV with columns path,label[,subject]; paths are relative to the CSV's folder."""
    recs = []
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"path", "label"} - set(reader.fieldnames or [])
        if missing:
            raise DatasetError(f"{csv_path}: missing column(s) {sorted(missing)}; "
                               "expected path,label[,subject]")  # fmt: skip
        for i, row in enumerate(reader, start=2):  # row 1 is the header
            if not row["path"]:
                raise DatasetError(f"{csv_path}: row {i}: empty path")
            subject = (row.get("subject") or "").strip() or None
            recs.append(_file_record(csv_path.parent / row["path"], row["label"], subject))
    return recs


def read_fer2013_csv(csv_path: Path) -> list[Record]:
    """The Kaggle FER2013 CSV: emotion (0-6), pixels (48*48 space-separated), [Usage]."""
    recs = []
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not {"emotion", "pixels"} <= set(reader.fieldnames or []):
            raise DatasetError(f"{csv_path}: FER2013 CSV needs columns emotion,pixels")
        for i, row in enumerate(reader, start=2):
            pixels = row["pixels"]
            try:
                code = int(row["emotion"])
                arr = np.array(pixels.split(), dtype=np.uint8)
            except ValueError as exc:
                raise DatasetError(f"{csv_path}: row {i}: bad emotion/pixels ({exc})") from exc
            side = int(round(len(arr) ** 0.5))
            if side * side != len(arr) or side == 0:
                raise DatasetError(f"{csv_path}: row {i}: {len(arr)} pixels is not a square image")
            if code not in FER2013_CODES:
                raise DatasetError(f"{csv_path}: row {i}: emotion code {code} is not in 0-6")

            def load(a=arr, s=side) -> Image.Image:
                return Image.fromarray(a.reshape(s, s), mode="L")

            def digest(px=pixels) -> str:
                return hashlib.sha256(px.encode()).hexdigest()

            recs.append(Record(f"{csv_path}#row={i}", FER2013_CODES[code], None, load, digest))
    return recs


def detect_layout(path: Path) -> str:
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DatasetError(f"{path}: a dataset file must be a .csv (manifest or FER2013)")
        with open(path, newline="") as fh:
            header = set(next(csv.reader(fh), []))
        if "pixels" in header:
            return "fer2013"
        if "path" in header:
            return "csv"
        raise DatasetError(f"{path}: CSV header {sorted(header)} is neither path,label[,subject] "
                           "nor FER2013 emotion,pixels")  # fmt: skip
    if (path / "Emotion").is_dir() or (path / "Emotion_labels").is_dir():
        return "ckplus"
    files = _image_files(path)
    if not files:
        raise DatasetError(f"{path}: no image files found (looked for {sorted(IMAGE_EXTS)})")
    if all(JAFFE_RE.match(p.name) for p in files):
        return "jaffe"
    if all(KDEF_RE.match(p.name) for p in files):
        return "kdef"
    if all(CKPLUS_RE.match(p.name) for p in files):
        return "ckplus_folders"
    return "folders"


def read_dataset(path: Path | str, layout: str = "auto", kdef_views=("S",)) -> tuple[str, list[Record]]:
    """Read any supported layout; returns (layout used, records)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: dataset folder or file not found")
    if path.is_dir() and not any(path.iterdir()):
        raise DatasetError(f"{path}: dataset folder is empty")
    if layout == "auto":
        layout = detect_layout(path)
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown layout '{layout}' (expected auto or one of {LAYOUTS})")
    readers = {
        "jaffe": lambda: read_jaffe(path),
        "kdef": lambda: read_kdef(path, list(kdef_views)),
        "ckplus": lambda: read_ckplus(path),
        "ckplus_folders": lambda: read_folders(path, CKPLUS_RE),
        "folders": lambda: read_folders(path),
        "csv": lambda: read_csv_manifest(path),
        "fer2013": lambda: read_fer2013_csv(path) if path.is_file() else read_folders(path),
    }
    recs = readers[layout]()
    if not recs:
        raise DatasetError(f"{path}: no images found for layout '{layout}'")
    return layout, recs
