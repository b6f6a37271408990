"""Every module a DVC stage runs is one of its deps: editing it must rerun the stage."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.exists():
            return cand
    return None


def local_imports(path: Path) -> set[str]:
    """ferpipe modules imported anywhere in ``path`` (lazy imports inside functions included)."""
    # the package a relative import starts from: a module's own package; for __init__.py, the
    # package it initialises (both are the dotted path minus its last part)
    pkg = ".".join(path.relative_to(SRC).with_suffix("").parts).rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("ferpipe")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("ferpipe"):
                continue
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names if module_file(f"{mod}.{a.name}")}
    return {m for m in found if module_file(m)}


def closure(module: str) -> set[Path]:
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        f = module_file(m)
        if f is None or f in seen:
            continue
        seen.add(f)
        todo += sorted(local_imports(f))
        parts = m.split(".")
        for i in range(2, len(parts)):  # a package's __init__ runs before its modules
            todo.append(".".join(parts[:i]))
    return seen


def test_every_stage_lists_the_modules_it_runs():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    missing = {}
    for name, stage in stages.items():
        m = re.search(r"python -m (\S+)", stage["cmd"])
        if not m:
            continue
        deps = [ROOT / (d if isinstance(d, str) else next(iter(d))) for d in stage.get("deps", [])]
        needed = closure(m.group(1))
        for d in deps:  # a package folder in the deps: every module in it may run (e.g. a registry)
            if d.is_dir() and SRC in d.parents:
                for f in d.rglob("*.py"):
                    needed |= closure(".".join(f.relative_to(SRC).with_suffix("").parts))
        absent = sorted(str(f.relative_to(ROOT)) for f in needed
                        if f.name != "__init__.py" or f.parent != SRC / "ferpipe"
                        if not any(f == d or d in f.parents for d in deps))  # fmt: skip
        if absent:
            missing[name] = absent
    assert not missing, f"dvc.yaml stages miss modules they run: {missing}"


def test_closure_sees_lazy_and_relative_imports():
    files = {f.name for f in closure("ferpipe.final_model")}
    assert {"final_model.py", "heads.py", "features.py", "serving.py"} <= files


def stage_modules() -> set[str]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {m.group(1) for s in stages.values() if (m := re.search(r"python -m (\S+)", s["cmd"]))}


def test_no_stage_imports_another_stage():
    stages = stage_modules()
    offenders = {}
    for mod in sorted(stages):
        for f in closure(mod) - {module_file(mod)}:  # everything it pulls in, however indirectly
            name = ".".join(f.relative_to(SRC).with_suffix("").parts)
            if name in stages:
                offenders.setdefault(mod, []).append(name)
    assert not offenders, f"stage modules import other stages (move what they share into a library module): {offenders}"


def test_no_import_loop_between_the_package_and_pipeline():
    # train hands its compute function to pipeline.fanout (optional fan-out); pipeline must
    # not import a stage back, or the two would form a loop
    stages = stage_modules()
    for f in (ROOT / "pipeline").glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        assert not imported & stages, f"{f.name} imports stage module(s) {sorted(imported & stages)}"
