"""Atomic writes: a reader never sees a half-written output (temp file + rename)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: Path | str, suffix: str | None = None):
    """Yield a temp path in the same folder; rename it onto ``path`` on success only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=suffix or (path.suffix + ".tmp"), dir=path.parent
    )
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs should look like any file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def temp_dir_beside(out: Path | str) -> Path:
    """A new empty folder next to ``out`` (same file system, so a rename can swap it in)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; an output folder should look like any other
    return tmp


def swap_dir(tmp: Path | str, out: Path | str) -> None:
    """Put the finished folder ``tmp`` in place of ``out`` by renames (old one removed after)."""
    out = Path(out)
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


@contextmanager
def atomic_dir(out: Path | str):
    """Yield a temp folder; on success it replaces ``out``, on failure it is deleted and
    ``out`` stays as it was: a crash never leaves half an output folder."""
    tmp = temp_dir_beside(out)
    try:
        yield tmp
        swap_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: Path | str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_with(path: Path | str, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result into place atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


# A stage's run record: wall times, MLflow run ids, host and time of this invocation. It sits
# in the stage's output folder but `.dvcignore` keeps it out of DVC's hashes, so the results
# (and dvc.lock) stay byte-identical when a stage is rerun on the same inputs.
RUN_RECORD = "run.json"


def write_run_record(out_dir: Path | str, record: dict) -> None:
    import datetime as dt
    import platform

    stamp = {"finished_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "host": platform.node()}
    write_json(Path(out_dir) / RUN_RECORD, {**record, **stamp})


def read_run_record(out_dir: Path | str) -> dict:
    """The record of the invocation that wrote ``out_dir``; {} when there is none (e.g. pulled)."""
    path = Path(out_dir) / RUN_RECORD
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
