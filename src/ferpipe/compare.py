"""compare stage: paper Table 3, reproduced: every method on the same folds.

Per protocol: published OA (paper Table 3) next to our OA ± std for HWT, CSO, BBO and
each ResNet-50 mode that ran; per-class sensitivities; ResNet-50 against each baseline on
the runs that used the same split (checked by the aggregate's grouping digests): the
corrected resampled t-test over folds decides, the plain paired t / Wilcoxon over runs are
shown beside it, and a split that several runs repeat counts once; a bar chart. Markdown + JSON + PNG, and the
headline numbers in metrics/compare.json.

    python -m ferpipe.compare --aggregate artifacts/aggregate --out artifacts/compare
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from . import classes, config, paper
from .config import CLASSES as PAPER_CLASSES
from .io import write_json, write_text, write_with
from .metrics import pm


def load_summaries(agg: Path) -> dict[str, dict[str, dict]]:
    """{protocol: {method: summary}} from aggregate's <method>/<protocol>/summary.json."""
    out: dict[str, dict[str, dict]] = {}
    for f in sorted(agg.glob("*/*/summary.json")):
        method, protocol = f.parent.parent.name, f.parent.name
        out.setdefault(protocol, {})[method] = json.loads(f.read_text())
    if not out:
        raise FileNotFoundError(f"{agg}: no <method>/<protocol>/summary.json (run the aggregate stage)")
    return out


def paired_tests(a: list[float], b: list[float]) -> dict:
    """Plain paired tests over runs (Wilcoxon signed-rank, paired t). They treat the runs as
    independent samples, which repeated cross-validation runs are not (they share training
    data): optimistic, shown only next to :func:`corrected_ttest`."""
    from scipy import stats

    a_, b_ = np.asarray(a), np.asarray(b)
    diff = a_ - b_
    res = {"n_runs": int(len(diff)), "mean_difference": float(diff.mean()) if len(diff) else float("nan")}
    if len(diff) < 2:
        return {**res, "wilcoxon_p": None, "ttest_p": None, "note": "fewer than 2 paired runs"}
    if np.allclose(diff, 0):
        return {**res, "wilcoxon_p": 1.0, "ttest_p": 1.0, "note": "identical per-run OA"}
    w = stats.wilcoxon(a_, b_)
    t = stats.ttest_rel(a_, b_)
    return {**res, "wilcoxon_p": float(w.pvalue), "ttest_p": float(t.pvalue), "t_statistic": float(t.statistic)}


def corrected_ttest(fold_diffs: list[float], test_train_ratio: float) -> dict:
    """Corrected resampled t-test (Nadeau & Bengio 2003; the r x k form of Bouckaert & Frank
    2004) over the per-fold accuracy differences of repeated cross-validation: the variance
    term is (1/n + n_test/n_train) * s^2 instead of s^2 / n, because folds and runs share
    training data. Two-sided, n - 1 degrees of freedom."""
    from scipy import stats

    d = np.asarray(fold_diffs, dtype=float)
    n = len(d)
    if n < 2:
        return {"corrected_p": None, "n_folds": n}
    var = d.var(ddof=1)
    if var == 0:
        return {"corrected_p": 1.0 if d.mean() == 0 else 0.0, "n_folds": n, "corrected_t": None}
    t = d.mean() / np.sqrt((1.0 / n + test_train_ratio) * var)
    return {"corrected_p": float(2 * stats.t.sf(abs(t), n - 1)), "corrected_t": float(t), "n_folds": n}


def compare_pair(ra: dict, rb: dict) -> dict:
    """Method a vs b on the runs they share *with the same split*; a grouping that several
    runs repeat (e.g. leave-one-subject-out) counts once."""
    common = sorted(set(ra["runs"]) & set(rb["runs"]))
    ga, gb = ra.get("grouping_per_run"), rb.get("grouping_per_run")
    if ga is None or gb is None:  # summaries from before the grouping digests: pair by run number
        same, unknown = common, True
    else:
        same = [r for r in common if ga[ra["runs"].index(r)] == gb[rb["runs"].index(r)]]
        unknown = False
    first: dict = {}
    for r in same:
        first.setdefault(ga[ra["runs"].index(r)] if not unknown else r, r)
    distinct = sorted(first.values())
    oa = {k: [s["oa_per_run"][s["runs"].index(r)] for r in distinct] for k, s in (("a", ra), ("b", rb))}
    res = paired_tests(oa["a"], oa["b"])
    res.update(n_runs_paired=len(same), n_runs_not_same_split=len(common) - len(same),
               n_distinct_groupings=len(distinct), distinct_runs=distinct)  # fmt: skip
    if "fold_accuracy_per_run" in ra and "fold_accuracy_per_run" in rb:
        diffs = [fa - fb for r in distinct
                 for fa, fb in zip(ra["fold_accuracy_per_run"][ra["runs"].index(r)],
                                   rb["fold_accuracy_per_run"][rb["runs"].index(r)], strict=True)]  # fmt: skip
        res.update(corrected_ttest(diffs, ra.get("test_train_ratio", 0.125)))
    else:
        res.update(corrected_p=None, note="no per-fold accuracies in the aggregate summaries: rerun aggregate")
    p = res.get("corrected_p")
    res["verdict"] = ("not paired: the methods' runs used different splits" if not same else
                      "n/a" if p is None else
                      f"{'higher' if res['mean_difference'] > 0 else 'lower'}, significant (corrected p < 0.05)"
                      if p < 0.05 else "no significant difference (corrected p >= 0.05)")  # fmt: skip
    return res


FLOOR = "nn_pixels"  # the memorisation floor (ferpipe.baselines.nn_pixels)


def order(methods) -> list[str]:
    rank = {"hwt": 0, "cso": 1, "bbo": 2, FLOOR: 3}
    return sorted(methods, key=lambda m: (rank.get(m, 4), m))


def pairs(methods) -> list[tuple[str, str]]:
    """Which comparisons are tested: every ResNet-50 method against every other method (the
    baselines, the floor and the other ResNet-50 heads), and every baseline against the floor."""
    resnet = [m for m in methods if m.startswith("resnet50")]
    out = [(a, b) for a in resnet for b in order(methods) if b != a and not (b.startswith("resnet50") and b < a)]
    if FLOOR in methods:
        out += [(m, FLOOR) for m in order(methods) if m != FLOOR and not m.startswith("resnet50")]
    return out


def sibling_share(summary: dict | None) -> float | None:
    """Share of test images with a sibling in training (the aggregate's protocol audit)."""
    a = (summary or {}).get("protocol_audit") or {}
    n = sum(v["n"] for v in a.values())
    return a["with_sibling"]["n"] / n if n else None


def not_above_floor(tests: dict) -> list[str]:
    """Methods not significantly above the memorisation floor (corrected test)."""
    out = []
    for name, t in tests.items():
        a, _, b = name.partition(" vs ")
        if b == FLOOR and not (t.get("corrected_p") is not None and t["corrected_p"] < 0.05 and t["mean_difference"] > 0):
            out.append(a)
    return out


def compare(agg: Path) -> dict:
    result = {}
    for protocol, by_method in load_summaries(agg).items():
        rows = []
        class_lists = {tuple(s.get("classes", PAPER_CLASSES)) for s in by_method.values()}
        if len(class_lists) > 1:
            raise ValueError(f"protocol {protocol}: methods were run with different class lists {sorted(class_lists)}")
        run_classes = class_lists.pop()
        # the paper's numbers are comparable only for the paper's seven classes
        comparable = classes.matches_paper(run_classes)
        for m in order(by_method):
            s = by_method[m]
            pub = paper.TABLE3.get(paper.published_key(m)) if comparable else None
            rows.append({"method": m, "oa_mean": s["oa_mean"], "oa_std": s["oa_std"], "n_runs": len(s["runs"]),
                         "published_oa": pub[0] if pub else None, "published_std": pub[1] if pub else None,
                         "sensitivity_mean": s["sensitivity_mean"], "training_accuracy": s.get("training_accuracy")})  # fmt: skip
        tests = {f"{a} vs {b}": compare_pair(by_method[a], by_method[b]) for a, b in pairs(by_method)}
        warnings = [f"Under-trained: {row['method']} reaches a training accuracy below {ta['threshold']} in "
                    f"{ta['n_folds_below']}/{ta['of']} folds (mean {ta['mean']:.3f}): its network does not fit its "
                    "own training set, so its OA is a floor for the method, not its measure (too small an optimiser "
                    "budget, or features that do not separate the training images; docs/baselines.md)."
                    for row in rows if (ta := row.get("training_accuracy") or {}).get("n_folds_below")]  # fmt: skip
        groupings = {len(set(v["grouping_per_run"])) for v in by_method.values() if "grouping_per_run" in v}
        result[protocol] = {"methods": rows, "paired_tests": tests, "classes": list(run_classes),
                            "not_above_floor": not_above_floor(tests) if FLOOR in by_method else None,
                            "sibling_share": sibling_share(by_method.get(FLOOR)),
                            "published_comparable": comparable, "warnings": warnings,
                            "n_distinct_groupings": max(groupings) if groupings else None}  # fmt: skip
    return result


def fmt_p(p) -> str:
    return "n/a" if p is None else (f"{p:.2e}" if p < 1e-3 else f"{p:.3f}")


def markdown(result: dict) -> str:
    lines = ["# Comparison with the paper's Table 3", "", f"> {paper.DATASET_NOTE}", ">", f"> {paper.TABLE3_NOTE}", ""]
    for protocol, r in result.items():
        cls = r.get("classes", PAPER_CLASSES)
        if not r.get("published_comparable", True):
            lines += [f"> Classes of this run: {', '.join(cls)}. They are not the paper's seven, so no published "
                      "number is shown beside ours.", ""]  # fmt: skip
        lines += [f"## Protocol: {protocol}", "",
                  "| method | published OA (%) | reproduced OA (%) | runs | " + " | ".join(cls) + " |",
                  "|---|---|---|---|" + "---|" * len(cls)]  # fmt: skip
        for row in r["methods"]:
            pub = pm(row["published_oa"], row["published_std"]) if row["published_oa"] is not None else "—"
            sens = " | ".join(f"{row['sensitivity_mean'][c]:.1f}" for c in cls)
            lines.append(f"| {row['method']} | {pub} | {pm(row['oa_mean'], row['oa_std'])} | {row['n_runs']} | {sens} |")
        for warning in r.get("warnings", []):
            lines += ["", f"**{warning}**"]
        floor, share = r.get("not_above_floor"), r.get("sibling_share")
        if floor is not None:
            if not floor:
                why = "every method is significantly above it (corrected t-test)."
            elif share is not None and share >= 0.5:  # the floor recognises people here
                why = (f"not significantly above it on this protocol (corrected t-test): {', '.join(floor)}. "
                       f"{100 * share:.0f} % of the test images have a sibling in training, so their OA here measures "
                       "recognising people's photos as much as reading expressions.")
            else:  # no one to recognise: the floor sits near chance
                why = (f"not significantly above it on this protocol (corrected t-test): {', '.join(floor)}. Few test "
                       f"images have a sibling in training here, so the floor sits near chance (1 in {len(cls)}): "
                       "for these methods, reading expressions of new people better than pixel matching is not "
                       "established.")
            lines += ["", f"**Memorisation floor** ({FLOOR}: 1-nearest-neighbour on raw pixels, which learns no "
                      f"expression): {why}"]  # fmt: skip
        n_runs = max((row["n_runs"] for row in r["methods"]), default=0)
        k = r.get("n_distinct_groupings")
        lines += ["", f"Runs: {n_runs}; distinct groupings of the images into test groups: {k if k else 'unknown'}"
                  + (" (the runs repeat one split: only the validation group differs, so the ± over runs is not "
                     "a resampling spread, and the tests below count that split once)" if k and k < n_runs else ""),
                  "", "Tests, first method minus second, on the same splits. **Decisive: the corrected resampled "
                  "t-test** (Nadeau & Bengio 2003) over the per-fold differences of the distinct groupings; the plain "
                  "paired t and Wilcoxon over runs treat runs as independent and are optimistic.", "",
                  "| comparison | mean OA difference (pp) | distinct groupings (folds) | corrected t p | verdict | "
                  "plain paired t p | plain Wilcoxon p |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, t in r["paired_tests"].items():
            lines.append(f"| {name} | {t['mean_difference']:+.2f} | {t.get('n_distinct_groupings')} "
                         f"({t.get('n_folds', 'n/a')}) | {fmt_p(t.get('corrected_p'))} | {t.get('verdict')} | "
                         f"{fmt_p(t['ttest_p'])} | {fmt_p(t['wilcoxon_p'])} |")  # fmt: skip
        lines.append("")
    lines.append("Per-class columns: mean sensitivity (%). Published numbers: each method's own paper, "
                 "quoted in Li & Lima (2021) Table 3.")  # fmt: skip
    return "\n".join(lines) + "\n"


def bar_chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = list(result)
    fig, axes = plt.subplots(1, len(protocols), figsize=(6 * len(protocols), 4), squeeze=False)
    for ax, protocol in zip(axes[0], protocols, strict=True):
        rows = result[protocol]["methods"]
        x = np.arange(len(rows))
        ax.bar(x - 0.2, [r["oa_mean"] for r in rows], 0.4, yerr=[r["oa_std"] for r in rows], capsize=3,
               label="reproduced (JAFFE)")  # fmt: skip
        pub = [r["published_oa"] or 0 for r in rows]
        ax.bar(x + 0.2, pub, 0.4, yerr=[r["published_std"] or 0 for r in rows], capsize=3,
               label="published (paper Table 3)", hatch="//", alpha=0.6)  # fmt: skip
        ax.set_xticks(x, [r["method"] for r in rows], rotation=20)
        ax.set_ylabel("OA (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"OA mean ± std, protocol {protocol}")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    write_with(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)


def headline(result: dict) -> dict:
    out = {}
    for protocol, r in result.items():
        out[protocol] = {row["method"]: {"oa_mean": round(row["oa_mean"], 4), "oa_std": round(row["oa_std"], 4)}
                         for row in r["methods"]}  # fmt: skip
        for name, t in r["paired_tests"].items():
            out[protocol][name] = {"mean_difference": round(t["mean_difference"], 4),
                                   "corrected_p": t.get("corrected_p"), "n_distinct_groupings": t.get("n_distinct_groupings"),
                                   "wilcoxon_p": t["wilcoxon_p"], "ttest_p": t["ttest_p"]}  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--aggregate", type=Path, default=config.AGGREGATE_DIR, help="aggregate stage output folder")
    ap.add_argument("--out", type=Path, default=config.COMPARE_DIR, help="output folder (compare.md/json/png)")
    ap.add_argument("--metrics", type=Path, default=config.METRICS_DIR / "compare.json",
                    help="headline numbers (committed, for dvc metrics diff)")
    args = ap.parse_args(argv)
    try:
        result = compare(args.aggregate)
    except (FileNotFoundError, ValueError) as exc:
        print(f"compare: error: {exc}", file=sys.stderr)
        return 2
    write_json(args.out / "compare.json", result)
    write_text(args.out / "compare.md", markdown(result))
    bar_chart(result, args.out / "compare_oa.png")
    write_json(args.metrics, headline(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
