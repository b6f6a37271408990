"""compare stage: paper Table 3, reproduced: every method on the same folds.

Per protocol: published OA (paper Table 3) next to our OA ± std for HWT, CSO, BBO and
each ResNet-50 mode that ran; per-class sensitivities; paired tests over the runs
(Wilcoxon signed-rank and paired t, runs share their split across methods) of ResNet-50
against each baseline; a bar chart with error bars. Markdown + JSON + PNG, and the
headline numbers in metrics/compare.json.

    python -m ferpipe.compare --aggregate artifacts/aggregate --out artifacts/compare
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from . import config, paper
from .config import CLASSES
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
    from scipy import stats

    a_, b_ = np.asarray(a), np.asarray(b)
    diff = a_ - b_
    res = {"n_runs": int(len(diff)), "mean_difference": float(diff.mean())}
    if len(diff) < 2:
        return {**res, "wilcoxon_p": None, "ttest_p": None, "note": "fewer than 2 paired runs"}
    if np.allclose(diff, 0):
        return {**res, "wilcoxon_p": 1.0, "ttest_p": 1.0, "note": "identical per-run OA"}
    w = stats.wilcoxon(a_, b_)
    t = stats.ttest_rel(a_, b_)
    return {**res, "wilcoxon_p": float(w.pvalue), "ttest_p": float(t.pvalue), "t_statistic": float(t.statistic)}


def order(methods) -> list[str]:
    rank = {"hwt": 0, "cso": 1, "bbo": 2}
    return sorted(methods, key=lambda m: (rank.get(m, 3), m))


def compare(agg: Path) -> dict:
    result = {}
    for protocol, by_method in load_summaries(agg).items():
        rows = []
        for m in order(by_method):
            s = by_method[m]
            pub = paper.TABLE3.get(paper.published_key(m))
            rows.append({"method": m, "oa_mean": s["oa_mean"], "oa_std": s["oa_std"], "n_runs": len(s["runs"]),
                         "published_oa": pub[0] if pub else None, "published_std": pub[1] if pub else None,
                         "sensitivity_mean": s["sensitivity_mean"]})  # fmt: skip
        tests = {}
        for m in by_method:
            if not m.startswith("resnet50"):
                continue
            for b in by_method:
                if b.startswith("resnet50"):
                    continue
                ra, rb = by_method[m], by_method[b]
                common = sorted(set(ra["runs"]) & set(rb["runs"]))
                oa_a = [ra["oa_per_run"][ra["runs"].index(r)] for r in common]
                oa_b = [rb["oa_per_run"][rb["runs"].index(r)] for r in common]
                tests[f"{m} vs {b}"] = paired_tests(oa_a, oa_b)
        result[protocol] = {"methods": rows, "paired_tests": tests}
    return result


def fmt_p(p) -> str:
    return "n/a" if p is None else (f"{p:.2e}" if p < 1e-3 else f"{p:.3f}")


def markdown(result: dict) -> str:
    lines = ["# Comparison with the paper's Table 3", "", f"> {paper.DATASET_NOTE}", ""]
    for protocol, r in result.items():
        lines += [f"## Protocol: {protocol}", "",
                  "| method | published OA (%) | reproduced OA (%) | runs | " + " | ".join(CLASSES) + " |",
                  "|---|---|---|---|" + "---|" * len(CLASSES)]  # fmt: skip
        for row in r["methods"]:
            pub = pm(row["published_oa"], row["published_std"]) if row["published_oa"] is not None else "—"
            sens = " | ".join(f"{row['sensitivity_mean'][c]:.1f}" for c in CLASSES)
            lines.append(f"| {row['method']} | {pub} | {pm(row['oa_mean'], row['oa_std'])} | {row['n_runs']} | {sens} |")
        lines += ["", "Paired tests over runs (same splits): ResNet-50 minus baseline", "",
                  "| comparison | mean OA difference (pp) | Wilcoxon p | paired t p |", "|---|---|---|---|"]  # fmt: skip
        for name, t in r["paired_tests"].items():
            lines.append(f"| {name} | {t['mean_difference']:+.2f} | {fmt_p(t['wilcoxon_p'])} | {fmt_p(t['ttest_p'])} |")
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
    except FileNotFoundError as exc:
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
