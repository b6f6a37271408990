"""The final model at inference time: one torch module, the ingest preprocessing, a pyfunc.

``FerNet`` is the whole classifier as a plain forward pass: ImageNet normalisation ->
ResNet-50 backbone (tapped, pooled features: ``ferpipe.features``) -> one ``nn.Linear`` (for the frozen mode the
feature standardisation, the row-space projection and the logistic-regression weights
are folded into it) -> softmax, averaged with the horizontally flipped image as the
folds were tested. A saved model is a folder with ``model.safetensors`` (the state dict)
and ``model.json`` (classes, image size, preprocessing, face-crop setting).

``FerPredictor`` turns image file bytes (JPEG/PNG/TIFF/..., gray or colour) into class
probabilities with the same steps as the ingest stage (gray -> 3 channels, optional Haar
face crop via ``imaging.FaceCropper``, centre square, bicubic resize). Before a label is
given, the image must pass the checks a front door owes its users: decodable, at least
``MIN_SIDE`` px on its short side, at most ``max_pixels`` pixels, and (``face_check``, on by
default) a face found by the ingest stage's detector. An image that fails gets a row with
an ``error`` reason and no label; the others in the batch still run. One predictor serves
many threads at once: the model is read-only in eval mode and the face detector keeps one
cascade per thread (``imaging.FaceCropper``).

MLflow: this module is the pyfunc ``loader_module`` (``_load_pyfunc``), so a logged model
needs no pickle. Input: a DataFrame with column ``image`` holding base64-encoded file
bytes; output: a DataFrame with ``label``, one probability column per class, ``face``
(found | not_found | not_searched) and ``error`` (empty when the row was predicted).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import CLASSES
from .features import GAP_TAPS, tap_dim, tap_features
from .model import IMAGENET_MEAN, IMAGENET_STD, build_resnet50

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "model.json"
OOD_FILE = "ood.safetensors"  # the out-of-distribution reference (ferpipe.ood); its threshold is in model.json
FORMAT_VERSION = 1
FACE_CROPS = ("none", "haar")
TTA_MODES = ("prob", "logit", "none")  # frozen folds averaged probabilities, finetune logits
MIN_SIDE = 32  # px: the Haar detector's smallest window is 24 px; below 32 no face can be checked
MAX_PIXELS = 40_000_000  # per image: a 40 MP photo decodes to 120 MB of RGB; larger is refused, not decoded
FACE_CHECK = True  # serving and predict refuse an image without a face unless told otherwise
NO_FACE = "no face found (send face_check=false to classify the whole image anyway)"


class ImageRejected(ValueError):
    """One input image cannot be classified (the reason becomes its error row)."""


class Stopped(RuntimeError):
    """The caller asked to stop (deadline passed, client gone) before every image was done."""


def output_columns(classes: Sequence[str]) -> list[str]:
    """The prediction table's columns for a model of these classes (model.json 'classes')."""
    return ["label", *classes, "face", "ood_distance", "out_of_distribution", "error"]


OUTPUT_COLUMNS = output_columns(CLASSES)  # for a model of the paper's seven classes


class FerNet(nn.Module):
    """RGB images in [0, 1], shape (N, 3, H, W) -> class probabilities (N, n_classes).

    ``taps``: the backbone features the head reads (``ferpipe.features``: ``layer4:1`` is the
    paper's global average; ``layer2:3`` a 3 x 3 grid over layer2), as the folds computed them.
    """

    def __init__(self, n_classes: int = len(CLASSES), stride_layout: str = "v1", flip_tta: str = "prob",
                 taps=GAP_TAPS):  # fmt: skip
        super().__init__()
        if flip_tta not in TTA_MODES:
            raise ValueError(f"flip_tta must be one of {TTA_MODES}, got {flip_tta!r}")
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.backbone = build_resnet50(1000, stride_layout)
        self.backbone.fc = nn.Identity()
        self.taps = list(taps)
        self.head = nn.Linear(sum(tap_dim(t) for t in self.taps), n_classes)
        self.flip_tta = flip_tta

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised input -> the head's input features."""
        return tap_features(self.backbone, x, self.taps)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised input -> class logits."""
        return self.head(self.features(x))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.probabilities_and_features(images)[0]

    def probabilities_and_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class probabilities, pooled backbone features of the unflipped image) in one pass."""
        x = (images - self.mean) / self.std
        feats = self.features(x)
        logits = self.head(feats)
        if self.flip_tta == "none":
            return torch.softmax(logits, 1), feats
        flipped = self.logits(torch.flip(x, dims=[3]))
        if self.flip_tta == "logit":
            return torch.softmax((logits + flipped) / 2, 1), feats
        return (torch.softmax(logits, 1) + torch.softmax(flipped, 1)) / 2, feats


# ---------------------------------------------------------------- saving / loading
def save_model(net: FerNet, meta: dict[str, Any], out_dir: Path | str, ood_reference=None) -> dict[str, Any]:
    """Write model.safetensors + model.json (+ ood.safetensors) into ``out_dir`` (each atomically)."""
    from safetensors.numpy import save_file as save_numpy
    from safetensors.torch import save_file

    from .io import write_json, write_with

    out_dir = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    write_with(out_dir / MODEL_FILE, lambda p: save_file(state, str(p), metadata={"format": "ferpipe-fernet"}))
    if ood_reference is not None:
        write_with(out_dir / OOD_FILE, lambda p: save_numpy(ood_reference.tensors(), str(p)))
    meta = {"format_version": FORMAT_VERSION, "classes": list(CLASSES), **meta}  # meta names its classes
    write_json(out_dir / CONFIG_FILE, meta)
    return meta


def read_config(model_dir: Path | str) -> dict[str, Any]:
    path = Path(model_dir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: not a ferpipe model folder (run the final_model stage)")
    meta = json.loads(path.read_text())
    cls = meta.get("classes")
    if not isinstance(cls, list) or not cls or len(set(cls)) != len(cls):
        raise ValueError(f"{path}: 'classes' must be a list of distinct class names, got {cls!r}")
    return meta


def load_net(model_dir: Path | str) -> tuple[FerNet, dict[str, Any]]:
    from safetensors.torch import load_file

    meta = read_config(model_dir)
    net = FerNet(len(meta["classes"]), meta["stride_layout"], meta["flip_tta"], meta.get("taps", GAP_TAPS))
    net.load_state_dict(load_file(str(Path(model_dir) / MODEL_FILE)), strict=True)
    return net.eval(), meta


# ---------------------------------------------------------------- preprocessing
def decode_image(data: bytes, max_pixels: int = MAX_PIXELS):
    """File bytes -> a PIL image (first frame, EXIF orientation applied, 8-bit modes).

    The pixel count is checked from the header before anything is decoded, so a huge or
    forged image costs nothing; an image whose short side is below ``MIN_SIDE`` is refused.
    """
    from PIL import Image, ImageOps

    if not data:
        raise ImageRejected("empty image (0 bytes)")
    im = Image.open(io.BytesIO(data))
    w, h = im.size
    if w * h > max_pixels:
        raise ImageRejected(f"image of {w} x {h} = {w * h:,} pixels is over the limit of {max_pixels:,}")
    if min(w, h) < MIN_SIDE:
        raise ImageRejected(f"image of {w} x {h} px is smaller than {MIN_SIDE} px on its short side")
    im.load()  # decode now: a truncated or corrupt file fails here, with its name known
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        arr = np.asarray(im, dtype=np.float64)  # 16-bit / float scans: stretch to 0..255
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
        im = Image.fromarray(np.nan_to_num(arr).round().astype(np.uint8), mode="L")
    return im


def b64_to_bytes(value: Any) -> bytes:
    """A base64 string (or raw bytes) -> bytes; data URIs ('data:image/png;base64,...') work too.

    Strict: characters outside the base64 alphabet are an error, not silently dropped.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if not isinstance(value, str):
        raise ImageRejected(f"expected a base64 string, got {type(value).__name__}")
    s = value.strip()
    if s.startswith("data:") and "," in s:
        s = s.split(",", 1)[1]
    s = "".join(s.split())  # line breaks inside base64 are common and harmless
    if not s:
        raise ImageRejected("empty string: expected base64-encoded image file bytes")
    try:
        return base64.b64decode(s + "=" * (-len(s) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageRejected(f"not valid base64 ({exc})") from exc


class FerPredictor:
    """A loaded final model plus its preprocessing; safe to call from many threads at once."""

    def __init__(self, net: FerNet, meta: dict[str, Any], batch_size: int = 16, max_pixels: int = MAX_PIXELS):
        self.net = net.eval().to(memory_format=torch.channels_last)
        self.meta = meta
        self.classes = list(meta["classes"])  # the model's own class list (model.json)
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self._face_cropper = None
        self._lock = threading.Lock()
        self.ood_reference = None  # set by load() when the model folder has one
        self.ood_threshold = float((meta.get("ood") or {}).get("threshold", math.inf))

    @classmethod
    def load(cls, model_dir: Path | str, batch_size: int = 16, max_pixels: int = MAX_PIXELS) -> FerPredictor:
        net, meta = load_net(model_dir)
        pred = cls(net, meta, batch_size, max_pixels)
        ood_file = Path(model_dir) / OOD_FILE
        if ood_file.exists() and "ood" in meta:
            from safetensors.numpy import load_file

            from .ood import Reference

            pred.ood_reference = Reference.from_tensors(load_file(str(ood_file)))
        return pred

    @property
    def face_crop(self) -> str:
        return self.meta["preprocessing"]["face_crop"]

    def _cropper(self):
        """The one face detector (thread-safe itself: a cascade per thread inside)."""
        from .imaging import FaceCropper

        with self._lock:
            if self._face_cropper is None:
                self._face_cropper = FaceCropper(float(self.meta["preprocessing"]["face_margin"]))
            return self._face_cropper

    def preprocess(self, im, face_crop: str | None = None, face_check: bool = FACE_CHECK) -> tuple[np.ndarray, str]:
        """PIL image -> (uint8 array (3, S, S), face status), exactly as ingest + train load it.

        ``face_check``: look for a face with the ingest detector even when the model was
        trained without cropping, and refuse the image (``ImageRejected``) when none is found.
        """
        from PIL import Image

        from .config import IngestParams
        from .imaging import normalise_image

        pre = self.meta["preprocessing"]
        face_crop = face_crop or pre["face_crop"]
        if face_crop not in FACE_CROPS:
            raise ValueError(f"face_crop must be one of {FACE_CROPS}, got {face_crop!r}")
        ip = IngestParams(image_size=int(pre["ingest_image_size"]), face_crop=face_crop,
                          face_margin=float(pre["face_margin"]), grayscale=bool(pre["grayscale"]))  # fmt: skip
        if face_crop == "haar":
            img, found = normalise_image(im, ip, self._cropper())
        else:
            img, found = normalise_image(im, ip, None)
            if face_check:  # detection as a check only: the model saw uncropped images
                found = self._cropper().box(np.asarray(im.convert("L"))) is not None
        if face_check and found is False:
            raise ImageRejected(NO_FACE)
        size = int(self.meta["image_size"])
        if img.size != (size, size):  # as data.load_images_uint8 does when train.image_size differs
            img = img.resize((size, size), Image.BICUBIC)
        face = "not_searched" if found is None else ("found" if found else "not_found")
        return np.asarray(img.convert("RGB")).transpose(2, 0, 1).copy(), face

    @torch.no_grad()
    def probabilities(self, batch_u8: np.ndarray, should_stop=None) -> tuple[np.ndarray, np.ndarray]:
        """(class probabilities, OOD distances: NaN when the model has no reference)."""
        probs, dists = [], []
        for s in range(0, len(batch_u8), self.batch_size):
            if should_stop is not None and should_stop():
                raise Stopped(f"stopped after {s} of {len(batch_u8)} images")
            x = torch.from_numpy(batch_u8[s : s + self.batch_size]).float().div_(255)
            p, f = self.net.probabilities_and_features(x.contiguous(memory_format=torch.channels_last))
            probs.append(p.float().numpy())
            ref = self.ood_reference
            dists.append(ref.distance(f.float().numpy()) if ref is not None else np.full(len(p), math.nan))
        if not probs:
            return np.zeros((0, len(self.classes)), dtype=np.float32), np.zeros(0)
        return np.concatenate(probs), np.concatenate(dists)

    def predict_bytes(self, blobs: Sequence[bytes | Exception], face_crop: str | None = None,
                      face_check: bool = FACE_CHECK, should_stop=None) -> list[dict]:  # fmt: skip
        """One record per input: label, probabilities, face, error ('' when predicted).

        An entry may be an Exception already (e.g. a file that could not be read): it
        becomes an error row. ``should_stop()`` is polled between images and batches;
        when it turns true, ``Stopped`` is raised and nothing more is computed.
        """
        if face_crop is not None and face_crop not in FACE_CROPS:
            raise ValueError(f"face_crop must be one of {FACE_CROPS}, got {face_crop!r}")
        rows: list[dict] = [{}] * len(blobs)
        arrays, where = [], []
        for i, blob in enumerate(blobs):
            if should_stop is not None and should_stop():
                raise Stopped(f"stopped while preparing image {i + 1} of {len(blobs)}")
            try:
                if isinstance(blob, Exception):
                    raise blob
                arr, face = self.preprocess(decode_image(blob, self.max_pixels), face_crop, face_check)
            except Exception as exc:  # noqa: BLE001 - any undecodable input is that row's error
                rows[i] = error_row(exc, self.classes)
                continue
            rows[i] = {"face": face}
            arrays.append(arr)
            where.append(i)
        if arrays:
            probs, dists = self.probabilities(np.stack(arrays), should_stop)
            for i, p, d in zip(where, probs, dists, strict=True):
                cls = self.classes
                rows[i] = {"label": cls[int(np.argmax(p))], **{c: float(v) for c, v in zip(cls, p, strict=True)},
                           "face": rows[i]["face"], "ood_distance": None if math.isnan(d) else round(float(d), 6),
                           "out_of_distribution": None if math.isnan(d) else bool(d > self.ood_threshold),
                           "error": ""}  # fmt: skip
        return rows

    def predict_values(self, values: Sequence[Any], face_crop: str | None = None, face_check: bool = FACE_CHECK,
                       should_stop=None) -> list[dict]:  # fmt: skip
        """Base64 strings (or bytes) -> records; a value that is not base64 is its row's error."""
        blobs: list[bytes | Exception] = []
        for v in values:
            try:
                blobs.append(b64_to_bytes(v))
            except ValueError as exc:
                blobs.append(exc)
        return self.predict_bytes(blobs, face_crop, face_check, should_stop)

    def predict_frame(self, frame, face_crop: str | None = None, face_check: bool = FACE_CHECK):
        """DataFrame with column ``image`` (base64 strings or bytes) -> the output DataFrame."""

        if "image" not in getattr(frame, "columns", []):
            raise ValueError(f"model input must have a column 'image' (base64 file bytes); got {list(getattr(frame, 'columns', []))}")
        rows = self.predict_values(frame["image"].tolist(), face_crop, face_check)
        return to_frame(rows, self.classes)


def to_frame(rows: list[dict], classes: Sequence[str] = CLASSES):
    """Output DataFrame; with error rows the label/probability columns hold None (JSON null, not NaN)."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=output_columns(classes))
    if any(r.get("error") for r in rows):
        for col in ("label", *classes):
            frame[col] = pd.Series([None if r.get("error") else r[col] for r in rows], dtype=object)
    for col in ("ood_distance", "out_of_distribution"):  # None (no reference / error row) stays null
        if any(r.get(col) is None for r in rows):
            frame[col] = pd.Series([r.get(col) for r in rows], dtype=object)
    return frame


def error_row(exc: BaseException, classes: Sequence[str] = CLASSES) -> dict:
    text = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc))
    if type(exc).__name__ == "UnidentifiedImageError":
        text = "cannot identify image file (corrupt, or not an image format Pillow reads)"
    msg = text if isinstance(exc, ImageRejected) else f"{type(exc).__name__}: {text}".strip()
    return {"label": None, **{c: math.nan for c in classes}, "face": "", "ood_distance": None,
            "out_of_distribution": None, "error": msg[:500]}


def encode_files(paths: Iterable[Path | str]) -> list[str]:
    return [base64.b64encode(Path(p).read_bytes()).decode("ascii") for p in paths]


# ---------------------------------------------------------------- MLflow pyfunc flavour
class _PyfuncModel:
    """What ``mlflow.pyfunc.load_model`` wraps: ``predict(DataFrame, params) -> DataFrame``."""

    def __init__(self, predictor: FerPredictor):
        self.predictor = predictor

    def predict(self, model_input, params: dict[str, Any] | None = None):
        import pandas as pd

        if isinstance(model_input, dict):
            model_input = pd.DataFrame(model_input)
        elif isinstance(model_input, (list, tuple)):
            model_input = pd.DataFrame({"image": list(model_input)})
        params = params or {}
        face_check = params.get("face_check", FACE_CHECK)
        if isinstance(face_check, str):  # MLflow passes a declared boolean param through; be lenient with strings
            face_check = face_check.strip().lower() not in ("false", "0", "no")
        return self.predictor.predict_frame(model_input, params.get("face_crop") or None, bool(face_check))


def _load_pyfunc(data_path: str, model_config: dict | None = None) -> _PyfuncModel:
    """MLflow loader_module hook: ``data_path`` is the logged model folder."""
    batch = int((model_config or {}).get("batch_size", 16))
    return _PyfuncModel(FerPredictor.load(data_path, batch_size=batch))
