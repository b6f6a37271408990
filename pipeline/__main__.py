"""``python -m pipeline``: the DVC stages through Prefect (see :mod:`pipeline.flow`)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from pipeline import flow as pflow


def normalize_dask_address(addr: str) -> str:
    """HOST:PORT, tcp://HOST:PORT or dask://HOST:PORT -> dask://HOST:PORT."""
    addr = addr.strip()
    return addr if "://" in addr else f"dask://{addr}"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pipeline", description=pflow.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--stages", help="comma-separated stages to run (only these, in DAG order); default: all")
    ap.add_argument("--force", action="store_true", help="recompute even if up to date (dvc repro -f)")
    ap.add_argument("--pull", action="store_true", help="dvc pull (data from the remote) before the stages")
    fan = ap.add_mutually_exclusive_group()
    fan.add_argument("--dask-address", metavar="HOST:PORT",
                     help="fan train's folds out to this Dask scheduler (sets FERPIPE_FOLD_RUNNER)")
    fan.add_argument("--fold-runner", metavar="SPEC",
                     help="train's fold runner: sequential, prefect[:N], dask[:N], dask://HOST:PORT")
    ap.add_argument("--retries", type=int, default=1, help="retries of a failed stage (default 1; never for a held lock)")
    ap.add_argument("--retry-delay", type=float, default=10.0, help="seconds between retries (default 10)")
    ap.add_argument("--params", nargs="+", default=["params.yaml"], help="params file(s) logged to the MLflow parent")
    ap.add_argument("--no-mlflow", action="store_true", help="no MLflow parent run")
    ap.add_argument("-C", "--root", type=Path, default=Path("."), help="the DVC project (default: .)")
    ap.add_argument("--list", action="store_true", help="print the stages in run order and exit")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.retries < 0:
            raise pflow.UsageError("--retries must be >= 0")
        root = args.root.resolve()
        stages = pflow.select_stages(pflow.dvc_stages(root),
                                     [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None)  # fmt: skip
        if args.list:
            for s in stages:
                print(f"{s.name}\t<- {', '.join(s.deps) or '-'}\t{s.cmd}")
            return 0
        runner = normalize_dask_address(args.dask_address) if args.dask_address else args.fold_runner
        if runner and runner != "sequential":
            from pipeline.fanout import FanoutError, check_reachable, parse_spec

            try:
                spec = parse_spec(runner)
                if spec.address:
                    check_reachable(spec.address)  # fail now, not after the stages before train
            except FanoutError as exc:
                raise pflow.UsageError(str(exc)) from None
        holder = pflow.lock_holder(root)
        if holder:  # before a Prefect server or an MLflow run is started for nothing
            raise pflow.DvcLockHeld(f"{pflow.LOCK_HINT}\n(held: {holder})")
    except pflow.PipelineError as exc:
        print(f"pipeline: error: {exc}", file=sys.stderr)
        return exc.exit_code

    os.chdir(root)
    t0 = time.time()
    state = pflow.make_flow()(
        stages=[s.name for s in stages], force=args.force, pull=args.pull, fold_runner=runner,
        retries=args.retries, retry_delay=args.retry_delay, params_files=args.params,
        mlflow=not args.no_mlflow, root=str(root), return_state=True,
    )  # fmt: skip
    if state.is_completed():
        summary = state.result()
        print("\n" + _table(summary["stages"]))
        print(f"pipeline: done in {time.time() - t0:.1f} s ({len(stages)} stage(s)); "
              f"stage logs in {summary['log_dir']}")  # fmt: skip
        return 0
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, pflow.PipelineError):
        if getattr(exc, "summary", None):
            print("\n" + _table(exc.summary["stages"]))
            done = [r["stage"] for r in exc.summary["stages"] if r["status"] != "FAILED"]
            print(f"pipeline: outputs of the finished stages are kept ({', '.join(done) or 'none'}); "
                  f"logs in {exc.summary['log_dir']}")  # fmt: skip
        print(f"\npipeline: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"\npipeline: error: {state.name}: {exc}", file=sys.stderr)
    return 1


def _table(rows: list[dict]) -> str:
    w = max([len(r["stage"]) for r in rows] + [5])
    out = [f"{'stage':<{w}}  {'status':<24} seconds"]
    out += [f"{r['stage']:<{w}}  {r['status']:<24} {r['seconds']:7.1f}" for r in rows]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
