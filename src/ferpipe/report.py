"""report stage: everything the pipeline measured -> one self-contained HTML page + Markdown.

    python -m ferpipe.report --out artifacts/report

Reads (each optional except the aggregate folder; a missing input becomes a note):
ingest_report.json, validation.json, split_summary.json, the aggregate folder
(<method>/<protocol>/summary.json + PNGs), the compare folder (compare.json, compare_oa.png;
absent until the compare stage has run), train_summary.json, the final model summary,
params.yaml, and the git commit + data hash (``ferpipe.tracking``).

Writes ``report.html`` (every figure embedded as a base64 ``data:`` URI, inline CSS, a
Content-Security-Policy that forbids any network load: it opens offline, from anywhere)
and ``report.md`` (the same tables; figures copied to ``figures/``). The published
numbers come from ``ferpipe.paper``. When the pipeline recorded an MLflow parent run,
the report is logged to it (artifact folder ``report``).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime as dt
import html
import io
import json
import logging
import platform
import re
import sys
from pathlib import Path
from typing import Any

from . import classes, config, evidence, paper, tracking
from .config import CLASSES
from .io import atomic_dir, read_run_record, write_bytes, write_json, write_text
from .metrics import UNDERFIT_BELOW, pm

log = logging.getLogger("ferpipe.report")

FIGURES = [  # aggregate PNGs: (file, caption); baselines get the ones marked True
    ("confusion_counts.png", "grand confusion matrix H (counts; rows true, columns predicted)", False),
    ("confusion_normalized.png", "grand confusion matrix, row-normalised (diagonal = sensitivity)", True),
    ("sensitivity_per_run.png", "per-class sensitivity across runs (paper Fig. 10)", False),
    ("oa_per_run.png", "overall accuracy per run (paper Fig. 11)", True),
]
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#1d1d1f;line-height:1.45}
h1{font-size:1.7em;border-bottom:2px solid #333;padding-bottom:.2em}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.88em}
th,td{border:1px solid #bbb;padding:.25em .55em;text-align:right}th{background:#eef1f5}
td:first-child,th:first-child{text-align:left}
caption{caption-side:top;text-align:left;font-weight:600;padding:.3em 0}
figure{margin:1em 0;display:inline-block;vertical-align:top;max-width:100%}
figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:.85em;color:#444}
.note{border:2px solid #d9822b;background:#fff6eb;padding:.6em 1em;margin:1em 0;border-radius:4px}
.note strong.title{color:#a04d00;display:block;margin-bottom:.3em}
.ok{color:#17692f;font-weight:600}.bad{color:#b00020;font-weight:600}
pre{background:#f5f5f7;padding:.6em;overflow-x:auto;font-size:.8em}
code{background:#f0f0f3;padding:0 .2em}
nav ul{columns:2}
"""
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


# ---------------------------------------------------------------- a tiny document model
@dataclasses.dataclass
class Heading:
    level: int
    text: str
    anchor: str = ""


@dataclasses.dataclass
class Para:
    text: str


@dataclasses.dataclass
class Table:
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclasses.dataclass
class Figure:
    name: str  # file name under figures/
    png: bytes
    caption: str


@dataclasses.dataclass
class Note:
    title: str
    items: list[str]


@dataclasses.dataclass
class Pre:
    text: str



def run_classes(agg: dict) -> tuple[str, ...]:
    """The class list of the aggregated results (the paper's seven for older summaries)."""
    for by_p in agg.values():
        for s in by_p.values():
            return tuple(s.get("classes", CLASSES))
    return CLASSES


def comparable(agg: dict) -> bool:
    """Published numbers are shown only for the paper's seven classes."""
    return classes.matches_paper(run_classes(agg))

def _inline_html(text: str) -> str:
    """Escape, then `code` and **bold** (the only markup the report's own text uses)."""
    s = html.escape(text)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)


def _cell(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def render_html(blocks: list, title: str) -> str:
    toc = [b for b in blocks if isinstance(b, Heading) and b.level == 2]
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
           f"<title>{html.escape(title)}</title>", f"<style>{CSS}</style></head><body>"]  # fmt: skip
    for b in blocks:
        if isinstance(b, Heading):
            anchor = f' id="{b.anchor}"' if b.anchor else ""
            out.append(f"<h{b.level}{anchor}>{_inline_html(b.text)}</h{b.level}>")
            if b.level == 1 and toc:
                items = "".join(f'<li><a href="#{h.anchor}">{html.escape(h.text)}</a></li>' for h in toc)
                out.append(f"<nav><ul>{items}</ul></nav>")
        elif isinstance(b, Para):
            out.append(f"<p>{_inline_html(b.text)}</p>")
        elif isinstance(b, Table):
            cap = f"<caption>{_inline_html(b.caption)}</caption>" if b.caption else ""
            head = "".join(f"<th>{html.escape(str(c))}</th>" for c in b.columns)
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in r) + "</tr>" for r in b.rows)
            out.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(b, Figure):
            uri = "data:image/png;base64," + base64.b64encode(b.png).decode("ascii")
            out.append(f'<figure><img src="{uri}" alt="{html.escape(b.caption, quote=True)}">'
                       f"<figcaption>{_inline_html(b.caption)}</figcaption></figure>")  # fmt: skip
        elif isinstance(b, Note):
            items = "".join(f"<li>{_inline_html(i)}</li>" for i in b.items)
            out.append(f'<div class="note" role="note"><strong class="title">{html.escape(b.title)}</strong>'
                       f"<ul>{items}</ul></div>")  # fmt: skip
        elif isinstance(b, Pre):
            out.append(f"<pre>{html.escape(b.text)}</pre>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def render_md(blocks: list) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            out += [b.text, ""]
        elif isinstance(b, Table):
            if b.caption:
                out += [f"**{b.caption}**", ""]
            out.append("| " + " | ".join(map(str, b.columns)) + " |")
            out.append("|" + "---|" * len(b.columns))
            out += ["| " + " | ".join(_cell(v).replace("|", "\\|") for v in r) + " |" for r in b.rows]
            out.append("")
        elif isinstance(b, Figure):
            out += [f"![{b.caption}](figures/{b.name})", "", f"*{b.caption}*", ""]
        elif isinstance(b, Note):
            out += [f"> **{b.title}**", ">"] + [f"> - {i}" for i in b.items] + [""]
        elif isinstance(b, Pre):
            out += ["```", b.text.rstrip("\n"), "```", ""]
    return "\n".join(out)


# ---------------------------------------------------------------- inputs
@dataclasses.dataclass
class Inputs:
    ingest_report: Path = config.INGEST_DIR / "ingest_report.json"
    validation: Path = config.VALIDATE_DIR / "validation.json"
    split_summary: Path = config.SPLIT_DIR / "split_summary.json"
    aggregate: Path = config.AGGREGATE_DIR
    compare: Path = config.COMPARE_DIR
    train_summary: Path = config.TRAIN_DIR / "train_summary.json"
    final_model: Path = Path("artifacts/final_model")
    params: list[Path] = dataclasses.field(default_factory=lambda: [config.PARAMS_FILE])
    data_dvc: Path = Path("data.dvc")
    mlflow_record: Path = config.TRAIN_DIR / "mlflow.json"
    baselines_summary: Path = config.BASELINES_DIR / "baselines_summary.json"
    finetune_evidence: Path = config.METRICS_DIR / "cpu_finetune.json"


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        log.info("report: %s not used (%s)", path, exc.__class__.__name__)
        return None


def method_order(methods) -> list[str]:
    rank = {"hwt": 1, "cso": 2, "bbo": 3}
    return sorted(methods, key=lambda m: (0 if m.startswith("resnet50") else rank.get(m, 4), m))


def load_aggregate(agg: Path) -> dict[str, dict[str, dict]]:
    """{method: {protocol: summary}} from <method>/<protocol>/summary.json."""
    out: dict[str, dict[str, dict]] = {}
    for f in sorted(Path(agg).glob("*/*/summary.json")):
        s = read_json(f)
        if s and "oa_per_run" in s:
            out.setdefault(f.parent.parent.name, {})[f.parent.name] = s
    return {m: out[m] for m in method_order(out)}


# ---------------------------------------------------------------- figures made here
def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def fig_oa_vs_paper(resnet: dict[str, dict[str, dict]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    series = [("paper (Li & Lima 2021)", list(range(1, 11)), paper.OA_PER_RUN)]
    for m, by_p in resnet.items():
        for proto, s in by_p.items():
            series.append((f"{m} / {proto}", s["runs"], s["oa_per_run"]))
    fig, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.8 / len(series)
    for k, (label, runs, oa) in enumerate(series):
        ax.bar(np.asarray(runs) + (k - (len(series) - 1) / 2) * width, oa, width, label=label)
    ax.set_xlabel("run")
    ax.set_ylabel("OA (%)")
    ax.set_ylim(0, 100)
    ax.set_xticks(range(1, 1 + max(max(r) for _, r, _ in series)))
    ax.set_title("Overall accuracy per run: paper Table 2 vs this reproduction")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _png(fig)


def fig_sensitivity_vs_paper(resnet: dict[str, dict[str, dict]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cls = run_classes(resnet)
    series = [("paper (Li & Lima 2021)", [paper.SENSITIVITY_TOTAL[c][0] for c in cls],
               [paper.SENSITIVITY_TOTAL[c][1] for c in cls])] if comparable(resnet) else []  # fmt: skip
    for m, by_p in resnet.items():
        for proto, s in by_p.items():
            series.append((f"{m} / {proto}", [s["sensitivity_mean"][c] for c in cls],
                           [s["sensitivity_std"][c] for c in cls]))  # fmt: skip
    fig, ax = plt.subplots(figsize=(8, 3.8))
    x = np.arange(len(cls))
    width = 0.8 / len(series)
    for k, (label, mean, std) in enumerate(series):
        ax.bar(x + (k - (len(series) - 1) / 2) * width, mean, width, yerr=std, capsize=2, label=label)
    ax.set_xticks(x, cls, rotation=20)
    ax.set_ylabel("sensitivity (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Per-class sensitivity, mean ± std over runs: paper Table 1 vs this reproduction")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _png(fig)


# ---------------------------------------------------------------- sections
def protocol_note(train_summary: dict | None) -> Note:
    mode = ((train_summary or {}).get("config") or {}).get("mode", "frozen")
    items = [
        "**`stratified`** is the paper's protocol: the 10 groups are built image by image, each with "
        "the same number of images per emotion. JAFFE (like the paper's set) holds several shots of the "
        "same person making the same expression, so near-identical photos of one person fall in both "
        "train and test. This measures recognition of people already seen and is optimistic.",
        "**`subject`** is person-independent: each group holds whole subjects, so no test person is ever "
        "seen in training (stratified by emotion as far as whole subjects allow). It is the number to "
        "expect on new people. With as many groups as subjects (JAFFE: 10 and 10) every run is the same "
        "leave-one-subject-out split: its ± over runs reflects only the validation group, and the tests "
        "count that split once.",
        paper.DATASET_NOTE,
        paper.TABLE3_NOTE,
    ]
    if mode == "frozen":
        items.append("Method: `train.mode: frozen` keeps the ImageNet ResNet-50 backbone fixed and fits a "
                     "logistic-regression head (a CPU-feasible approximation); the paper fine-tunes all layers "
                     "(`train.mode: finetune`, a GPU job).")  # fmt: skip
    return Note("Protocol differences — read before comparing with the paper", items)


def dataset_section(inp: Inputs) -> list:
    blocks: list = [Heading(2, "Dataset and data contract", "dataset")]
    ing = read_json(inp.ingest_report)
    if ing:
        rows = [["dataset", ing.get("dataset")], ["layout", ing.get("layout")], ["images", ing.get("n_images")],
                ["subjects", ing.get("n_subjects")], ["image size", ing.get("image_size")],
                ["face crop", ing.get("face_crop")], ["faces not found", ing.get("faces_not_found")],
                ["dropped labels", json.dumps(ing.get("dropped_labels") or {})],
                ["ingest time (s)", read_run_record(Path(inp.ingest_report).parent).get("seconds")]]  # fmt: skip
        blocks.append(Table(["ingest", "value"], rows, "Ingest"))
        counts = ing.get("class_counts") or {}
        cls = ing.get("classes") or list(counts) or CLASSES
        blocks.append(Table(["", *cls, "total"], [["images", *(counts.get(c, 0) for c in cls),
                                                       sum(counts.values())]], "Images per class"))  # fmt: skip
    else:
        blocks.append(Para(f"Ingest report `{inp.ingest_report}` not found."))
    val = read_json(inp.validation)
    if val:
        exps = val.get("expectations") or []
        n_bad = sum(1 for e in exps if not e.get("success"))
        verdict = "PASSED" if val.get("success") else "FAILED"
        blocks.append(Para(f"Validation (Great Expectations data contract): **{verdict}** — {len(exps) - n_bad} of "
                           f"{len(exps)} expectations met; duplicate sources: {len(val.get('duplicate_sources') or [])}."))  # fmt: skip
        failures = val.get("failures") or []
        if failures:
            blocks.append(Table(["failure"], [[json.dumps(f) if not isinstance(f, str) else f] for f in failures],
                                "Validation failures"))  # fmt: skip
    else:
        blocks.append(Para(f"Validation result `{inp.validation}` not found."))
    sp = read_json(inp.split_summary)
    if sp:
        prm = sp.get("params") or {}
        rows = []
        for proto in prm.get("protocols", []):
            runs = {k: v for k, v in (sp.get("runs") or {}).items() if k.startswith(f"{proto}/")}
            sizes = [n for v in runs.values() for n in v.get("group_sizes", [])]
            rows.append([proto, len(runs), prm.get("n_groups"), f"{min(sizes)}–{max(sizes)}" if sizes else "—",
                         f"{min(v.get('per_class_min', 0) for v in runs.values())}–"
                         f"{max(v.get('per_class_max', 0) for v in runs.values())}" if runs else "—"])  # fmt: skip
        blocks.append(Table(["protocol", "runs", "groups", "images per group", "images per class per group"], rows,
                            f"Split plan (seed {prm.get('seed')}; fold k: group k tests, one group validates, the rest train)"))  # fmt: skip
    else:
        blocks.append(Para(f"Split summary `{inp.split_summary}` not found."))
    return blocks


def headline_section(agg: dict, compare: dict | None) -> list:
    rows = []
    for m, by_p in agg.items():
        pub = paper.TABLE3.get(paper.published_key(m)) if comparable(agg) else None
        for proto, s in by_p.items():
            rows.append([m, proto, len(s["runs"]), pm(s["oa_mean"], s["oa_std"]), f"{s['grand_oa']:.2f}"
                         if isinstance(s.get("grand_oa"), (int, float)) else None,
                         pm(*pub) if pub else None,
                         f"{s['oa_mean'] - pub[0]:+.2f}" if pub and proto == "stratified" else None])  # fmt: skip
    return [Heading(2, "Headline results", "headline"),
            Table(["method", "protocol", "runs", "OA mean ± std (%)", "grand OA (%)", "published OA (%)",
                   "difference (pp)"], rows, "Overall accuracy: this reproduction vs the published Table 3 value "
                   "(the paper only has the image-level protocol, so the difference is given for `stratified` only)")]  # fmt: skip


def protocol_measures_section(agg: dict, split_summary: dict | None, compare: dict | None) -> list:
    """What each protocol's OA means: the sibling shares (split's audit), every method's
    accuracy with and without a sibling in training (aggregate), the memorisation floor."""
    shares = (split_summary or {}).get("protocol_audit") or {}
    blocks: list = [Heading(2, "What this protocol measures", "protocol-audit")]
    floor = {p: s["oa_mean"] for p, s in agg.get("nn_pixels", {}).items()}
    for proto, a in shares.items():
        share = a.get("sibling_in_train_share")
        if share is None:
            blocks.append(Para(f"Protocol `{proto}`: {a.get('why_unknown')}. Median highest pixel similarity of a test "
                               f"image to the training images: {a['max_pixel_similarity_median']:.3f}."))  # fmt: skip
            continue
        text = (f"Protocol `{proto}`: {100 * share:.1f} % of the test images have a sibling (same person, same "
                f"expression) among their fold's training images, {100 * a['subject_in_train_share']:.1f} % the same "
                f"person; median highest pixel similarity to a training image {a['max_pixel_similarity_median']:.3f}.")
        if proto in floor:
            text += (f" The memorisation floor (`nn_pixels`: 1-nearest-neighbour on raw pixels, which learns no "
                     f"expression) scores {floor[proto]:.2f} % here.")  # fmt: skip
        below = ((compare or {}).get(proto) or {}).get("not_above_floor")
        if below:
            text += f" Not significantly above that floor (corrected t-test): {', '.join(below)}."
        blocks.append(Para(text))
        rows = [[m, f"{by_p[proto]['oa_mean']:.2f}", *(f"{d['accuracy']:.2f} (n={d['n']})" if d["accuracy"] is not None
                                                        else "—" for d in by_p[proto]["protocol_audit"].values())]
                for m, by_p in agg.items() if proto in by_p and by_p[proto].get("protocol_audit")]  # fmt: skip
        if rows:
            blocks.append(Table(["method", "OA (%)", "accuracy: test images with a sibling in training (%)",
                                 "without (%)"], rows, f"Protocol {proto}: accuracy split by the audit"))  # fmt: skip
    if floor:
        blocks.append(Para("On a protocol where the memorisation floor is high, an OA is mostly a measure of "
                           "recognising people already seen; the person-independent (`subject`) number is the one "
                           "that transfers to new people."))  # fmt: skip
    return blocks if len(blocks) > 1 else []


def table2_section(resnet: dict) -> list:
    if not comparable(resnet):  # other classes: the paper's per-run OA is not a reference
        return []
    cols = ["run", "paper"]
    series = []
    for m, by_p in resnet.items():
        for proto, s in by_p.items():
            cols.append(f"{m} / {proto}")
            series.append(dict(zip(s["runs"], s["oa_per_run"], strict=True)) | {"total": pm(s["oa_mean"], s["oa_std"])})
    n = max([10, *(max(k for k in d if k != "total") for d in series)]) if series else 10
    rows = []
    for r in range(1, n + 1):
        rows.append([f"r{r}", paper.OA_PER_RUN[r - 1] if r <= len(paper.OA_PER_RUN) else None,
                     *(d.get(r) for d in series)])  # fmt: skip
    rows.append(["Total", pm(*paper.OA_TOTAL), *(d["total"] for d in series)])
    return [Heading(2, "Table 2: overall accuracy per run", "table2"),
            Table(cols, rows, "OA (%) per run; Total = mean ± sample std over runs (paper Table 2 next to ours)")]


def table1_section(resnet: dict) -> list:
    blocks: list = [Heading(2, "Table 1: per-class sensitivity per run", "table1")]
    cls, with_paper = run_classes(resnet), comparable(resnet)
    if with_paper:
        rows = [[f"r{r}", *v] for r, v in enumerate(paper.SENSITIVITY_PER_RUN, 1)]
        rows.append(["Total", *(pm(*paper.SENSITIVITY_TOTAL[c]) for c in cls)])
        blocks.append(Table(["run", *cls], rows, "Paper (Li & Lima 2021, Table 1): sensitivity (%), 100 test images per class per run"))
    else:
        blocks.append(Para(f"Classes of this run: {', '.join(cls)}: not the paper's seven, so the paper's "
                           "per-class numbers are not shown."))  # fmt: skip
    for m, by_p in resnet.items():
        for proto, s in by_p.items():
            rows = [[f"r{r}", *v] for r, v in zip(s["runs"], s["sensitivity_per_run"], strict=True)]
            rows.append(["Total", *(pm(s["sensitivity_mean"][c], s["sensitivity_std"][c]) for c in cls)])
            blocks.append(Table(["run", *cls], rows, f"This reproduction: {m}, protocol {proto}"))
    rows = [["paper", *(pm(*paper.SENSITIVITY_TOTAL[c]) for c in cls)]] if with_paper else []
    for m, by_p in resnet.items():
        for proto, s in by_p.items():
            rows.append([f"{m} / {proto}", *(pm(s["sensitivity_mean"][c], s["sensitivity_std"][c]) for c in cls)])
    blocks.append(Table(["", *cls], rows, "Total rows side by side: sensitivity mean ± std (%)"))
    return blocks


def table3_section(agg: dict, compare: dict | None, compare_dir: Path, figures: list) -> list:
    blocks: list = [Heading(2, "Table 3: comparison with the published methods", "table3")]
    protocols = sorted({p for by_p in agg.values() for p in by_p})
    if compare:
        protocols = [p for p in compare if isinstance(compare[p], dict)] or protocols
    else:
        blocks.append(Para(f"The compare stage output (`{compare_dir}/compare.json`) is not there yet: the table below "
                           "is built from the aggregate summaries, without significance tests."))  # fmt: skip
    for proto in protocols:
        rows = []
        methods = (compare or {}).get(proto, {}).get("methods") if compare else None
        if methods:
            for r in methods:
                pub = (r.get("published_oa"), r.get("published_std"))
                rows.append([r.get("method"), pm(*pub) if None not in pub else None,
                             pm(r["oa_mean"], r["oa_std"]), r.get("n_runs")])  # fmt: skip
        else:
            for m, by_p in agg.items():
                if proto in by_p:
                    s, pub = by_p[proto], paper.TABLE3.get(paper.published_key(m))
                    rows.append([m, pm(*pub) if pub else None, pm(s["oa_mean"], s["oa_std"]), len(s["runs"])])
        blocks.append(Table(["method", "published OA (%)", "reproduced OA (%)", "runs"], rows,
                            f"Protocol {proto}: published (each method's own paper, quoted in Li & Lima Table 3) "
                            "vs reproduced on the same folds"))  # fmt: skip
        blocks += [Para(w) for w in (compare or {}).get(proto, {}).get("warnings", [])]  # compare's own wording
        tests = (compare or {}).get(proto, {}).get("paired_tests") if compare else None
        if tests:
            def fp(p):
                return "n/a" if p is None else (f"{p:.2e}" if p < 1e-3 else f"{p:.3f}")

            rows = [[name, f"{t.get('mean_difference', 0):+.2f}", t.get("n_distinct_groupings"),
                     fp(t.get("corrected_p")), t.get("verdict"), fp(t.get("ttest_p")), fp(t.get("wilcoxon_p"))]
                    for name, t in tests.items()]  # fmt: skip
            k = (compare or {}).get(proto, {}).get("n_distinct_groupings")
            blocks.append(Table(["comparison", "mean OA difference (pp)", "distinct groupings", "corrected t p",
                                 "verdict", "plain paired t p", "plain Wilcoxon p"], rows,
                                f"Protocol {proto}: {k} distinct grouping(s) of the images. The corrected resampled "
                                "t-test (Nadeau & Bengio 2003) over folds decides; the plain tests over runs treat "
                                "runs as independent and are optimistic; a split repeated by several runs counts "
                                "once"))  # fmt: skip
    published = [[paper.TABLE3_NAMES.get(k, k), pm(*v)] for k, v in paper.TABLE3.items()]
    blocks.append(Table(["method (paper)", "published OA (%)"], published, "Paper Table 3 as published"))
    png = Path(compare_dir) / "compare_oa.png"
    if png.exists():
        fig = Figure("compare_oa.png", png.read_bytes(), "OA mean ± std per method: reproduced vs published (compare stage)")
        blocks.append(fig)
        figures.append(fig)
    return blocks


def baselines_section(agg: dict, summary: dict | None) -> list:
    """What each baseline did, in the words of the settings that ran, and how well it fit its training set."""
    if not summary or not summary.get("methods"):
        return []
    rows = []
    for m, s in summary["methods"].items():
        fits = []
        for proto, by in agg.get(m, {}).items():
            ta = by.get("training_accuracy")
            if ta:
                fits.append(f"{proto}: mean {ta['mean']:.3f}, {ta['n_folds_below']}/{ta['of']} folds below {ta['threshold']}")
        rows.append([m, s.get("description"), "; ".join(fits) or None])
    return [Heading(2, "The baselines as run", "baselines"),
            Para("Re-implemented from their papers and run on the same folds as ResNet-50. What each source paper "
                 "states, what we chose where it is silent and why: docs/baselines.md. A network that does not fit "
                 f"its own training set (training accuracy below {UNDERFIT_BELOW}) is under-trained, and its test "
                 "accuracy understates the method."),
            Table(["method", "what ran", "training accuracy (resubstitution)"], rows, "Baselines: settings and fit")]


def finetune_evidence_section(ev: dict | None) -> list:
    """The committed fine-tuning evidence (ferpipe.evidence): its OA and same-fold McNemar tests."""
    if not ev or "comparisons" not in ev:
        return []
    prov = ev.get("provenance", {})
    cfg = prov.get("train_config", {})
    return [Heading(2, "The paper's method: fine-tuned ResNet-50 (committed CPU evidence)", "finetune"),
            Para(f"From `metrics/cpu_finetune.json` (`make cpu-evidence`): fine-tuned at {cfg.get('image_size')} px, "
                 f"{cfg.get('epochs')} epochs, 1 run x 10 folds per protocol: a reduced size of the paper's 224 px "
                 f"and 10 runs, sized for a CPU. Commit `{prov.get('git_commit')}`, CPU {prov.get('cpu')}, "
                 f"fine-tuning wall time {prov.get('train_wall_s_last_invocation')} s. Each comparison pairs the "
                 "same images of the same run and folds; McNemar's exact test on the images only one method got "
                 "right (each image is tested once in a run, so the pairs are independent)."),
            Table(evidence.COMPARISON_COLUMNS, evidence.comparison_rows(ev), "Fine-tuned ResNet-50 vs the others, same folds")]  # fmt: skip


def figures_section(agg: dict, resnet: dict, agg_dir: Path, figures: list) -> list:
    blocks: list = [Heading(2, "Figures", "figures")]
    if resnet:
        for name, png, cap in (("paper_vs_ours_oa.png", fig_oa_vs_paper(resnet), "OA per run: paper vs ours"),
                               ("paper_vs_ours_sensitivity.png", fig_sensitivity_vs_paper(resnet),
                                "Per-class sensitivity: paper vs ours (mean ± std over runs)")):  # fmt: skip
            fig = Figure(name, png, cap)
            blocks.append(fig)
            figures.append(fig)
    for m, by_p in agg.items():
        for proto, s in by_p.items():
            blocks.append(Heading(3, f"{m} — protocol {proto}"))
            if m.startswith("resnet50"):
                grand = s.get("grand_matrix")
                if grand:
                    cls = s.get("classes", CLASSES)
                    blocks.append(Table(["true \\ predicted", *cls], [[c, *row] for c, row in zip(cls, grand, strict=True)],
                                        f"Grand confusion matrix H, {len(s['runs'])} runs (counts)"))  # fmt: skip
            for fname, cap, for_baselines in FIGURES:
                if not (m.startswith("resnet50") or for_baselines):
                    continue
                png = Path(agg_dir) / m / proto / fname
                if png.exists():
                    fig = Figure(f"{m}_{proto}_{fname}", png.read_bytes(), f"{m} ({proto}): {cap}")
                    blocks.append(fig)
                    figures.append(fig)
    return blocks


def final_model_section(folder: Path) -> list:
    s = read_json(Path(folder) / "final_model_summary.json")
    if not s:
        return []
    run = read_run_record(folder)
    rows = [["method", s.get("method")], ["trained on", "all ingested images (image + flip)" if s.get("mode") == "frozen"
                                          else "all ingested images"],
            ["head C", s.get("C")], ["C chosen by", (s.get("choice") or {}).get("source")],
            ["training accuracy (resubstitution, not an estimate)", s.get("train_accuracy")],
            ["fused head vs sklearn, max |Δp|", s.get("fusion_max_abs_diff")],
            ["training time (s)", (run.get("timings_s") or {}).get("total_s")]]  # fmt: skip
    ml = run.get("mlflow") or {}
    if ml:
        rows += [["MLflow model", ml.get("registered_uri") or ml.get("model_uri")], ["model version", ml.get("version")]]
    rows = [[k, f"{v:.4g}" if isinstance(v, float) else v] for k, v in rows]
    return [Heading(2, "Final model", "final-model"), Table(["", "value"], rows, "The model `ferpipe.predict` and the server use"),
            Para("Use: `python -m ferpipe.predict PHOTO.jpg` or the REST front door `make serve` "
                 f"(`python -m ferpipe.rest --model models:/{ml.get('registered_model', 'ferpipe-resnet50')}"
                 f"@{ml.get('alias', 'champion')}`).")]  # fmt: skip


def fig_ood_distances(distances: list[float], threshold: float) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    ax.hist(distances, bins=30, color="#4a6fa5")
    ax.axvline(threshold, color="#b00020", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("cosine distance to the nearest training image")
    ax.set_ylabel("held-out test images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def ood_section(summary: dict | None, figures: list) -> list:
    """How far served photos may lie from the training images before they are flagged."""
    cal = (summary or {}).get("ood") or {}
    if not cal.get("calibrated"):
        return [Heading(2, "Out-of-distribution flag", "ood"), Para(f"Not calibrated: {cal.get('why', 'no final model')}.")]
    rows = [["threshold (cosine distance)", f"{cal['threshold']:.4f}"],
            ["calibrated on", f"validation images of {cal['folds']} folds, protocol {cal['protocol']}, run {cal['run']} "
                              f"({cal['n_validation']} images, {100 * cal['alpha']:.0f} % allowed above)"],
            ["validation images flagged", f"{100 * cal['validation_flag_rate']:.1f} %"],
            ["test images flagged (not used to set it)", f"{100 * cal['test_flag_rate']:.1f} % of {cal['n_test']}"],
            *[[f"test distance {k}", f"{v:.4f}"] for k, v in cal["test_distance_quantiles"].items()]]  # fmt: skip
    fig = Figure("ood_test_distances.png", fig_ood_distances(cal["test_distances"], cal["threshold"]),
                 "Distances of held-out test images to their fold's training images, and the threshold")
    figures.append(fig)
    return [Heading(2, "Out-of-distribution flag", "ood"),
            Para("Every prediction carries `ood_distance`: the cosine distance of the photo's standardised "
                 "ResNet-50 features to the nearest training image, and `out_of_distribution` when it is above a "
                 f"threshold set on held-out validation images of the `{cal['protocol']}` folds (`ferpipe.ood`). "
                 "A flagged photo is unlike anything the model was trained on; its label deserves little trust."),
            Table(["", "value"], rows, "Calibration (final_model stage)"), fig]  # fmt: skip


def config_hash_rows(train: dict | None) -> list[list]:
    h = (train or {}).get("config_hash")
    if isinstance(h, dict):  # one per method the train stage ran
        return [[f"train config hash: {m}", v] for m, v in h.items()]
    return [["train config hash", h]]


def metadata_section(inp: Inputs, train: dict | None, raw_params: dict, parent: str | None) -> list:
    import importlib.metadata as md

    versions = []
    for pkg in ("torch", "torchvision", "mlflow", "dvc", "numpy", "scikit-learn", "pandas"):
        try:
            versions.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            pass
    rows = [["git commit", tracking.git_commit()], ["data hash (data.dvc md5)", tracking.data_hash(inp.data_dvc)],
            ["MLflow parent run", parent], ["tracking store", tracking.tracking_uri() if parent else None],
            *config_hash_rows(train),
            ["python", platform.python_version()], ["packages", ", ".join(versions)],
            ["generated (UTC)", dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")]]  # fmt: skip
    blocks: list = [Heading(2, "Run metadata", "metadata"), Table(["", "value"], rows, "Provenance")]
    timing_rows = []  # from the stages' run records (run.json), which DVC does not hash
    ing = read_run_record(Path(inp.ingest_report).parent)
    if "seconds" in ing:
        timing_rows.append(["ingest", "total_s", ing["seconds"]])
    tr = read_run_record(Path(inp.train_summary).parent)
    label = "train (" + ", ".join(tr.get("methods") or [tr.get("method", "?")]) + ")"
    for k, v in (tr.get("timings_s") or {}).items():
        timing_rows.append([label, k, v])
    if tr:
        timing_rows.append([label, "folds computed / resumed",
                            f"{tr.get('n_computed')} / {tr.get('n_resumed')}"])  # fmt: skip
    fm = read_run_record(inp.final_model)
    for k, v in (fm.get("timings_s") or {}).items():
        timing_rows.append(["final_model", k, v])
    if timing_rows:
        blocks.append(Table(["stage", "timing", "seconds"], timing_rows, "Timings (train timings cover this invocation; resumed folds cost nothing)"))
    import yaml

    blocks.append(Para("Parameters (`params.yaml`, as resolved by this report):"))
    blocks.append(Pre(yaml.safe_dump(raw_params, sort_keys=False)))
    return blocks


def build(inp: Inputs) -> tuple[list, list[Figure], dict]:
    agg = load_aggregate(inp.aggregate)
    if not agg:
        raise FileNotFoundError(f"{inp.aggregate}: no <method>/<protocol>/summary.json (run the aggregate stage)")
    resnet = {m: by_p for m, by_p in agg.items() if m.startswith("resnet50")}
    compare = read_json(Path(inp.compare) / "compare.json")
    train = read_json(inp.train_summary)
    raw_params = config.read_params_files(inp.params) if all(Path(p).exists() for p in inp.params) else {}
    parent = tracking.parent_run_id(inp.mlflow_record)
    figures: list[Figure] = []
    title = "Facial expression recognition via ResNet-50 (Li & Lima 2021): reproduction report"
    blocks: list = [
        Heading(1, title),
        Para(f"Generated by `ferpipe.report` from the pipeline's outputs. Paper: Li & Lima, Int. J. Cognitive "
             f"Computing in Engineering 2 (2021), doi:10.1016/j.ijcce.2021.02.002. Git commit `{tracking.git_commit()}`, "
             f"data hash `{tracking.data_hash(inp.data_dvc)}`."),  # fmt: skip
        protocol_note(train),
    ]
    blocks += headline_section(agg, compare)
    blocks += protocol_measures_section(agg, read_json(inp.split_summary), compare)
    blocks += dataset_section(inp)
    if resnet:
        blocks += table2_section(resnet)
        blocks += table1_section(resnet)
    blocks += table3_section(agg, compare, inp.compare, figures)
    blocks += baselines_section(agg, read_json(inp.baselines_summary))
    blocks += finetune_evidence_section(read_json(inp.finetune_evidence))
    blocks += figures_section(agg, resnet, inp.aggregate, figures)
    blocks += final_model_section(inp.final_model)
    blocks += ood_section(read_json(Path(inp.final_model) / "final_model_summary.json"), figures)
    blocks += metadata_section(inp, train, raw_params, parent)
    info = {"methods": list(agg), "protocols": sorted({p for b in agg.values() for p in b}),
            "compare_included": compare is not None, "n_figures": len(figures), "mlflow_parent_run_id": parent}  # fmt: skip
    return blocks, figures, info


def write_report(inp: Inputs, out: Path) -> dict:
    blocks, figures, info = build(inp)
    title = next(b.text for b in blocks if isinstance(b, Heading))
    page = render_html(blocks, title)
    with atomic_dir(out) as tmp:
        write_text(tmp / "report.html", page)
        write_text(tmp / "report.md", render_md(blocks))
        for f in figures:
            write_bytes(tmp / "figures" / f.name, f.png)
        info["html_bytes"] = len(page.encode())
        write_json(tmp / "report.json", info)
    return info


def log_report(parent: str, out: Path) -> None:
    try:
        tracking.log_parent_results(parent, {}, [out / "report.html", out / "report.md"], "report")
    except Exception as exc:  # noqa: BLE001 - the report itself is written; MLflow is a copy
        log.warning("report: could not log to MLflow run %s: %s", parent, exc)


def main(argv: list[str] | None = None) -> int:
    d = Inputs()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=config.REPORT_DIR, help="output folder (report.html, report.md, figures/)")
    ap.add_argument("--ingest-report", type=Path, default=d.ingest_report, help="ingest_report.json")
    ap.add_argument("--validation", type=Path, default=d.validation, help="validation.json from the validate stage")
    ap.add_argument("--split-summary", type=Path, default=d.split_summary, help="split_summary.json from split")
    ap.add_argument("--aggregate", type=Path, default=d.aggregate, help="aggregate folder (<method>/<protocol>/...)")
    ap.add_argument("--compare", type=Path, default=d.compare, help="compare folder (optional: compare.json, compare_oa.png)")
    ap.add_argument("--train-summary", type=Path, default=d.train_summary,
                    help="train_summary.json (timings, config hash)")
    ap.add_argument("--final-model", type=Path, default=d.final_model, help="final model folder (optional)")
    ap.add_argument("--params", type=Path, nargs="+", default=d.params, help="params file(s) shown in the report")
    ap.add_argument("--data-dvc", type=Path, default=d.data_dvc, help="the .dvc file whose md5 is the data hash")
    ap.add_argument("--mlflow-record", type=Path, default=d.mlflow_record,
                    help="where the train stage recorded the MLflow parent run (the report is logged there)")
    ap.add_argument("--baselines-summary", type=Path, default=d.baselines_summary,
                    help="baselines_summary.json from the baselines stage (optional: what each baseline ran)")  # fmt: skip
    ap.add_argument("--finetune-evidence", type=Path, default=d.finetune_evidence,
                    help="committed fine-tuning evidence from ferpipe.evidence (optional)")
    ap.add_argument("--no-mlflow", action="store_true", help="do not log the report to the MLflow parent run")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    inp = Inputs(args.ingest_report, args.validation, args.split_summary, args.aggregate, args.compare,
                 args.train_summary, args.final_model, list(args.params), args.data_dvc, args.mlflow_record,
                 args.baselines_summary, args.finetune_evidence)  # fmt: skip
    try:
        info = write_report(inp, args.out)
    except (FileNotFoundError, config.ParamsError, tracking.ParentRunError) as exc:
        print(f"report: error: {exc}", file=sys.stderr)
        return 2
    if info.get("mlflow_parent_run_id") and not args.no_mlflow:
        with tracking.stage_status(info["mlflow_parent_run_id"], "report"):
            log_report(info["mlflow_parent_run_id"], args.out)
    print(f"report: {args.out / 'report.html'} ({info['html_bytes'] / 1e6:.2f} MB, {info['n_figures']} figures, "
          f"compare {'included' if info['compare_included'] else 'absent'})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
