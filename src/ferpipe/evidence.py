"""Fine-tuning evidence: a fine-tuned ResNet-50's folds against other methods' on the very same folds.

Reads the fold results of a fine-tune run (for example the CPU profile of
``scripts/cpu_evidence.sh``: 1 run x 10 folds, both protocols) and the fold results of the
methods to compare with (the frozen head in ``artifacts/train``, the baselines in
``artifacts/baselines``), and writes one metrics file with:

- the paper's metrics of the fine-tuned model (OA, per-class sensitivity, confusion matrix);
- per protocol and method, on the same runs and folds: both OAs and McNemar's exact test on
  the per-image outcomes. Within one run every image is tested exactly once, so the pairs
  are independent images; with several runs an image would be counted once per run, so
  only the first common run is tested (the count says which);
- provenance: git commit, data hash, the resolved train config, CPU, wall time.

    python -m ferpipe.evidence --finetune artifacts/cpu_finetune/resnet50_finetune \\
        --compare-with artifacts/train/resnet50_gap artifacts/baselines/hwt \\
        --record artifacts/cpu_finetune --out metrics/cpu_finetune.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
from pathlib import Path

import numpy as np

from . import metrics, tracking
from .foldio import FoldResult, check_complete, group_by_run, load_results
from .io import read_run_record, write_json

ALPHA = 0.05


def mcnemar_exact(a_right: np.ndarray, b_right: np.ndarray) -> dict:
    """McNemar's exact test (two-sided binomial test on the discordant pairs) for paired
    per-image outcomes of methods a and b."""
    from scipy import stats

    only_a = int(np.sum(a_right & ~b_right))
    only_b = int(np.sum(~a_right & b_right))
    n = only_a + only_b
    p = 1.0 if n == 0 else float(stats.binomtest(only_a, n, 0.5).pvalue)
    return {"only_a_right": only_a, "only_b_right": only_b, "n_images": int(len(a_right)), "mcnemar_exact_p": p}


def outcomes(folds: list[FoldResult], run: int) -> dict[str, bool]:
    """{image: predicted correctly} over the test folds of one run."""
    out: dict[str, bool] = {}
    for r in folds:
        if r.run != run:
            continue
        for img, t, p in zip(r.images, r.y_true, r.y_pred, strict=True):
            if img in out:
                raise ValueError(f"{r.method} {r.protocol} run {run}: image {img} is tested in two folds")
            out[img] = t == p
    return out


def fold_sets(folds: list[FoldResult], run: int) -> dict[int, frozenset[str]]:
    return {r.fold: frozenset(r.images) for r in folds if r.run == run}


def compare_runs(ft: list[FoldResult], other: list[FoldResult], name: str, protocol: str) -> dict:
    """Fine-tuned vs ``other`` on the first run both have with identical test folds."""
    common = sorted({r.run for r in ft} & {r.run for r in other})
    same = [r for r in common if fold_sets(ft, r) == fold_sets(other, r)]
    if not same:
        raise ValueError(f"{protocol}: {name} has no run with the fine-tuned model's test folds "
                         f"(runs in common: {common}); rerun it on the same split plan")  # fmt: skip
    run = same[0]
    a, b = outcomes(ft, run), outcomes(other, run)
    imgs = sorted(a)
    a_right, b_right = np.array([a[i] for i in imgs]), np.array([b[i] for i in imgs])
    test = mcnemar_exact(a_right, b_right)
    diff = 100 * (a_right.mean() - b_right.mean())
    verdict = (f"fine-tuned {'higher' if diff > 0 else 'lower'}, significant (McNemar p < {ALPHA})"
               if test["mcnemar_exact_p"] < ALPHA else f"no significant difference (McNemar p >= {ALPHA})")  # fmt: skip
    return {"run": run, "oa_finetune": 100 * float(a_right.mean()), "oa_other": 100 * float(b_right.mean()),
            "difference": float(diff), **test, "verdict": verdict}  # fmt: skip


COMPARISON_COLUMNS = ["protocol", "vs", "fine-tuned OA (%)", "its OA (%)", "only fine-tuned right", "only it right",
                      "McNemar exact p", "verdict"]  # fmt: skip


def comparison_rows(ev: dict) -> list[list]:
    """One row per (protocol, other method) of an evidence file, in COMPARISON_COLUMNS order
    (what the README block and the report both show)."""
    return [[proto, other, f"{t['oa_finetune']:.2f}", f"{t['oa_other']:.2f}", t["only_a_right"], t["only_b_right"],
             f"{t['mcnemar_exact_p']:.2g}", t["verdict"]]
            for proto, tests in ev.get("comparisons", {}).items() for other, t in tests.items()]  # fmt: skip


def summarize_method(folds: list[FoldResult], classes: tuple[str, ...]) -> dict:
    """The paper's metrics of whole runs; partial runs (an interrupted fine-tune) are refused."""
    by_run = group_by_run(folds)
    check_complete(folds[0].method, folds[0].protocol, by_run)
    s = metrics.summarize({run: metrics.run_matrix(f.confusion_matrix for f in fs) for run, fs in by_run.items()},
                          classes)  # fmt: skip
    s["n_runs"] = len(s["runs"])
    s["n_folds"] = len(folds)
    return s


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build(finetune_dir: Path, others: list[Path], record_dir: Path | None) -> dict:
    protocols = sorted(p.name for p in finetune_dir.iterdir() if p.is_dir()) if finetune_dir.is_dir() else []
    if not protocols:
        raise FileNotFoundError(f"{finetune_dir}: no <protocol>/run*_fold*.json fold results")
    out: dict = {}
    comparisons: dict = {}
    for protocol in protocols:
        ft = load_results(finetune_dir, protocol)
        method = ft[0].method
        out.setdefault(method, {})[protocol] = summarize_method(ft, tuple(ft[0].classes))
        comparisons[protocol] = {}
        for d in others:
            other = load_results(d, protocol)
            if not other:
                raise FileNotFoundError(f"{d}: no {protocol} fold results to compare with")
            comparisons[protocol][other[0].method] = compare_runs(ft, other, other[0].method, protocol)
    out["comparisons"] = comparisons
    record = read_run_record(record_dir) if record_dir is not None else {}
    config = json.loads((record_dir / "resolved_config.json").read_text()) if record_dir and \
        (record_dir / "resolved_config.json").exists() else {}  # fmt: skip
    out["provenance"] = {
        "git_commit": tracking.git_commit(), "data_hash": tracking.data_hash(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu": cpu_name(), "platform": platform.platform(), "train_config": config,
        "train_wall_s_last_invocation": (record.get("timings_s") or {}).get("total_s"),
        "fold_seconds_total_last_invocation": round(sum((record.get("fold_seconds") or {}).values()), 1),
        "n_folds_computed": record.get("n_computed"), "n_folds_resumed": record.get("n_resumed"),
        "test": "McNemar's exact test (two-sided binomial on discordant images), one run: each image once",
    }  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--finetune", type=Path, required=True, help="fold results of the fine-tuned model "
                    "(<dir>/<protocol>/run*_fold*.json)")
    ap.add_argument("--compare-with", type=Path, nargs="+", required=True,
                    help="fold-result folders of the methods to test against on the same folds")
    ap.add_argument("--record", type=Path, help="the train output folder (run.json, resolved_config.json) "
                    "whose timings and config go into the provenance")
    ap.add_argument("--out", type=Path, required=True, help="metrics JSON to write")
    args = ap.parse_args(argv)
    try:
        result = build(args.finetune, args.compare_with, args.record)
    except (FileNotFoundError, ValueError) as exc:
        print(f"evidence: error: {exc}", file=sys.stderr)
        return 2
    write_json(args.out, result)
    method = next(k for k in result if k not in ("comparisons", "provenance"))
    for protocol, tests in result["comparisons"].items():
        ft = result[method][protocol]
        print(f"{protocol}: fine-tuned OA {ft['oa_mean']:.2f} % ({ft['n_runs']} run, {ft['n_folds']} folds)")
        for name, t in tests.items():
            print(f"  vs {name}: {t['oa_other']:.2f} %, only fine-tuned right {t['only_a_right']}, only {name} "
                  f"right {t['only_b_right']}, McNemar exact p = {t['mcnemar_exact_p']:.3g}: {t['verdict']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
