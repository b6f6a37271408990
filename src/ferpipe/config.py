"""Single source of truth: the class list, default paths and the params schema.

Every stage reads its knobs through :func:`load_params`, which checks each section
against the dataclasses below, so a typo or a wrong type in ``params.yaml`` fails
with the exact key instead of surfacing later as a strange result.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

# Paper label order (alphabetical); index i is class id i everywhere.
CLASSES: tuple[str, ...] = ("anger", "disgust", "fear", "happy", "neutral", "sadness", "surprise")
CLASS_TO_ID = {c: i for i, c in enumerate(CLASSES)}
PROTOCOLS = ("stratified", "subject")

# Default locations, relative to the repository root (DVC runs stages from there).
PARAMS_FILE = Path("params.yaml")
RAW_DATA = Path("data/jaffe")
INGEST_DIR = Path("artifacts/ingest")
MANIFEST = INGEST_DIR / "manifest.csv"
VALIDATE_DIR = Path("artifacts/validate")
SPLIT_DIR = Path("artifacts/split")
SPLIT_PLAN = SPLIT_DIR / "split_plan.csv"
WEIGHTS_FILE = Path("models/resnet50_imagenet.safetensors")
TRAIN_DIR = Path("artifacts/train")
BASELINES_DIR = Path("artifacts/baselines")
AGGREGATE_DIR = Path("artifacts/aggregate")
COMPARE_DIR = Path("artifacts/compare")
REPORT_DIR = Path("artifacts/report")
METRICS_DIR = Path("metrics")


class ParamsError(ValueError):
    """A params.yaml value is missing, unknown or of the wrong type."""


def bad_value(section: str, obj: Any, key: str, why: str) -> typing.NoReturn:
    """Raise the error that names ``section.key``, what was expected and what was given."""
    raise ParamsError(f"params.yaml: {section}.{key}: {why}, got {getattr(obj, key)!r}")


@dataclasses.dataclass
class DataParams:
    dataset: str = "data/jaffe"  # raw dataset folder or CSV/manifest file
    layout: str = "auto"  # auto|jaffe|ckplus|ckplus_folders|kdef|fer2013|folders|csv
    # the run's class list (ferpipe.classes): paper (CLASSES below) | auto (what ingest finds) | [names]
    classes: Any = "paper"

    def check(self):
        from .classes import check_setting

        check_setting(self.classes)


@dataclasses.dataclass
class IngestParams:
    image_size: int = 224
    face_crop: str = "none"  # none|haar
    face_margin: float = 0.2
    grayscale: bool = True  # gray replicated to 3 channels (JAFFE is gray anyway)
    drop_unknown_labels: bool = True  # e.g. contempt; False makes them an error
    kdef_views: list[str] = dataclasses.field(default_factory=lambda: ["S"])
    max_images: int = 0  # 0 = all; small values make quick experiments


@dataclasses.dataclass
class ValidateParams:
    require_subject: bool = True
    fail_on_duplicates: bool = False  # same file twice with the same label: warn only


@dataclasses.dataclass
class SplitParams:
    protocols: list[str] = dataclasses.field(default_factory=lambda: list(PROTOCOLS))
    n_runs: int = 10
    n_groups: int = 10
    seed: int = 2021


def _check_value(section: str, key: str, value: Any, typ: Any) -> Any:
    where = f"params.yaml: {section}.{key}"
    if dataclasses.is_dataclass(typ):  # a nested section, e.g. baselines.cso
        return parse_section(f"{section}.{key}", value, typ)
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None:
            return None
        return _check_value(section, key, value, args[0])
    if origin is list:
        (inner,) = typing.get_args(typ)
        if not isinstance(value, list):
            raise ParamsError(f"{where}: expected a list, got {value!r}")
        return [_check_value(section, f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{where}: expected a mapping, got {value!r}")
        return value
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is bool and not isinstance(value, bool):
        raise ParamsError(f"{where}: expected true/false, got {value!r}")
    if typ in (int, float) and isinstance(value, bool):
        raise ParamsError(f"{where}: expected {typ.__name__}, got {value!r}")
    if typ in (int, float, str) and not isinstance(value, typ):
        raise ParamsError(f"{where}: expected {typ.__name__}, got {value!r}")
    return value


def parse_section(section: str, raw: dict[str, Any] | None, cls: type):
    """Build dataclass ``cls`` from ``raw``, rejecting unknown keys and wrong types."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: section '{section}' must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ParamsError(
            f"params.yaml: unknown key(s) in '{section}': {', '.join(unknown)} "
            f"(allowed: {', '.join(sorted(names))})"
        )
    values = {k: _check_value(section, k, v, hints[k]) for k, v in raw.items()}
    obj = cls(**values)
    check = getattr(obj, "check", None)
    if check:
        check()
    return obj


SECTIONS: dict[str, type] = {
    "data": DataParams,
    "ingest": IngestParams,
    "validate": ValidateParams,
    "split": SplitParams,
}


def register_section(name: str):
    """Class decorator: stage modules add their own params section to the schema."""

    def deco(cls):
        SECTIONS[name] = cls
        return cls

    return deco


def read_params_file(path: Path | str = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections")
    return raw


def read_params_files(paths) -> dict[str, Any]:
    """Merge params files in order; a later file (a profile) overrides keys of a section
    (nested sections key by key)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    merged: dict[str, Any] = {}
    for path in paths:
        for section, values in read_params_file(path).items():
            if isinstance(values, dict) and isinstance(merged.get(section), dict):
                merged[section] = _merge(merged[section], values, SECTIONS.get(section))
            else:
                merged[section] = values
    return merged


def _merge(base: dict[str, Any], override: dict[str, Any], cls: type | None) -> dict[str, Any]:
    """``override``'s keys on top of ``base``'s. A nested section of the schema (a dataclass
    field, e.g. baselines.cso) merges key by key, so a profile can set baselines.cso.iters
    alone; any other value, a free-form mapping such as gate.tolerances included, replaces."""
    hints = typing.get_type_hints(cls) if cls is not None and dataclasses.is_dataclass(cls) else {}
    out = dict(base)
    for key, value in override.items():
        sub = hints.get(key)
        nested = sub is not None and dataclasses.is_dataclass(sub)
        out[key] = _merge(out[key], value, sub) if nested and isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_section(name: str, path=PARAMS_FILE):
    """Load one section of the params file(s) as its typed dataclass."""
    raw = read_params_files(path)
    return parse_section(name, raw.get(name), SECTIONS[name])


def as_dict(obj) -> dict[str, Any]:
    return dataclasses.asdict(obj)
