"""The CI reproduction check: gate freshly computed metrics against the committed ones.

    python -m pipeline.reproduce --workspace              # CI: gate what `make run` just computed
    python -m pipeline.reproduce                          # dvc repro -f, then gate
    python -m pipeline.reproduce --pull --workdir "$RUNNER_TEMP/repro"
    python -m pipeline.reproduce --via prefect            # the forced run through python -m pipeline

``--workspace`` skips steps 2-4: the workspace metrics (from a `dvc repro` on a clean clone,
e.g. `make run` in CI) are compared with the committed ones, so CI never computes the
DAG twice. It refuses when `dvc status` says a stage is not up to date (the metrics would
not belong to this commit's code and params).

Steps
1. save the committed metrics: ``git show REF:<file>`` for every metrics file of dvc.yaml
   (``metrics/metrics.json``) and ``metrics/<profile>.json`` of each profile;
2. ``--pull``: ``dvc pull`` of the raw data only (the ``.dvc`` files), never of stage
   outputs: a pulled result would be compared with itself;
3. ``dvc repro -f`` (or ``python -m pipeline --force``): every stage recomputed;
4. each profile: ``python -m ferpipe.profile NAME`` into the work folder (a fresh folder,
   so nothing is resumed; the committed ``metrics/<profile>.json`` is not touched);
5. :mod:`pipeline.gate` on every (committed, fresh) pair, plus ``dvc metrics diff HEAD``.

It refuses to start when an output declared ``persist: true`` (train's finished folds)
already exists: a forced stage would resume from it instead of recomputing. Run it in a
clean clone (CI does), or pass ``--discard-persisted`` to delete those outputs first (they
stay in the DVC cache). Exit status: the gate's (0 pass, 1 fail), or 2 when a set-up step
or the reproduction itself failed (the step is named).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline import flow as pflow
from pipeline import gate


class ReproduceError(RuntimeError):
    pass


def dvc_outputs(root: Path) -> tuple[list[str], list[str], list[str]]:
    """(metrics files of pipeline stages, persisted outputs, .dvc data files) of the project."""
    from dvc.repo import Repo

    metrics, persisted, data_files = [], [], []
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            if not getattr(stage, "cmd", None):
                data_files.append(stage.relpath)
                continue
            for out in stage.outs:
                rel = str(Path(out.fs_path).resolve().relative_to(root.resolve()))
                if out.metric:
                    metrics.append(rel)
                if out.persist:
                    persisted.append(rel)
    return sorted(set(metrics)), sorted(set(persisted)), sorted(set(data_files))


def git_show(root: Path, ref: str, path: str, dest: Path) -> Path:
    out = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=root, capture_output=True)
    if out.returncode != 0:
        why = out.stderr.decode(errors="replace").strip().splitlines()
        raise ReproduceError(f"{path} is not committed at {ref}: nothing to compare the reproduction with "
                             f"(commit it first){': ' + why[-1] if why else ''}")  # fmt: skip
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(out.stdout)
    return dest


def step(title: str, cmd: list[str], root: Path, env: dict[str, str]) -> None:
    print(f"\n== reproduce: {title}: {' '.join(cmd)}", flush=True)
    t0 = time.time()
    rc = subprocess.run(cmd, cwd=root, env=env).returncode
    print(f"== reproduce: {title}: exit {rc} after {time.time() - t0:.1f} s", flush=True)
    if rc != 0:
        raise ReproduceError(f"{title} failed (exit {rc})")


def stale_stages(status: dict) -> dict:
    """`dvc status --json` minus stages that are merely always changed (the report: it shows
    provenance and has no outputs, so it never makes the workspace's metrics stale)."""
    return {k: v for k, v in status.items() if v != ["always changed"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.reproduce", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--ref", default="HEAD", help="git revision holding the committed metrics (default HEAD)")
    ap.add_argument("--workspace", action="store_true",
                    help="no recomputation: gate the workspace metrics of an up-to-date `dvc repro`")
    ap.add_argument("--profiles", nargs="*", default=[], help="profiles to rerun and gate (default: none)")
    ap.add_argument("--via", choices=("dvc", "prefect"), default="dvc",
                    help="the forced run: dvc repro -f (default) or python -m pipeline --force")
    ap.add_argument("--pull", action="store_true", help="dvc pull the raw data (.dvc files) first")
    ap.add_argument("--discard-persisted", action="store_true",
                    help="delete existing persist: true outputs (e.g. artifacts/train) so they are recomputed")
    ap.add_argument("--tolerances", type=Path, nargs="+", default=[Path("params.yaml")],
                    help="params file(s) with the gate section (default params.yaml)")
    ap.add_argument("--workdir", type=Path, help="where the committed copies and fresh profile outputs go "
                    "(default: a new temp folder, kept)")
    ap.add_argument("-C", "--root", type=Path, default=Path("."), help="the project (default: .)")
    args = ap.parse_args(argv)
    root = args.root.resolve()
    os.chdir(root)  # the gate reads params and runs dvc metrics diff from the project root
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="ferpipe-reproduce-"))).resolve()
    env = pflow.stage_env()
    try:
        metrics, persisted, data_files = dvc_outputs(root)
        if not metrics:
            raise ReproduceError("dvc.yaml declares no metrics file: nothing to gate")
        existing = [p for p in persisted if (root / p).exists()]
        if args.workspace:
            stale = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=root, env=env,
                                   capture_output=True, text=True)  # fmt: skip
            pending = stale_stages(json.loads(stale.stdout or "{}")) if stale.returncode == 0 else {"dvc status": "failed"}
            if pending:
                raise ReproduceError("--workspace: `dvc status` reports stages that are not up to date; "
                                     f"run `dvc repro` first ({(stale.stdout or stale.stderr).strip()[:300]})")
            existing = []
        elif existing and not args.discard_persisted:
            raise ReproduceError(f"persisted output(s) {', '.join(existing)} exist: a forced run would resume "
                                 "from them instead of recomputing. Run in a clean clone, or pass "
                                 "--discard-persisted (they stay in the DVC cache)")  # fmt: skip
        holder = pflow.lock_holder(root)
        if holder:
            raise ReproduceError(f"{pflow.LOCK_HINT}\n(held: {holder})")
        for name in args.profiles:
            if not (root / "profiles" / f"{name}.yaml").exists():
                raise ReproduceError(f"profile '{name}': profiles/{name}.yaml not found")
        pairs: list[tuple[Path, Path]] = []
        for m in metrics:
            saved = git_show(root, args.ref, m, work / "committed" / m)
            if gate.is_aggregate_metrics(json.loads(saved.read_text())):
                pairs.append((saved, root / m))
            else:  # e.g. compare.json (tests between methods): dvc metrics diff shows it
                print(f"== reproduce: {m} is not in the aggregate format; not gated (see dvc metrics diff)")
        for name in args.profiles:
            m = f"metrics/{name}.json"
            pairs.append((git_show(root, args.ref, m, work / "committed" / m), work / "fresh" / m))
        print(f"== reproduce: committed metrics saved under {work / 'committed'}")
        for p in existing:
            print(f"== reproduce: discarding persisted output {p}")
            target = root / p
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        if args.pull and data_files and not args.workspace:
            step("pull the raw data", [sys.executable, "-m", "dvc", "pull", *data_files], root, env)
        if args.workspace:
            print("== reproduce: --workspace: gating the metrics of the up-to-date workspace")
        elif args.via == "dvc":
            step("forced reproduction", [sys.executable, "-m", "dvc", "repro", "--force"], root, env)
        else:
            step("forced reproduction", [sys.executable, "-m", "pipeline", "--force", "-C", str(root)], root, env)
        for name in args.profiles:
            step(f"profile {name}", [sys.executable, "-m", "ferpipe.profile", name,
                                     "--out", str(work / "profiles" / name),
                                     "--metrics", str(work / "fresh" / "metrics" / f"{name}.json")], root, env)  # fmt: skip
    except ReproduceError as exc:
        print(f"reproduce: error: {exc}", file=sys.stderr)
        return 2
    print("\n== reproduce: gate", flush=True)
    tol = [str(t if t.is_absolute() else root / t) for t in args.tolerances]
    gate_args = ["--committed", *map(str, (c for c, _ in pairs)), "--fresh", *map(str, (f for _, f in pairs)),
                 "--tolerances", *tol, "--markdown", str(work / "gate.md"), "--dvc-diff"]  # fmt: skip
    return gate.main(gate_args)


if __name__ == "__main__":
    sys.exit(main())
