"""The cross-validation engine shared by the stages that evaluate on the split plan (train,
baselines): :func:`plan_folds` reads the plan and selects the folds, :class:`FoldRun`
resumes the finished ones, keeps each new result as it arrives, and at the end returns
all of them in plan order and removes results of folds no longer planned. Per-fold seeds
and the grouping digest live here too. How the folds in between get computed (one by one,
in worker processes, Prefect/Dask, or batched) is the stage's business.

    folds, full_plan = cv.plan_folds(plan_path, manifest, max_runs, max_folds)
    fr = cv.FoldRun.open(results_dir, folds, chash_of)
    for result in compute(fr.todo):
        fr.keep(result)          # saved at once: a killed run keeps it
    results = fr.close()         # plan order; stale files removed
"""

from __future__ import annotations

import dataclasses
import hashlib
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from .config import PROTOCOLS
from .foldio import FoldResult, finished_fold, fold_path, save_fold

PLAN_COLUMNS = ("protocol", "run", "fold", "image", "role")


def read_plan(path: Path | str) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: split plan not found (run the split stage first)")
    plan = pd.read_csv(path, dtype={"image": str, "protocol": str, "role": str})
    missing = set(PLAN_COLUMNS) - set(plan.columns)
    if missing:
        raise ValueError(f"{path}: split plan lacks column(s) {sorted(missing)}")
    return plan


def select_folds(plan: pd.DataFrame, max_runs: int = 0, max_folds: int = 0) -> pd.DataFrame:
    """The first ``max_runs`` runs / ``max_folds`` folds (0 = all)."""
    if max_runs:
        plan = plan[plan["run"] <= max_runs]
    if max_folds:
        plan = plan[plan["fold"] <= max_folds]
    return plan


def fold_indices(plan: pd.DataFrame, index_of: dict[str, int]) -> Iterator[tuple[str, int, int, dict[str, np.ndarray]]]:
    """Yield (protocol, run, fold, {role: manifest row indices}) in plan order."""
    for (protocol, run, fold), df in plan.groupby(["protocol", "run", "fold"], sort=False):
        roles = {r: np.array([index_of[i] for i in g["image"]], dtype=np.int64) for r, g in df.groupby("role")}
        missing = {"train", "val", "test"} - set(roles)
        if missing:
            raise ValueError(f"split plan {protocol} run {run} fold {fold} has no {sorted(missing)} images")
        yield str(protocol), int(run), int(fold), roles


def fold_seed(base: int, protocol: str, run: int, fold: int) -> int:
    """The train stage's seed of one fold (an int for torch)."""
    ss = np.random.SeedSequence([base, PROTOCOLS.index(protocol), run, fold])
    return int(ss.generate_state(1)[0])


def method_fold_seed(base: int, method: str, protocol: str, run: int, fold: int, extra: int = 0) -> np.random.SeedSequence:
    """An independent stream per (base, method, protocol, run, fold, extra) (the baselines')."""
    return np.random.SeedSequence([base, zlib.crc32(method.encode()), zlib.crc32(protocol.encode()), run, fold, extra])


def roles_digest(roles: dict[str, np.ndarray], paths) -> str:
    """Which images a fold puts in each role (image paths, sorted per role)."""
    import json

    paths = np.asarray(paths)
    blob = json.dumps({r: sorted(paths[idx].tolist()) for r, idx in sorted(roles.items())})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def fold_hashes(method_hash: str, folds, paths) -> dict[tuple[str, int, int], str]:
    """{(protocol, run, fold): hash of the method's config and the fold's images}: a fold result
    is resumed only for the very same train / val / test images (a new split plan recomputes it);
    the method's own hash goes into the result's ``extra.method_config_hash``."""
    from .foldio import config_hash

    return {(pr, r, f): config_hash({"method_config": method_hash, "fold_images": roles_digest(roles, paths)})
            for pr, r, f, roles in folds}  # fmt: skip


def grouping_digest(test_sets: Iterable[Iterable[str]]) -> str:
    """A run's partition of the images into test groups, whatever the groups' order or
    numbering: equal digests = the same split (split counts distinct ones, compare pairs on them)."""
    groups = sorted("\n".join(sorted(images)) for images in test_sets)
    return hashlib.sha256("\n\n".join(groups).encode()).hexdigest()[:16]


def split_finished(results_dir: Path, folds: Iterable, chash_of: Callable[..., str]):
    """-> (finished FoldResults, folds still to compute). ``chash_of(protocol, run, fold, roles)``
    is the config hash a finished fold must carry (anything else is recomputed)."""
    done, todo = [], []
    for protocol, run, fold, roles in folds:
        prev = finished_fold(results_dir, protocol, run, fold, chash_of(protocol, run, fold, roles))
        if prev is not None:
            done.append(prev)
        else:
            todo.append((protocol, run, fold, roles))
    return done, todo


def remove_stale(results_dir: Path, keep: Iterable[FoldResult]) -> int:
    """Delete fold files of folds no longer planned (e.g. an older plan with more runs):
    aggregate would read them. -> how many were removed."""
    wanted = {fold_path(results_dir, r.protocol, r.run, r.fold) for r in keep}
    stale = [f for f in Path(results_dir).glob("*/run*_fold*.json") if f not in wanted]
    for f in stale:
        f.unlink()
    return len(stale)


def plan_folds(plan_path: Path | str, manifest: pd.DataFrame, max_runs: int = 0,
               max_folds: int = 0) -> tuple[list[tuple[str, int, int, dict[str, np.ndarray]]], pd.DataFrame]:  # fmt: skip
    """-> (the selected folds in plan order as (protocol, run, fold, {role: manifest rows}),
    the whole plan). Names the problem when nothing is selected or the plan names images
    the manifest lacks."""
    full = read_plan(plan_path)
    plan = select_folds(full, max_runs, max_folds)
    if plan.empty:
        raise ValueError(f"{plan_path}: no folds selected (max_runs={max_runs}, max_folds={max_folds})")
    return list(fold_indices(plan, check_plan_matches(plan, manifest))), full


def check_plan_matches(plan: pd.DataFrame, manifest: pd.DataFrame) -> dict[str, int]:
    """-> {image path: manifest row}; a named error when the plan names images the manifest lacks."""
    index_of = {p: i for i, p in enumerate(manifest["path"])}
    unknown = sorted(set(plan["image"]) - set(index_of))
    if unknown:
        raise ValueError(f"split plan names {len(unknown)} image(s) not in the manifest, e.g. {unknown[:3]}: "
                         "rerun the split stage")  # fmt: skip
    return index_of


@dataclasses.dataclass
class FoldRun:
    """One stage's pass over its folds: which are finished (resumed), which are to do, and the
    results kept so far."""

    results_dir: Path
    folds: list
    done: list[FoldResult]
    todo: list
    n_new: int = 0

    @classmethod
    def open(cls, results_dir: Path | str, folds: list, chash_of: Callable[..., str]) -> FoldRun:
        """``chash_of(protocol, run, fold, roles)``: the config hash a finished fold must carry."""
        done, todo = split_finished(Path(results_dir), folds, chash_of)
        return cls(Path(results_dir), folds, done, todo)

    def keep(self, result: FoldResult, save: bool = True) -> None:
        """A newly computed fold (``save=False`` when the computing worker saved it already)."""
        if save:
            save_fold(self.results_dir, result)  # atomic: a killed run never leaves half a file
        self.done.append(result)
        self.n_new += 1

    def close(self) -> list[FoldResult]:
        """All results in plan order; result files of folds no longer planned are removed
        (aggregate would read them)."""
        order = {(pr, r, f): i for i, (pr, r, f, _) in enumerate(self.folds)}
        self.done.sort(key=lambda r: order[(r.protocol, r.run, r.fold)])
        remove_stale(self.results_dir, self.done)
        return self.done
