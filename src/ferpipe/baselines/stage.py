"""baselines stage: the wavelet baselines of Li & Lima (2021), on the same folds.

For every method in ``baselines.methods`` (the registry in ``ferpipe.baselines``): its
features of all images once, then its ``fit_folds`` over every (protocol, run, fold) of
the split plan not finished yet: fitted on the train groups, choices made on the
validation group, scored on the test group. Results go to
``<out>/<method>/<protocol>/runXX_foldYY.json`` (ferpipe.foldio format) as they finish;
folds already finished with the same config and the same fold images are skipped (resume).

    python -m ferpipe.baselines.stage --manifest artifacts/ingest/manifest.csv \\
        --plan artifacts/split/split_plan.csv --out artifacts/baselines --params params.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from .. import classes, config, cv, data
from ..config import ParamsError, load_section, register_section
from ..foldio import FoldResult, config_hash, group_by_run
from ..io import sha256_file, write_json, write_run_record
from ..pixels import load_gray
from . import METHODS, REGISTRY
from .base import FoldContext

log = logging.getLogger("ferpipe.baselines")


@dataclasses.dataclass
class CommonParams:
    """The ``baselines`` keys shared by all methods (each method's own settings are a
    nested section named after it, e.g. ``baselines.cso.iters``).

    methods: which registered baselines to run, in report order.
    seed: base seed; each (method, protocol, run, fold) gets its own random stream.
    max_runs / max_folds: 0 = all runs / folds of the plan (smaller values for CI).
    threads: torch / BLAS threads (results repeat bit-exactly for the same count).
    chunk: folds per batched optimiser run (speed and memory only: results do not depend on it).
    """

    methods: list[str] = dataclasses.field(default_factory=lambda: list(METHODS))
    seed: int = 2021
    max_runs: int = 0
    max_folds: int = 0
    threads: int = 2
    chunk: int = 50

    def check(self) -> None:
        unknown = [m for m in self.methods if m not in REGISTRY]
        if unknown or not self.methods:
            raise ParamsError(f"params.yaml: baselines.methods: expected a non-empty list of {list(METHODS)}, "
                              f"got {self.methods!r}")  # fmt: skip
        for key in ("threads", "chunk"):
            if getattr(self, key) < 1:
                raise ParamsError(f"params.yaml: baselines.{key}: expected a positive integer, got {getattr(self, key)!r}")
        for key in ("max_runs", "max_folds"):
            if getattr(self, key) < 0:
                raise ParamsError(f"params.yaml: baselines.{key}: expected an integer >= 0, got {getattr(self, key)!r}")

    def method_config(self, method: str) -> dict:
        """What one method's results depend on (its config hash ignores the other methods)."""
        return {"method": method, "seed": self.seed, "threads": self.threads,
                **dataclasses.asdict(getattr(self, method))}  # fmt: skip


# The section's schema: the common keys plus one nested section per registered method.
BaselinesParams = register_section("baselines")(dataclasses.make_dataclass(
    "BaselinesParams",
    [(name, mod.Params, dataclasses.field(default_factory=mod.Params)) for name, mod in REGISTRY.items()],
    bases=(CommonParams,),
))  # fmt: skip


# ---------------------------------------------------------------- helpers
def _run_stats(results: list[FoldResult]) -> dict:
    by_run = group_by_run(results)
    # OA of a run = accuracy on all its test images (sum of the fold matrices), as aggregate does
    oa = [100 * np.mean(np.concatenate([np.asarray(f.y_true) == np.asarray(f.y_pred) for f in fs]))
          for _, fs in sorted(by_run.items())]  # fmt: skip
    fit = [f.extra.get("selected", {}).get("train_accuracy") for f in results]
    fit = [v for v in fit if isinstance(v, int | float)]
    return {"oa_run_mean": round(float(np.mean(oa)), 3),
            "oa_run_std": round(float(np.std(oa, ddof=1)), 3) if len(oa) > 1 else 0.0,
            "oa_per_run": [round(float(v), 3) for v in oa],
            **({"train_accuracy_mean": round(float(np.mean(fit)), 4)} if fit else {})}  # fmt: skip


def _pad_rows(plan) -> int:
    """The largest train group of the whole plan (not the selection): row padding that
    does not change with max_runs / max_folds."""
    return int(plan[plan["role"] == "train"].groupby(["protocol", "run", "fold"]).size().max())


@dataclasses.dataclass
class RunInputs:
    """What every method of one stage run shares."""

    manifest_path: Path
    paths: np.ndarray  # image paths, manifest order
    y: np.ndarray  # class ids, manifest order
    classes: tuple[str, ...]
    folds: list  # (protocol, run, fold, roles), plan order
    pad_rows: int
    base_config: dict  # manifest hash, library versions, result format (+ classes)
    images: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)  # decoded lazily, per size
    load_s: float = 0.0


def check_size(method: str, n_images: int, p) -> None:
    """A method with a ``max_images`` setting (the swarm-trained networks) refuses larger data."""
    limit = getattr(getattr(p, method), "max_images", 0)
    if limit and n_images > limit:
        raise ValueError(f"baselines.{method}: {n_images:,} images, more than baselines.{method}.max_images = "
                         f"{limit:,}: this method was designed for hundreds of images and its cost grows with them; "
                         f"raise baselines.{method}.max_images (0 = no limit) or leave {method} out of "
                         "baselines.methods")  # fmt: skip


def run_method(method: str, run: RunInputs, out: Path, p) -> tuple[dict, dict]:
    """One registered method over the folds: resume, compute the rest, summarise.
    -> (its entry of baselines_summary.json, its entry of the run record)."""
    from tqdm import tqdm

    mod, mp = REGISTRY[method], getattr(p, method)
    mcfg = {**p.method_config(method), **run.base_config}
    mhash = config_hash(mcfg)
    chash = cv.fold_hashes(mhash, run.folds, run.paths)
    fr = cv.FoldRun.open(out / method, run.folds, lambda pr, r, f, _: chash[(pr, r, f)])
    todo = fr.todo
    t_method, feat_s, fit_s = time.perf_counter(), 0.0, {}
    if todo:
        if mp.image_size not in run.images:
            t0 = time.perf_counter()
            run.images[mp.image_size] = load_gray(list(run.paths), run.manifest_path.parent, mp.image_size)
            run.load_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        feats = mod.features_of(run.images[mp.image_size], mp)
        feat_s = time.perf_counter() - t0
        ctx = FoldContext(len(run.classes), run.pad_rows, p.chunk,
                          [cv.method_fold_seed(p.seed, method, pr, r, f) for pr, r, f, _ in todo])  # fmt: skip
        bar = tqdm(total=len(todo), desc=f"baselines: {method}", unit="fold", disable=None, mininterval=5)
        step = max(1, len(todo) // 10)  # a log line per ~10 % where tqdm is off (dvc repro, CI)
        for n_done, (i, prob, info, dt) in enumerate(mod.fit_folds(feats, run.y, todo, mp, ctx), start=1):
            protocol, run_no, fold, roles = todo[i]
            info["method_config_hash"] = mhash  # chash also covers the fold's images (resume safety)
            te = roles["test"]  # kept = saved at once: a killed run keeps every finished fold
            fr.keep(FoldResult(method, protocol, run_no, fold, chash[(protocol, run_no, fold)],
                               images=run.paths[te].tolist(), y_true=run.y[te].tolist(), y_pred=prob.argmax(1).tolist(),
                               probabilities=np.round(prob, 6).tolist(), extra=info, classes=run.classes,
                               seconds=round(dt, 4)))  # fmt: skip
            fit_s[protocol] = fit_s.get(protocol, 0.0) + dt
            bar.update()
            if bar.disable and (n_done % step == 0 or n_done == len(todo)):
                log.info("baselines: %s %d/%d folds (%.0f s)", method, n_done, len(todo), time.perf_counter() - t_method)
        bar.close()
    done = fr.close()
    protos = {}
    for proto in dict.fromkeys(r.protocol for r in done):
        rs = [r for r in done if r.protocol == proto]
        protos[proto] = {"n_folds": len(rs), "oa_fold_mean": round(100 * float(np.mean([r.accuracy for r in rs])), 3),
                         **_run_stats(rs)}  # fmt: skip
    entry = {"description": mod.describe(mp), "config_hash": mhash, "config": mcfg, "protocols": protos}
    record = {"n_computed": len(todo), "n_resumed": len(done) - len(todo), "features_s": round(feat_s, 3),
              "fit_s": {proto: round(v, 2) for proto, v in fit_s.items()},
              "wall_s": round(time.perf_counter() - t_method, 2)}  # fmt: skip
    return entry, record


def run_baselines(manifest_path: Path, plan_path: Path, out: Path, p) -> dict:
    import torch
    from threadpoolctl import threadpool_limits

    t_start = time.perf_counter()
    manifest = data.read_manifest(manifest_path)
    run_classes = classes.read(manifest_path)  # the run's class list; unknown labels are a named error below
    folds, full_plan = cv.plan_folds(plan_path, manifest, p.max_runs, p.max_folds)
    # result_format 3: nested per-method params, batched optimisers
    base = {"manifest_sha256": sha256_file(manifest_path), "numpy": np.__version__,
            "pywt": __import__("pywt").__version__, "torch": torch.__version__, "result_format": 3,
            **({} if classes.matches_paper(run_classes) else {"classes": list(run_classes)})}  # fmt: skip
    run = RunInputs(manifest_path, manifest["path"].to_numpy(),
                    classes.label_ids(manifest["label"], run_classes, str(manifest_path)), run_classes, folds,
                    _pad_rows(full_plan), base)  # fmt: skip
    for method in p.methods:  # before any work: a refusal leaves nothing half done
        check_size(method, len(run.paths), p)
    summary: dict = {"methods": {}, "n_folds_per_method": len(folds), "threads": p.threads}
    record: dict = {"stage": "baselines", "methods": {}}  # run facts: wall times, counts (run.json)
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(p.threads)
    try:
        with threadpool_limits(limits=p.threads):
            for method in p.methods:
                summary["methods"][method], record["methods"][method] = run_method(method, run, out, p)
    finally:
        torch.set_num_threads(torch_threads)
    record["load_images_s"] = round(run.load_s, 3)
    record["total_s"] = round(time.perf_counter() - t_start, 2)
    write_json(out / "baselines_summary.json", summary)
    write_run_record(out, record)
    return {**summary, "run": record}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ferpipe.baselines.stage", description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)  # fmt: skip
    ap.add_argument("--manifest", type=Path, default=config.MANIFEST,
                    help=f"manifest.csv from the ingest stage (default {config.MANIFEST})")  # fmt: skip
    ap.add_argument("--plan", type=Path, default=config.SPLIT_PLAN,
                    help=f"split_plan.csv from the split stage (default {config.SPLIT_PLAN})")  # fmt: skip
    ap.add_argument("--out", type=Path, default=config.BASELINES_DIR,
                    help=f"output folder: <out>/<method>/<protocol>/runXX_foldYY.json and "
                         f"baselines_summary.json (default {config.BASELINES_DIR})")  # fmt: skip
    ap.add_argument("--params", type=Path, nargs="+", default=[config.PARAMS_FILE],
                    help="params file(s) with an optional 'baselines' section (missing -> defaults); "
                         "later files override keys of earlier ones")  # fmt: skip
    ap.add_argument("--mlflow", action="store_true",
                    help="log the folds under a parent run of their own (in the DAG the aggregate stage logs them "
                    "under the pipeline's parent instead)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        p = load_section("baselines", args.params)
        summary = run_baselines(args.manifest, args.plan, args.out, p)
    except (ParamsError, FileNotFoundError, ValueError) as exc:
        print(f"baselines: error: {exc}", file=sys.stderr)
        return 2
    run = summary["run"]
    brief = {m: {"computed": run["methods"][m]["n_computed"], "resumed": run["methods"][m]["n_resumed"],
                 "wall_s": run["methods"][m]["wall_s"],
                 "oa": {pr: f"{v['oa_run_mean']:.2f} ± {v['oa_run_std']:.2f}" for pr, v in s["protocols"].items()}}
             for m, s in summary["methods"].items()}  # fmt: skip
    print(json.dumps({"baselines": brief, "total_s": run["total_s"]}))
    if args.mlflow:
        log_to_mlflow(args.out, p)
    return 0


def log_to_mlflow(out: Path, p) -> None:
    """One MLflow child run per baseline fold, under the pipeline's parent run."""
    from .. import tracking
    from ..foldio import load_results

    t0 = time.time()
    with tracking.stage_status(None, "baselines") as status:
        parent = tracking.parent_run_id() or tracking.start_parent({"baselines": dataclasses.asdict(p)}, name="baselines")
        status.parent_id = parent
        folds = [r for m in p.methods for proto in config.PROTOCOLS for r in load_results(out / m, proto)]
        n = tracking.log_fold_runs(parent, folds, {"baselines": dataclasses.asdict(p)})
    log.info("baselines: logged %d fold runs to MLflow parent %s in %.1f s", n, parent, time.time() - t0)


if __name__ == "__main__":
    sys.exit(main())
