"""Image normalisation shared by ingest (training images) and serving (photos to predict):
optional Haar face crop, centre square, grayscale, bicubic resize. One module, so a served
photo is prepared exactly like the images the model was trained on.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from PIL import Image

from .config import IngestParams


class FaceCropper:
    """OpenCV's bundled frontal-face Haar cascade: largest face plus a margin.

    Safe to share between threads: an OpenCV ``CascadeClassifier`` keeps scratch state
    inside ``detectMultiScale``, and one instance called from 8 threads returned other
    threads' boxes (issue 25: 393 of 400 boxes changed). Each thread therefore loads its
    own cascade on first use (a few ms, once per thread).
    """

    def __init__(self, margin: float):
        import cv2

        self.cv2 = cv2
        self.xml = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        self._local = threading.local()
        self._local.cascade = self._load()  # a missing cascade fails here, not per request
        self.margin = margin

    def _load(self):
        cascade = self.cv2.CascadeClassifier(str(self.xml))
        if cascade.empty():
            raise RuntimeError(f"cannot load the Haar cascade {self.xml}")
        return cascade

    @property
    def cascade(self):
        """This thread's own classifier."""
        if getattr(self._local, "cascade", None) is None:
            self._local.cascade = self._load()
        return self._local.cascade

    def box(self, gray: np.ndarray) -> tuple[int, int, int] | None:
        """(x0, y0, side) of a square around the largest face, or None when none is found."""
        h, w = gray.shape
        faces = self.cascade.detectMultiScale(
            gray, scaleFactor=1.1, minNeighbors=5, minSize=(max(24, w // 8), max(24, h // 8))
        )
        if len(faces) == 0:
            return None
        x, y, fw, fh = max(faces, key=lambda f: f[2] * f[3])
        side = min(int(max(fw, fh) * (1 + 2 * self.margin)), h, w)
        cx, cy = x + fw // 2, y + fh // 2
        x0 = int(np.clip(cx - side // 2, 0, w - side))
        y0 = int(np.clip(cy - side // 2, 0, h - side))
        return x0, y0, side


def center_square(arr: np.ndarray) -> np.ndarray:
    h, w = arr.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    return arr[y0 : y0 + s, x0 : x0 + s]


def normalise_image(im: Image.Image, p: IngestParams, cropper: FaceCropper | None):
    """-> (RGB image of image_size x image_size, face_found or None when not searched)."""
    # Palette TIFFs (23 in JAFFE) must go through 'L', never be read as palette indices.
    gray = np.asarray(im.convert("L"))
    pixels = gray if p.grayscale else np.asarray(im.convert("RGB"))
    face_found = None
    box = cropper.box(gray) if cropper is not None else None
    if cropper is not None:
        face_found = box is not None
    if box is not None:
        x0, y0, side = box
        crop = pixels[y0 : y0 + side, x0 : x0 + side]
    else:  # no face (counted in the report) or no detection asked: centre square
        crop = center_square(pixels)
    out = Image.fromarray(crop).resize((p.image_size, p.image_size), Image.BICUBIC)
    return out.convert("RGB"), face_found
