"""CI reproduction gate: fresh metrics against the committed ones, within tolerances.

    git show HEAD:metrics/metrics.json > /tmp/committed.json    # before the reproduction
    dvc repro -f                                                # rewrites metrics/metrics.json
    python -m pipeline.gate --committed /tmp/committed.json --fresh metrics/metrics.json \\
        --tolerances params.yaml --dvc-diff

Several pairs at once: ``--committed A B --fresh A2 B2`` (paired in order).
``python -m pipeline.reproduce`` does the whole check (save, reproduce, profiles, gate).

The metrics files are the ones ``ferpipe.aggregate`` writes:
``{method: {protocol: {oa_mean, oa_std, n_runs, sensitivity_mean: {class: ...}}}}``.
Every gated metric (``gate.metrics``, default the OA mean) of every (method, protocol)
fails the gate (exit 1) when it moved by more than its tolerance, in percentage points.
A (method, protocol) present on one side only, a missing or non-finite metric, or a
different number of runs (not the same protocol) fails too. Exit 2: unreadable input.

Tolerances (params.yaml section ``gate``, or ``--tol PATTERN=PP``)::

    gate:
      tolerances:                # max |reproduced - committed|, percentage points
        resnet50_gap: 0.5        # deterministic CPU features + head: only hardware drift
        resnet50_finetune: 5.0   # training noise across machines (bf16 / kernels)
        default: 1.0
      metrics: [oa_mean]         # dotted paths also work, e.g. sensitivity_mean.anger

Keys are glob patterns matched against ``method/protocol`` or ``method`` (e.g.
``hwt``, ``resnet50_*``, ``*/subject``); the most specific key wins (no wildcard before
wildcard, then the longest); ``default`` applies when none matches.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ferpipe import config
from ferpipe.config import ParamsError, register_section

DEFAULT_TOLERANCES = {"resnet50_gap": 0.5, "resnet50_spatial": 0.5, "resnet50_finetune": 5.0, "default": 1.0}


@register_section("gate")
@dataclasses.dataclass
class GateParams:
    tolerances: dict[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_TOLERANCES))
    metrics: list[str] = dataclasses.field(default_factory=lambda: ["oa_mean"])
    check_n_runs: bool = True  # a different run count is a different protocol: fail

    def check(self):
        for key, value in self.tolerances.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or not math.isfinite(value):
                raise ParamsError(f"params.yaml: gate.tolerances.{key}: expected a number >= 0, got {value!r}")
        self.tolerances = {str(k): float(v) for k, v in self.tolerances.items()}
        if not self.metrics:
            raise ParamsError("params.yaml: gate.metrics: expected at least one metric name")

    def tolerance(self, method: str, protocol: str) -> float | None:
        keys = [k for k in self.tolerances if k != "default"
                and (fnmatch.fnmatchcase(f"{method}/{protocol}", k) or fnmatch.fnmatchcase(method, k))]  # fmt: skip
        if keys:
            best = min(keys, key=lambda k: (any(c in k for c in "*?["), -len(k)))
            return self.tolerances[best]
        return self.tolerances.get("default")


@dataclasses.dataclass
class Row:
    metric: str
    committed: float | None
    reproduced: float | None
    tolerance: float | None
    ok: bool
    note: str = ""

    @property
    def delta(self) -> float | None:
        if self.committed is None or self.reproduced is None:
            return None
        return self.reproduced - self.committed

    @property
    def verdict(self) -> str:
        return ("ok" if self.ok else "FAIL") + (f" ({self.note})" if self.note else "")


class GateInputError(ValueError):
    """A metrics or tolerances file that cannot be read."""


def load_metrics(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise GateInputError(f"{path}: metrics file not found") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise GateInputError(f"{path}: not a readable JSON metrics file: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise GateInputError(f"{path}: expected {{method: {{protocol: {{...}}}}}} as written by ferpipe.aggregate")
    return data


def is_aggregate_metrics(data) -> bool:
    """True for the ``ferpipe.aggregate`` layout {method: {protocol: {oa_mean, ...}}} (what the gate reads)."""
    return (isinstance(data, dict) and bool(data)
            and all(isinstance(ps, dict) and ps and all(isinstance(d, dict) and "oa_mean" in d for d in ps.values())
                    for ps in data.values()))  # fmt: skip


def load_gate_params(paths: list[Path | str] | None, overrides: list[str] | None = None) -> GateParams:
    """The ``gate`` section of params file(s) (a file holding only the section works too)."""
    raw: dict[str, Any] = {}
    if paths:
        try:
            merged = config.read_params_files([str(p) for p in paths])
        except ParamsError as exc:
            raise GateInputError(str(exc)) from None
        if "gate" in merged:
            raw = dict(merged["gate"] or {})
        elif "tolerances" in merged:
            raw = {k: v for k, v in merged.items() if k in {f.name for f in dataclasses.fields(GateParams)}}
    for item in overrides or []:
        pattern, sep, value = item.partition("=")
        try:
            raw.setdefault("tolerances", dict(DEFAULT_TOLERANCES))
            raw["tolerances"] = {**raw["tolerances"], pattern.strip(): float(value)}
        except ValueError:
            raise GateInputError(f"--tol {item!r}: expected PATTERN=PERCENTAGE_POINTS, e.g. resnet50_*=0.5") from None
        if not sep or not pattern.strip():
            raise GateInputError(f"--tol {item!r}: expected PATTERN=PERCENTAGE_POINTS")
    try:
        return config.parse_section("gate", raw, GateParams)
    except ParamsError as exc:
        raise GateInputError(str(exc)) from None


def _get(d: dict, dotted: str):
    cur: Any = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    if isinstance(cur, bool) or not isinstance(cur, int | float):
        return None
    return float(cur)


def compare(committed: dict, fresh: dict, gp: GateParams, label: str = "") -> list[Row]:
    rows: list[Row] = []
    pre = f"{label}:" if label else ""
    keys = sorted({(m, p) for m, ps in committed.items() for p in ps} | {(m, p) for m, ps in fresh.items() for p in ps})
    for method, protocol in keys:
        c = committed.get(method, {}).get(protocol)
        f = fresh.get(method, {}).get(protocol)
        tol = gp.tolerance(method, protocol)
        for metric in gp.metrics:
            name = f"{pre}{method}/{protocol}/{metric}"
            cv = _get(c, metric) if isinstance(c, dict) else None
            fv = _get(f, metric) if isinstance(f, dict) else None
            if c is None:
                rows.append(Row(name, None, fv, tol, False, "not in the committed metrics: commit them"))
            elif f is None:
                rows.append(Row(name, cv, None, tol, False, "missing from the reproduction"))
            elif cv is None or fv is None:
                side = "committed" if cv is None else "reproduced"
                rows.append(Row(name, cv, fv, tol, False, f"metric '{metric}' missing on the {side} side"))
            elif not (math.isfinite(cv) and math.isfinite(fv)):
                rows.append(Row(name, cv, fv, tol, False, "not a finite number"))
            elif tol is None:
                rows.append(Row(name, cv, fv, None, False, "no tolerance: add it (or 'default') to gate.tolerances"))
            else:
                ok = abs(fv - cv) <= tol + 1e-9
                rows.append(Row(name, cv, fv, tol, ok, "" if ok else "moved more than the tolerance"))
        if gp.check_n_runs and isinstance(c, dict) and isinstance(f, dict):
            cn, fn = c.get("n_runs"), f.get("n_runs")
            if cn != fn:
                rows.append(Row(f"{pre}{method}/{protocol}/n_runs", _num(cn), _num(fn), 0.0, False,
                                "a different number of runs: not the same protocol"))  # fmt: skip
    return rows


def _num(v) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _fmt(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.4f}" if signed else f"{v:.4f}"


def table(rows: list[Row], markdown: bool = False) -> str:
    head = ["metric", "committed", "reproduced", "delta", "tolerance", "verdict"]
    body = [[r.metric, _fmt(r.committed), _fmt(r.reproduced), _fmt(r.delta, True), _fmt(r.tolerance), r.verdict]
            for r in rows]  # fmt: skip
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body])
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" if i in (0, 5) else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*head), fmt.format(*["-" * w for w in widths])] + [fmt.format(*b) for b in body]
    return "\n".join(line.rstrip() for line in lines)


def dvc_metrics_diff(root: Path | str = ".") -> str:
    """What ``dvc metrics diff`` (HEAD vs workspace) says, for the log; never part of the verdict."""
    try:
        out = subprocess.run([sys.executable, "-m", "dvc", "metrics", "diff", "HEAD", "--md"], cwd=root,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(dvc metrics diff unavailable: {exc})"
    text = (out.stdout or out.stderr).strip()
    return text or "(dvc metrics diff: no changes against HEAD)"


def run_gate(pairs: list[tuple[Path, Path]], gp: GateParams) -> list[Row]:
    rows: list[Row] = []
    for committed, fresh in pairs:
        label = Path(fresh).name if len(pairs) > 1 else ""
        rows += compare(load_metrics(committed), load_metrics(fresh), gp, label)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.gate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--committed", type=Path, nargs="+", required=True,
                    help="metrics JSON as committed (e.g. saved with git show HEAD:metrics/metrics.json)")
    ap.add_argument("--fresh", type=Path, nargs="+", required=True, help="metrics JSON of the reproduction, same order")
    ap.add_argument("--tolerances", type=Path, nargs="*", default=None,
                    help="params file(s) with a 'gate' section (later files override; default params.yaml "
                         "if present, else built-in defaults)")  # fmt: skip
    ap.add_argument("--tol", action="append", metavar="PATTERN=PP", help="override one tolerance, e.g. 'hwt=2'")
    ap.add_argument("--markdown", type=Path, help="also write the table as markdown here")
    ap.add_argument("--dvc-diff", action="store_true", help="also print `dvc metrics diff HEAD` (informational)")
    args = ap.parse_args(argv)
    if len(args.committed) != len(args.fresh):
        print("gate: error: give as many --fresh files as --committed files (paired in order)", file=sys.stderr)
        return 2
    tol_files = args.tolerances
    if tol_files is None:
        tol_files = [config.PARAMS_FILE] if config.PARAMS_FILE.exists() else []
    try:
        gp = load_gate_params(tol_files, args.tol)
        rows = run_gate(list(zip(args.committed, args.fresh, strict=True)), gp)
    except GateInputError as exc:
        print(f"gate: error: {exc}", file=sys.stderr)
        return 2
    print(table(rows))
    failed = [r for r in rows if not r.ok]
    verdict = (f"gate: FAILED: {len(failed)} of {len(rows)} check(s) outside tolerance or missing"
               if failed else f"gate: passed: {len(rows)} check(s) within tolerance")  # fmt: skip
    print(verdict)
    md = f"### Reproduction gate\n\n{table(rows, markdown=True)}\n\n{verdict}\n"
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(md)
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a") as fh:
            fh.write(md + "\n")
    if args.dvc_diff:
        print("\n`dvc metrics diff HEAD` (for information):\n" + dvc_metrics_diff())
    if not rows:
        print("gate: error: nothing to compare (both metrics files are empty)", file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
