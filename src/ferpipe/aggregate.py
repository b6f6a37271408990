"""aggregate stage: fold results -> the paper's Tables 1 and 2, plots and metrics.json.

For every method folder (resnet50_gap, hwt, ...) and protocol found under the
results folders: H(r) = sum of the run's test-fold matrices, OA and per-class
sensitivity per run, mean ± sample std over runs, and the grand matrix. With ``--audit``
(the split stage's protocol audit), also each method's accuracy on the test images that
have a sibling (same subject, same expression) in their fold's training images and on
those that have none (``acc_with_sibling`` / ``acc_without_sibling`` in metrics.json).

    python -m ferpipe.aggregate --results artifacts/train artifacts/baselines \\
        --out artifacts/aggregate --metrics metrics/metrics.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from . import audit, config, cv, tracking
from .foldio import check_complete, group_by_run, load_results
from .io import write_json, write_text, write_with
from .metrics import UNDERFIT_BELOW, pm, run_matrix, summarize


def collect(results_dirs: list[Path]) -> dict[tuple[str, str], dict[int, list]]:
    """{(method, protocol): {run: [FoldResult, ...]}} from every results folder."""
    found: dict[tuple[str, str], dict[int, list]] = {}
    for root in results_dirs:
        if not root.exists():
            continue
        for method_dir in sorted(d for d in root.iterdir() if d.is_dir()):
            for proto_dir in sorted(d for d in method_dir.iterdir() if d.is_dir()):
                folds = load_results(method_dir, proto_dir.name)
                if not folds:
                    continue
                found[(method_dir.name, proto_dir.name)] = group_by_run(folds)
    return found


def fold_statistics(by_run: dict[int, list]) -> dict:
    """What compare's tests need beyond the per-run OA: each fold's accuracy (%), and a
    digest of each run's partition into test groups (equal digests = the same split, so
    two methods' runs can be paired, and repeated runs can be recognised)."""
    acc, digests = [], []
    for _, fs in sorted(by_run.items()):
        fs = sorted(fs, key=lambda f: f.fold)
        acc.append([round(100 * f.accuracy, 4) for f in fs])
        digests.append(cv.grouping_digest(f.images for f in fs))
    n_groups = len(acc[0])
    return {"fold_accuracy_per_run": acc, "grouping_per_run": digests,
            # test on 1 group, train on G - 2 (one validates): the Nadeau-Bengio size ratio
            "test_train_ratio": round(1 / max(n_groups - 2, 1), 6)}  # fmt: skip


def table1(s: dict) -> pd.DataFrame:
    """Paper Table 1: per-run sensitivity (%) per class, plus the Total (mean ± std) row."""
    rows = [[f"r{r}"] + [f"{v:.2f}" for v in sens] for r, sens in zip(s["runs"], s["sensitivity_per_run"], strict=True)]
    rows.append(["Total"] + [pm(s["sensitivity_mean"][c], s["sensitivity_std"][c]) for c in s["classes"]])
    return pd.DataFrame(rows, columns=["run", *s["classes"]])


def table2(s: dict) -> pd.DataFrame:
    """Paper Table 2: OA (%) per run, plus the Total (mean ± std) row."""
    rows = [[f"r{r}", f"{oa:.2f}"] for r, oa in zip(s["runs"], s["oa_per_run"], strict=True)]
    rows.append(["Total", pm(s["oa_mean"], s["oa_std"])])
    return pd.DataFrame(rows, columns=["run", "OA"])


def markdown(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns) + "\n"
    return head + "".join("| " + " | ".join(map(str, r)) + " |\n" for r in df.itertuples(index=False))


def plots(s: dict, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cls = s["classes"]
    grand = np.array(s["grand_matrix"], dtype=float)
    for name, mat, fmt in (("confusion_counts", grand, "{:.0f}"),
                           ("confusion_normalized", grand / np.maximum(grand.sum(1, keepdims=True), 1), "{:.2f}")):  # fmt: skip
        fig, ax = plt.subplots(figsize=(6, 5))
        im = ax.imshow(mat, cmap="Blues")
        ax.set_xticks(range(len(cls)), cls, rotation=45, ha="right")
        ax.set_yticks(range(len(cls)), cls)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for i in range(len(cls)):
            for j in range(len(cls)):
                ax.text(j, i, fmt.format(mat[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if mat[i, j] > mat.max() / 2 else "black")  # fmt: skip
        fig.colorbar(im, ax=ax)
        ax.set_title(f"{title}: grand confusion matrix ({'counts' if 'counts' in name else 'row-normalised'})")
        fig.tight_layout()
        write_with(out / f"{name}.png", lambda p, f=fig: f.savefig(p, format="png", dpi=110))
        plt.close(fig)
    sens = np.array(s["sensitivity_per_run"])
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, c in enumerate(cls):  # paper Fig. 10
        ax.plot(s["runs"], sens[:, i], marker="o", label=c)
    ax.set_xlabel("run")
    ax.set_ylabel("sensitivity (%)")
    ax.set_title(f"{title}: per-class sensitivity across runs")
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    write_with(out / "sensitivity_per_run.png", lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 3.5))  # paper Fig. 11
    ax.bar(s["runs"], s["oa_per_run"], color="tab:blue")
    ax.axhline(s["oa_mean"], color="k", ls="--", label=f"mean {pm(s['oa_mean'], s['oa_std'])}")
    ax.set_xlabel("run")
    ax.set_ylabel("OA (%)")
    ax.set_ylim(max(0, min(s["oa_per_run"]) - 10), 100)
    ax.set_title(f"{title}: overall accuracy per run")
    ax.legend()
    fig.tight_layout()
    write_with(out / "oa_per_run.png", lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)


def audit_markdown(index: list, audit_table) -> list[str]:
    """The protocol audit beside every method's accuracy: how much of each OA is memorisation."""
    if audit_table is None:
        return []
    md = ["## What each protocol measures (protocol audit)", ""]
    for protocol, a in audit.shares(audit_table).items():
        share = a["sibling_in_train_share"]
        if share is None:
            md += [f"- {protocol}: {a['why_unknown']}.", ""]
            continue
        md += [f"**{protocol}**: {100 * share:.1f} % of test images have a sibling (same subject, same expression) "
               f"in their fold's training images; {100 * a['subject_in_train_share']:.1f} % have the same subject.", "",
               "| method | OA (%) | accuracy, test images with a sibling in training (%) | without (%) |",
               "|---|---|---|---|"]  # fmt: skip
        for m, p, s in index:
            if p == protocol and s.get("protocol_audit"):
                w, wo = s["protocol_audit"]["with_sibling"], s["protocol_audit"]["without_sibling"]
                cell = lambda d: "—" if d["accuracy"] is None else f"{d['accuracy']:.2f} (n={d['n']})"  # noqa: E731
                md.append(f"| {m} | {s['oa_mean']:.2f} | {cell(w)} | {cell(wo)} |")
        md += ["", "(nn_pixels also compares with the validation group, so its 'without' column holds images whose "
               "sibling sits in the validation group.)", ""]
    return md


def aggregate(results_dirs: list[Path], out: Path, metrics_path: Path, make_plots: bool = True,
              audit_table=None) -> dict:  # fmt: skip
    found = collect(results_dirs)
    if not found:
        raise FileNotFoundError(f"no fold results under {[str(d) for d in results_dirs]}")
    metrics, index = {}, []
    for (method, protocol), by_run in sorted(found.items()):
        check_complete(method, protocol, by_run)
        run_classes = next(iter(by_run.values()))[0].classes
        s = summarize({r: run_matrix(f.confusion_matrix for f in fs) for r, fs in by_run.items()}, run_classes)
        s.update(fold_statistics(by_run))
        if audit_table is not None:
            by_sibling = audit.accuracy_by_sibling([f for fs in by_run.values() for f in fs],
                                                   audit_table[audit_table["protocol"] == protocol])  # fmt: skip
            if by_sibling is not None:
                s["protocol_audit"] = by_sibling
        fit = [f.extra.get("selected", {}).get("train_accuracy") for fs in by_run.values() for f in fs]
        fit = [v for v in fit if isinstance(v, int | float)]
        if fit:  # a model that does not fit its own training set is under-trained, not weak by nature
            low = sum(v < UNDERFIT_BELOW for v in fit)
            s["training_accuracy"] = {"mean": round(float(np.mean(fit)), 4), "min": round(float(np.min(fit)), 4),
                                      "n_folds_below": low, "threshold": UNDERFIT_BELOW, "of": len(fit)}  # fmt: skip
            if low:
                print(f"aggregate: warning: {method}/{protocol}: training accuracy below {UNDERFIT_BELOW} in "
                      f"{low}/{len(fit)} folds (mean {np.mean(fit):.3f}): the model does not fit its training "
                      "set; its test accuracy understates the method", file=sys.stderr)  # fmt: skip
        edge = [f.extra.get("selected", {}).get("at_grid_edge") for fs in by_run.values() for f in fs]
        if any(e is not None for e in edge):  # a hyper-parameter chosen at the end of its grid
            s["selected_at_grid_edge"] = {"n_folds": sum(bool(e) for e in edge), "of": len(edge)}
            if any(edge):
                grid = "train.head_c_grid" if method.startswith("resnet50") else f"baselines.{method}.c_grid"
                print(f"aggregate: warning: {method}/{protocol}: the validation group chose a value at the edge of "
                      f"its grid in {sum(bool(e) for e in edge)}/{len(edge)} folds ({grid})", file=sys.stderr)  # fmt: skip
        d = out / method / protocol
        t1, t2 = table1(s), table2(s)
        write_text(d / "table1_sensitivity.csv", t1.to_csv(index=False, lineterminator="\n"))
        write_text(d / "table2_oa.csv", t2.to_csv(index=False, lineterminator="\n"))
        n_test = int(np.sum(s["grand_matrix"]))
        title = f"{method} ({protocol})"
        write_text(d / "tables.md", f"### {title}\n\nTable 1: sensitivity (%) per run\n\n{markdown(t1)}\n"
                                    f"Table 2: overall accuracy (%) per run\n\n{markdown(t2)}\n"
                                    f"{len(s['runs'])} runs x {len(next(iter(by_run.values())))} folds, "
                                    f"{n_test} test predictions in total.\n")  # fmt: skip
        grand = pd.DataFrame(s["grand_matrix"], index=s["classes"], columns=s["classes"])
        write_text(d / "grand_confusion_matrix.csv", grand.to_csv(index_label="true\\predicted", lineterminator="\n"))
        write_text(d / "oa_per_run.csv", pd.DataFrame({"run": s["runs"], "oa": s["oa_per_run"]})
                   .to_csv(index=False, lineterminator="\n"))  # fmt: skip
        sens_long = pd.DataFrame([{"run": r, "class": c, "sensitivity": v}
                                  for r, row in zip(s["runs"], s["sensitivity_per_run"], strict=True)
                                  for c, v in zip(s["classes"], row, strict=True)])  # fmt: skip
        write_text(d / "sensitivity_per_run.csv", sens_long.to_csv(index=False, lineterminator="\n"))
        write_json(d / "summary.json", s)
        if make_plots:
            plots(s, d, title)
        metrics.setdefault(method, {})[protocol] = {
            "oa_mean": round(s["oa_mean"], 4), "oa_std": round(s["oa_std"], 4),
            "n_runs": len(s["runs"]),
            "sensitivity_mean": {c: round(v, 4) for c, v in s["sensitivity_mean"].items()},
            **{f"acc_{k}": v["accuracy"] for k, v in (s.get("protocol_audit") or {}).items() if v["accuracy"] is not None},
        }  # fmt: skip
        index.append((method, protocol, s))
    md = ["# Results (paper Tables 1 and 2 format)", ""]
    md += ["| method | protocol | OA mean ± std (%) | runs |", "|---|---|---|---|"]
    md += [f"| {m} | {p} | {pm(s['oa_mean'], s['oa_std'])} | {len(s['runs'])} |" for m, p, s in index]
    md.append("")
    md += audit_markdown(index, audit_table)
    for m, p, _ in index:
        md.append((out / m / p / "tables.md").read_text())
    write_text(out / "results.md", "\n".join(md))
    write_json(metrics_path, metrics)
    return metrics


def log_untracked_folds(parent: str, results_dirs: list[Path]) -> None:
    """Fold runs of result folders that log nothing themselves (the baselines) as children of
    the pipeline's parent: one parent then holds every method's folds of this invocation."""
    for d in results_dirs:
        if (d / "mlflow.json").exists() or not d.exists():
            continue  # that stage logged its own folds
        for method_dir in sorted(p for p in d.iterdir() if p.is_dir()):
            folds = [r for proto in config.PROTOCOLS for r in load_results(method_dir, proto)]
            if folds:
                tracking.log_fold_runs(parent, folds, {"method": method_dir.name, "results": str(method_dir)})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--results", type=Path, nargs="+", default=[config.TRAIN_DIR, config.BASELINES_DIR],
                    help="folders holding <method>/<protocol>/runXX_foldYY.json fold results")
    ap.add_argument("--out", type=Path, default=config.AGGREGATE_DIR, help="output folder for tables and plots")
    ap.add_argument("--metrics", type=Path, default=config.METRICS_DIR / "metrics.json",
                    help="small metrics JSON committed to git for `dvc metrics diff` and the CI gate")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG plots (faster)")
    ap.add_argument("--audit", type=Path, help="the split stage's protocol_audit.csv: accuracy on test images "
                    "with and without a sibling in training, per method")
    ap.add_argument("--mlflow-record", type=Path,
                    help="the MLflow parent record (default: the first mlflow.json among the --results folders, "
                    "as the train stage writes it); final metrics and the baselines' fold runs go there")
    ap.add_argument("--no-mlflow", action="store_true", help="log nothing to MLflow")
    args = ap.parse_args(argv)
    record = args.mlflow_record or next((r / "mlflow.json" for r in args.results if (r / "mlflow.json").exists()), None)
    try:
        parent = None if args.no_mlflow else tracking.parent_run_id(record)
    except tracking.ParentRunError as exc:
        print(f"aggregate: error: {exc}", file=sys.stderr)
        return 2
    with tracking.stage_status(parent, "aggregate") as status:
        try:
            audit_table = audit.read_audit(args.audit) if args.audit else None
            metrics = aggregate(args.results, args.out, args.metrics, make_plots=not args.no_plots,
                                audit_table=audit_table)
        except (FileNotFoundError, ValueError) as exc:
            print(f"aggregate: error: {exc}", file=sys.stderr)
            status.fail()
            return 2
        if parent:
            flat = {f"{m}.{p}.{k}": v for m, ps in metrics.items() for p, d in ps.items()
                    for k, v in d.items() if isinstance(v, float)}  # fmt: skip
            if audit_table is not None:  # the protocol audit's shares beside the accuracies they explain
                for proto, a in audit.shares(audit_table).items():
                    flat.update({f"audit.{proto}.{k}": v for k, v in a.items() if isinstance(v, float)})
            tracking.log_parent_results(parent, flat, [args.out / "results.md", args.metrics])
            log_untracked_folds(parent, args.results)
    print((args.out / "results.md").read_text().split("\n\n###")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
