"""Regenerate the results block of README.md from the committed metrics JSON files.

    python -m ferpipe.readme            # rewrite the block in place
    python -m ferpipe.readme --check    # exit 1 if README.md is out of date (used by tests)

The block lies between ``<!-- results:start -->`` and ``<!-- results:end -->``; numbers
come only from ``metrics/*.json`` written by the aggregate/compare stages, never typed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import CLASSES, METRICS_DIR
from .evidence import COMPARISON_COLUMNS, comparison_rows
from .io import write_text
from .metrics import pm

START, END = "<!-- results:start -->", "<!-- results:end -->"
SOURCES = {"metrics.json": "default pipeline (`make run`, frozen backbone, CPU): the paper's network "
                           "(`resnet50_gap`), the layout-keeping head (`resnet50_spatial`), the wavelet baselines and "
                           "the memorisation floor (`nn_pixels`)",
           "cpu_finetune.json": "CPU evidence (`make cpu-evidence`, `profiles/cpu_finetune.yaml`): the paper's "
                                "method, fine-tuned ResNet-50, at a reduced 112 px and 1 run x 10 folds only",
           "paper.json": "GPU check (`scripts/gpu_check.sh` on one H200): fine-tuned ResNet-50 at 224 px, "
                         "only the runs completed within its time budget (docs/finetune.md)"}  # fmt: skip


def evidence_lines(m: dict) -> list[str]:
    """The same-fold McNemar comparisons and provenance of an evidence file (ferpipe.evidence)."""
    if "comparisons" not in m:
        return []
    lines = ["| " + " | ".join(COMPARISON_COLUMNS) + " |", "|---" * len(COMPARISON_COLUMNS) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in comparison_rows(m)]
    prov = m.get("provenance", {})
    runs = sorted({t["run"] for tests in m["comparisons"].values() for t in tests.values()})
    lines += ["", f"Paired on the same folds of run {', '.join(map(str, runs))}: every image tested once. "
              f"Commit `{prov.get('git_commit')}`, CPU: {prov.get('cpu')}, fine-tuning wall time "
              f"{prov.get('train_wall_s_last_invocation')} s.", ""]  # fmt: skip
    return lines


def render(metrics_dir: Path = METRICS_DIR) -> str:
    lines = []
    for fname, what in SOURCES.items():
        f = metrics_dir / fname
        if not f.exists():
            continue
        m = json.loads(f.read_text())
        rows = [(method, proto, d) for method, protos in m.items() for proto, d in protos.items()
                if isinstance(d, dict) and "oa_mean" in d]  # fmt: skip
        audit = any("acc_with_sibling" in d for *_, d in rows)  # the protocol audit (ferpipe.audit)
        extra = " sibling in train: acc. (%) | no sibling: acc. (%) |" if audit else ""
        lines += [f"**{what}** — from `metrics/{fname}`:", "",
                  "| method | protocol | runs | OA (%) | " + " | ".join(CLASSES) + " |" + extra,
                  "|---|---|---|---|" + "---|" * (len(CLASSES) + 2 * audit)]  # fmt: skip
        for method, proto, d in rows:
            sens = " | ".join(f"{d['sensitivity_mean'][c]:.1f}" for c in CLASSES)
            cells = "".join(f" {d[k]:.1f} |" if k in d else " — |" for k in ("acc_with_sibling", "acc_without_sibling"))
            lines.append(f"| {method} | {proto} | {d['n_runs']} | {pm(d['oa_mean'], d['oa_std'])} | {sens} |"
                         + (cells if audit else ""))  # fmt: skip
        lines.append("")
        lines += evidence_lines(m)
    lines.append("Per-class columns: mean sensitivity (%) over runs. Paper (Table 2/3): ResNet-50 "
                 "95.39 ± 1.41 on its private 700-image set.")  # fmt: skip
    return "\n".join(lines)


def update(readme: Path, block: str) -> str:
    text = readme.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{readme}: markers {START} ... {END} not found")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{block}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--readme", type=Path, default=Path("README.md"), help="README to update")
    ap.add_argument("--metrics-dir", type=Path, default=METRICS_DIR, help="folder of committed metrics JSON")
    ap.add_argument("--check", action="store_true", help="only check; exit 1 when the README block is stale")
    args = ap.parse_args(argv)
    new = update(args.readme, render(args.metrics_dir))
    if args.check:
        if new != args.readme.read_text():
            print(f"{args.readme}: results block is out of date; run `python -m ferpipe.readme`", file=sys.stderr)
            return 1
        return 0
    write_text(args.readme, new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
