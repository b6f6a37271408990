"""baselines stage: the three wavelet baselines of Li & Lima (2021), on the same folds.

For every method in ``baselines.methods`` and every (protocol, run, fold) of the split
plan: features of all images once per method (cached in memory), then per fold the
scaler (and PCA) fit on the train groups, the hyper-parameter (hidden size / C) chosen
on the validation group, and the chosen model tested on the test group. Results go to
``<out>/<method>/<protocol>/runXX_foldYY.json`` (ferpipe.foldio format); folds already
finished with the same config and the same fold images are skipped (resume).

    python -m ferpipe.baselines.stage --manifest artifacts/ingest/manifest.csv \\
        --plan artifacts/split/split_plan.csv --out artifacts/baselines --params params.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from .. import classes, config, cv, runners
from ..config import ParamsError, load_section, register_section
from ..foldio import FoldResult, config_hash, save_fold
from ..io import sha256_file, write_json, write_run_record
from ..metrics import accuracy_and_log_loss
from . import DESCRIPTION, METHODS, features, slfn
from .optimizers import OPTIMIZERS

log = logging.getLogger("ferpipe.baselines")


@register_section("baselines")
@dataclasses.dataclass
class BaselinesParams:
    """The ``baselines`` section of params.yaml (every field optional).

    Common
      methods: which of hwt, cso, bbo to run.
      image_size: side the gray faces are resized to; a multiple of 2**levels of every
        selected method (64 -> 8x8 level-3 approximation).
      seed: base seed; each (method, protocol, run, fold, hidden size) gets its own stream.
      max_runs / max_folds: 0 = all runs / folds of the plan (smaller values for CI).
      threads: BLAS/OpenMP threads per process (results repeat bit-exactly for the same count).
      workers: folds computed at once in that many processes (each fold is seeded from its
        own key, so the results do not depend on the worker count).
    SLFN (cso and bbo)
      hidden_grid: hidden-layer sizes tried; the one with the best validation accuracy
        (ties: lower validation cross-entropy, then the smaller size) is tested.
      activation: tanh | sigmoid.  fitness: ce (softmax cross-entropy) | mse (softmax vs
        one-hot); the training error rate times error_weight is added.
      weight_bound: search box of each layer ±weight_bound/sqrt(fan_in).
    hwt (Evans 2017): Haar transform to hwt_levels; level approximation + the coarsest
      hwt_detail_levels detail levels; standardised; hwt_classifier (logreg = multinomial
      logistic regression, linsvm = linear SVM, both L2) with C from hwt_c_grid.
    cso (Wang et al. 2017): DWT (cso_wavelet, cso_levels, cso_coeffs approx|all) -> PCA
      (cso_pca_components, fit on train) -> standardise -> SLFN trained by cat swarm
      optimisation: cso_pop cats, cso_iters iterations, mixture ratio cso_mr, seeking
      memory pool cso_smp, seeking range cso_srd, dimension change ratio cso_cdc,
      self-position considering cso_spc, tracing c1 cso_c1, inertia cso_w, velocity limit
      cso_vmax (fraction of the box width).
    bbo (Li et al. 2020): stationary wavelet entropy (swe_wavelet, swe_levels, entropy
      swe_entropy histogram|energy with swe_bins bins, per block of a swe_grid x swe_grid
      grid; 1 = whole subbands as in the paper) -> standardise -> SLFN trained by
      bbo_optimizer (bbo = biogeography-based optimisation; jaya = the parent method's
      optimiser) with bbo_pop habitats for bbo_iters generations, bbo_elites elites,
      per-SIV mutation probability bbo_mutation_prob and Gaussian std bbo_mutation_scale
      (fraction of the box width).
    """

    methods: list[str] = dataclasses.field(default_factory=lambda: list(METHODS))
    image_size: int = 64
    seed: int = 2021
    max_runs: int = 0
    max_folds: int = 0
    threads: int = 1
    workers: int = 2
    # SLFN shared by cso and bbo
    hidden_grid: list[int] = dataclasses.field(default_factory=lambda: [10, 20])
    activation: str = "tanh"
    fitness: str = "ce"
    error_weight: float = 0.1
    weight_bound: float = 3.0
    # hwt
    hwt_levels: int = 3
    hwt_detail_levels: int = 1
    hwt_classifier: str = "logreg"
    hwt_c_grid: list[float] = dataclasses.field(default_factory=lambda: [0.01, 0.1, 1.0])
    # cso
    cso_wavelet: str = "db4"
    cso_levels: int = 3
    cso_coeffs: str = "approx"
    cso_pca_components: int = 20
    cso_pop: int = 20
    cso_iters: int = 300
    cso_mr: float = 0.8
    cso_smp: int = 5
    cso_srd: float = 0.2
    cso_cdc: float = 0.2
    cso_spc: bool = True
    cso_c1: float = 1.5
    cso_w: float = 0.5
    cso_vmax: float = 0.2
    # bbo
    swe_wavelet: str = "db4"
    swe_levels: int = 4
    swe_entropy: str = "energy"
    swe_bins: int = 32
    swe_grid: int = 1
    bbo_optimizer: str = "bbo"
    bbo_pop: int = 30
    bbo_iters: int = 300
    bbo_elites: int = 2
    bbo_mutation_prob: float = 0.02
    bbo_mutation_scale: float = 0.05

    def check(self) -> None:
        def bad(key, why):
            raise ParamsError(f"params.yaml: baselines.{key}: {why}, got {getattr(self, key)!r}")

        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            bad("methods", f"expected a non-empty list of {list(METHODS)}")
        choices = {"activation": slfn.ACTIVATIONS, "fitness": slfn.FITNESSES,
                   "hwt_classifier": ("logreg", "linsvm"), "cso_coeffs": ("approx", "all"),
                   "swe_entropy": ("histogram", "energy"), "bbo_optimizer": ("bbo", "jaya")}  # fmt: skip
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                bad(key, f"expected one of {list(allowed)}")
        for key in ("image_size", "threads", "workers", "hwt_levels", "cso_levels", "swe_levels", "cso_pca_components",
                    "cso_pop", "cso_smp", "bbo_pop", "swe_bins", "swe_grid"):  # fmt: skip
            if getattr(self, key) < 1:
                bad(key, "expected a positive integer")
        for key in ("max_runs", "max_folds", "cso_iters", "bbo_iters", "bbo_elites", "hwt_detail_levels"):
            if getattr(self, key) < 0:
                bad(key, "expected an integer >= 0")
        if not self.hidden_grid or any(h < 1 for h in self.hidden_grid):
            bad("hidden_grid", "expected a non-empty list of positive integers")
        if not self.hwt_c_grid or any(c <= 0 for c in self.hwt_c_grid):
            bad("hwt_c_grid", "expected a non-empty list of positive numbers")
        if self.bbo_pop < 2 or self.bbo_elites >= self.bbo_pop:
            bad("bbo_elites", "needs bbo_pop >= 2 and bbo_elites < bbo_pop")
        if self.hwt_detail_levels > self.hwt_levels:
            bad("hwt_detail_levels", f"must be <= hwt_levels ({self.hwt_levels})")
        for key in ("cso_mr", "cso_cdc", "bbo_mutation_prob"):
            if not 0 <= getattr(self, key) <= 1:
                bad(key, "expected a probability in [0, 1]")
        for key in ("weight_bound", "cso_vmax", "cso_srd"):
            if getattr(self, key) <= 0:
                bad(key, "expected a positive number")
        if self.error_weight < 0 or self.bbo_mutation_scale < 0:
            bad("error_weight" if self.error_weight < 0 else "bbo_mutation_scale", "expected >= 0")
        import pywt

        for key in ("cso_wavelet", "swe_wavelet"):
            if getattr(self, key) not in pywt.wavelist(kind="discrete"):
                bad(key, "expected a PyWavelets discrete wavelet name (e.g. haar, db4, sym4)")
        levels = {"hwt": ("hwt_levels", self.hwt_levels), "cso": ("cso_levels", self.cso_levels),
                  "bbo": ("swe_levels", self.swe_levels)}  # fmt: skip
        for m in self.methods:
            key, lev = levels[m]
            step = 2**lev
            if self.image_size % step:
                raise ParamsError(
                    f"params.yaml: baselines.image_size={self.image_size} must be divisible by "
                    f"2**{key}={step} for method {m} (a {lev}-level wavelet decomposition halves "
                    f"the side {lev} times); use e.g. {step * max(1, round(self.image_size / step))}"
                )
        if "bbo" in self.methods and self.image_size % self.swe_grid:
            bad("swe_grid", f"must divide image_size ({self.image_size})")

    # ---- the settings each method depends on (its config hash ignores the others)
    def method_config(self, method: str) -> dict:
        d = dataclasses.asdict(self)
        common = {k: d[k] for k in ("image_size", "seed", "threads")}
        net = {k: d[k] for k in ("hidden_grid", "activation", "fitness", "error_weight", "weight_bound")}
        own = {k: v for k, v in d.items() if k.startswith(f"{method}_")}
        if method == "bbo":
            own.update({k: v for k, v in d.items() if k.startswith("swe_")})
        return {"method": method, **common, **({} if method == "hwt" else net), **own}


# ---------------------------------------------------------------- helpers
def roles_digest(roles: dict[str, np.ndarray], paths: np.ndarray) -> str:
    blob = json.dumps({r: sorted(paths[idx].tolist()) for r, idx in sorted(roles.items())})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def compute_features(method: str, images: np.ndarray, p: BaselinesParams) -> np.ndarray:
    if method == "hwt":
        return features.haar_features(images, p.hwt_levels, p.hwt_detail_levels)
    if method == "cso":
        return features.dwt_coefficients(images, p.cso_wavelet, p.cso_levels, p.cso_coeffs)
    if method == "bbo":
        return features.swe_features(images, p.swe_wavelet, p.swe_levels, p.swe_entropy, p.swe_bins, p.swe_grid)
    raise ValueError(f"unknown method {method!r}")


# ---------------------------------------------------------------- per-fold models
def fit_hwt(feats, y, roles, p: BaselinesParams, seed: np.random.SeedSequence, n_classes: int):
    """Linear classifier on standardised Haar features; C chosen on val (linsvm: softmax of margins)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    tr, va, te = roles["train"], roles["val"], roles["test"]
    stats = features.fit_standardizer(feats[tr])
    xtr, xva, xte = (features.standardize(feats[i], stats) for i in (tr, va, te))
    rs = int(seed.generate_state(1)[0] % (2**31))
    best, curve = None, []
    for c in p.hwt_c_grid:
        if p.hwt_classifier == "logreg":
            model = LogisticRegression(C=c, max_iter=2000, random_state=rs).fit(xtr, y[tr])
            pv = model.predict_proba(xva)
        else:
            model = LinearSVC(C=c, max_iter=5000, random_state=rs).fit(xtr, y[tr])
            pv = slfn.softmax(model.decision_function(xva))
        full = np.zeros((len(va), n_classes))
        full[:, model.classes_] = pv
        acc, loss = accuracy_and_log_loss(full, y[va])
        curve.append({"C": c, "val_accuracy": acc, "val_loss": round(loss, 5)})
        if best is None or (acc, -loss) > (best[0], -best[1]):
            best = (acc, loss, c, model)
    acc, loss, c, model = best
    raw = model.predict_proba(xte) if p.hwt_classifier == "logreg" else slfn.softmax(model.decision_function(xte))
    prob = np.zeros((len(te), n_classes))
    prob[:, model.classes_] = raw
    info = {"selected": {"C": c, "val_accuracy": acc, "val_loss": round(loss, 5), "n_features": feats.shape[1]},
            "curves": {"grid": curve}}  # fmt: skip
    return prob, info


def fit_slfn(method: str, feats, y, roles, p: BaselinesParams, seeds: dict[int, np.random.SeedSequence],
             n_classes: int):
    tr, va, te = roles["train"], roles["val"], roles["test"]
    xtr, xva, xte = feats[tr], feats[va], feats[te]
    info_sel: dict = {}
    if method == "cso":
        pca = features.fit_pca(xtr.astype(np.float64), p.cso_pca_components)
        xtr, xva, xte = (features.apply_pca(x, pca) for x in (xtr, xva, xte))
        info_sel["pca_components"] = int(pca[1].shape[0])
    stats = features.fit_standardizer(xtr)
    xtr, xva, xte = (features.standardize(x, stats) for x in (xtr, xva, xte))
    if method == "cso":
        opt_name = "cso"
        kw = dict(pop_size=p.cso_pop, iters=p.cso_iters, mr=p.cso_mr, smp=p.cso_smp, srd=p.cso_srd,
                  cdc=p.cso_cdc, spc=p.cso_spc, c1=p.cso_c1, w=p.cso_w, vmax=p.cso_vmax)  # fmt: skip
    else:
        opt_name = p.bbo_optimizer
        kw = dict(pop_size=p.bbo_pop, iters=p.bbo_iters)
        if opt_name == "bbo":
            kw.update(elites=p.bbo_elites, mutation_prob=p.bbo_mutation_prob, mutation_scale=p.bbo_mutation_scale)
    best, curve, histories = None, [], {}
    for h in p.hidden_grid:
        obj = slfn.SLFNObjective(xtr, y[tr], h, n_classes, p.activation, p.fitness, p.error_weight)
        lo, hi = obj.bounds(p.weight_bound)
        res = OPTIMIZERS[opt_name](obj, lo, hi, seed=np.random.default_rng(seeds[h]), **kw)
        train_acc = float((obj.predict_proba(res.x, xtr).argmax(1) == y[tr]).mean())
        acc, loss = accuracy_and_log_loss(obj.predict_proba(res.x, xva), y[va])
        curve.append({"hidden": h, "val_accuracy": acc, "val_loss": round(loss, 5), "train_accuracy": train_acc,
                      "fitness": round(res.f, 5), "n_evals": res.n_evals})  # fmt: skip
        hist = res.history
        step = max(1, len(hist) // 50)  # keep the JSON small: about 50 points per curve
        histories[str(h)] = [round(float(v), 5) for v in hist[::step]]
        if best is None or (acc, -loss) > (best[0], -best[1]):
            best = (acc, loss, h, res, obj, train_acc)
    acc, loss, h, res, obj, train_acc = best
    prob = obj.predict_proba(res.x, xte)
    info = {"selected": {"hidden": h, "val_accuracy": acc, "val_loss": round(loss, 5), "train_accuracy": train_acc,
                         "fitness": round(res.f, 5), "optimizer": opt_name, "n_features": int(xtr.shape[1]),
                         **info_sel},
            "curves": {"grid": curve, "best_fitness_by_hidden": histories}}  # fmt: skip
    return prob, info


# ---------------------------------------------------------------- the stage
def _run_stats(results: list[FoldResult]) -> dict:
    by_run: dict[int, list[FoldResult]] = {}
    for r in results:
        by_run.setdefault(r.run, []).append(r)
    # OA of a run = accuracy on all its test images (sum of the fold matrices), as aggregate does
    oa = [100 * np.mean(np.concatenate([np.asarray(f.y_true) == np.asarray(f.y_pred) for f in fs]))
          for _, fs in sorted(by_run.items())]  # fmt: skip
    return {"oa_run_mean": round(float(np.mean(oa)), 3),
            "oa_run_std": round(float(np.std(oa, ddof=1)), 3) if len(oa) > 1 else 0.0,
            "oa_per_run": [round(float(v), 3) for v in oa]}  # fmt: skip


@dataclasses.dataclass
class MethodJob:
    """What every fold of one method shares (shipped once to each worker process)."""

    method: str
    feats: np.ndarray
    y: np.ndarray
    p: BaselinesParams
    n_classes: int


def fit_fold(job: MethodJob, task) -> tuple[np.ndarray, dict, float]:
    """One fold of one method -> (test probabilities, info, seconds)."""
    method, p = job.method, job.p
    protocol, run, fold, roles = task
    t0 = time.perf_counter()
    if method == "hwt":
        seed = cv.method_fold_seed(p.seed, method, protocol, run, fold)
        prob, info = fit_hwt(job.feats, job.y, roles, p, seed, job.n_classes)
    else:
        seeds = {h: cv.method_fold_seed(p.seed, method, protocol, run, fold, h) for h in p.hidden_grid}
        prob, info = fit_slfn(method, job.feats, job.y, roles, p, seeds, job.n_classes)
    return prob, info, time.perf_counter() - t0


def limit_blas_threads(job: MethodJob) -> MethodJob:
    """Once per worker process: the parent's BLAS thread count, so the bits are the same."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=job.p.threads)
    return job


def run_baselines(manifest_path: Path, plan_path: Path, out: Path, p: BaselinesParams) -> dict:
    from threadpoolctl import threadpool_limits

    t_start = time.perf_counter()
    manifest = features.read_manifest(manifest_path)
    run_classes = classes.read(manifest_path)  # the run's class list; unknown labels are a named error below
    plan = cv.select_folds(cv.read_plan(plan_path), p.max_runs, p.max_folds)
    if plan.empty:
        raise ValueError(f"{plan_path}: no folds selected (max_runs={p.max_runs}, max_folds={p.max_folds})")
    paths = manifest["path"].to_numpy()
    index_of = {s: i for i, s in enumerate(paths)}
    missing = sorted(set(plan["image"]) - set(index_of))
    if missing:
        raise ValueError(f"split plan names {len(missing)} image(s) not in the manifest, e.g. {missing[:3]}: "
                         "rerun the split stage")  # fmt: skip
    y = classes.label_ids(manifest["label"], run_classes, str(manifest_path))
    folds = list(cv.fold_indices(plan, index_of))
    manifest_sha = sha256_file(manifest_path)
    versions = {"numpy": np.__version__, "pywt": __import__("pywt").__version__}

    t0 = time.perf_counter()
    images = None  # decoded lazily: a fully resumed run never touches the images
    cache = features.FeatureCache()
    summary: dict = {"methods": {}, "n_folds_per_method": len(folds), "threads": p.threads}
    record: dict = {"stage": "baselines", "methods": {}}  # run facts: wall times, counts (run.json)
    load_s = 0.0
    with threadpool_limits(limits=p.threads):
        for method in p.methods:
            # result_format 2: fold files carry extra.method_config_hash (aggregate's mixed-config check)
            mcfg = {**p.method_config(method), "manifest_sha256": manifest_sha, **versions, "result_format": 2,
                    **({} if classes.matches_paper(run_classes) else {"classes": list(run_classes)})}  # fmt: skip
            mhash = config_hash(mcfg)
            results_dir = out / method
            fold_s: dict[str, float] = {}
            computed = 0
            chash = {(pr, r, f): config_hash({"method_config": mhash, "fold_images": roles_digest(roles, paths)})
                     for pr, r, f, roles in folds}  # fmt: skip
            done, todo = cv.split_finished(results_dir, folds, lambda pr, r, f, _, c=chash: c[(pr, r, f)])
            if todo:
                if images is None:
                    t0 = time.perf_counter()
                    images = features.load_gray(list(paths), manifest_path.parent, p.image_size)
                    load_s = time.perf_counter() - t0
                feats = cache.get(method, lambda m=method, im=images: compute_features(m, im, p))
                job = MethodJob(method, feats, y, p, len(run_classes))
                # each fold is seeded from its own key: the results do not depend on p.workers
                fitted = runners.run_processes(job, todo, fit_fold, p.workers, prepare=limit_blas_threads)
                for (protocol, run, fold, roles), (prob, info, dt) in zip(todo, fitted, strict=True):
                    info["method_config_hash"] = mhash  # chash also covers the fold's images (resume safety)
                    te = roles["test"]
                    res = FoldResult(method, protocol, run, fold, chash[(protocol, run, fold)], images=paths[te].tolist(),
                                     y_true=y[te].tolist(), y_pred=prob.argmax(1).tolist(),
                                     probabilities=np.round(prob, 6).tolist(), extra=info, classes=run_classes,
                                     seconds=round(dt, 4))  # fmt: skip
                    save_fold(results_dir, res)
                    done.append(res)
                    fold_s[protocol] = fold_s.get(protocol, 0.0) + dt
                    computed += 1
            plan_order = {(pr, r, f): i for i, (pr, r, f, _) in enumerate(folds)}
            done.sort(key=lambda r: plan_order[(r.protocol, r.run, r.fold)])
            cv.remove_stale(results_dir, done)  # an older plan's folds would be read by aggregate
            protos = {}
            for proto in dict.fromkeys(r.protocol for r in done):
                rs = [r for r in done if r.protocol == proto]
                protos[proto] = {
                    "n_folds": len(rs),
                    "oa_fold_mean": round(100 * float(np.mean([r.accuracy for r in rs])), 3),
                    **_run_stats(rs),
                }
            summary["methods"][method] = {
                "description": DESCRIPTION[method], "config_hash": mhash, "config": mcfg, "protocols": protos,
            }  # fmt: skip
            record["methods"][method] = {
                "n_computed": computed, "n_resumed": len(done) - computed,
                "features_s": round(cache.seconds.get(method, 0.0), 3),
                # summed over the folds computed now (with several workers, more than the wall time)
                "fold_compute_s": {proto: round(v, 2) for proto, v in fold_s.items()},
            }  # fmt: skip
    record["load_images_s"] = round(load_s, 3)
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
                 "oa": {pr: f"{v['oa_run_mean']:.2f} ± {v['oa_run_std']:.2f}" for pr, v in s["protocols"].items()}}
             for m, s in summary["methods"].items()}  # fmt: skip
    print(json.dumps({"baselines": brief, "total_s": run["total_s"]}))
    if args.mlflow:
        log_to_mlflow(args.out, p)
    return 0


def log_to_mlflow(out: Path, p) -> None:
    """One MLflow child run per baseline fold, under the pipeline's parent run."""
    import time as _time

    from .. import tracking
    from ..foldio import load_results

    t0 = _time.time()
    with tracking.stage_status(None, "baselines") as status:
        parent = tracking.parent_run_id() or tracking.start_parent({"baselines": dataclasses.asdict(p)}, name="baselines")
        status.parent_id = parent
        folds = [r for m in p.methods for proto in config.PROTOCOLS for r in load_results(out / m, proto)]
        n = tracking.log_fold_runs(parent, folds, {"baselines": dataclasses.asdict(p)})
    log.info("baselines: logged %d fold runs to MLflow parent %s in %.1f s", n, parent, _time.time() - t0)


if __name__ == "__main__":
    sys.exit(main())
