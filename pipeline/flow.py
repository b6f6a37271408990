"""The DVC pipeline as a Prefect flow: one task per stage, in DAG order.

    python -m pipeline                         # every stage of dvc.yaml that is out of date
    python -m pipeline --force                 # recompute everything (dvc repro -f per stage)
    python -m pipeline --pull                  # dvc pull first (data from the DVC remote)
    python -m pipeline --stages split,train    # only these (like dvc repro -s), in DAG order
    python -m pipeline --dask-address 10.0.0.5:8786   # train's folds on a Dask cluster
    python -m pipeline --list                  # the stage order, nothing run

DVC stays the single source of truth: each task runs ``dvc repro --single-item <stage>``,
so an up-to-date stage is skipped by DVC, its cache and ``dvc.lock`` are what every
other tool sees, and ``dvc repro`` alone gives the same results. The stage list and
order come from DVC's own graph of ``dvc.yaml`` (dependencies first, ties in file order),
so new stages are picked up without touching this file. The stages run one at a time:
DVC holds one lock per workspace, and the parallelism that pays is inside ``train``
(its folds fan out through :mod:`pipeline.fanout`).

What a run adds around DVC
- retries for transient failures (``--retries``, default 1, ``--retry-delay`` seconds);
  a DVC lock held by another run is never retried;
- per-stage timing and status (ran / up to date) and the stage's output in the Prefect
  logs, and in ``.dvc/tmp/pipeline/<run>/<stage>.log``;
- one MLflow parent run for the whole invocation (params, git commit, data hash), passed
  to the stages in ``FERPIPE_MLFLOW_PARENT_RUN_ID`` so every fold run of every stage lands
  under it; final metrics and the results table go to it; FINISHED or FAILED at the end;
- a Prefect markdown artifact ``ferpipe-results``: the stage table, then
  ``artifacts/aggregate/results.md`` and ``artifacts/compare/*.md`` when present.

Exit status: 0 done; 1 a stage failed (the flow stops there, names it and keeps every
output already computed: DVC has committed the finished stages and ``train`` resumes its
finished folds); 2 bad usage (unknown stage, no dvc.yaml, unreachable Dask address);
3 another pipeline run holds the DVC lock of this workspace.

Prefect API: by default a temporary local server is started for the run (and given to
the stages, so train's fold flow reports to it too) and stopped at the end. To keep the
history and watch runs in the UI, start a persistent server once and point at it::

    prefect server start --host 127.0.0.1          # UI: http://127.0.0.1:4200
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m pipeline

(``--host 0.0.0.0`` and that machine's address in ``PREFECT_API_URL`` when Dask workers on
other machines should report their fold tasks to it.)
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import pipeline  # noqa: F401  (Prefect/MLflow environment defaults)

LOCK_HINT = ("another pipeline run holds the DVC lock in this workspace; wait for it to finish "
             "(or stop it), or use a separate clone for a concurrent run. If no DVC process is "
             "running, the lock is stale: remove .dvc/tmp/lock and .dvc/tmp/rwlock")  # fmt: skip
_LOCK_PATTERNS = ("Unable to acquire lock", "it is being blocked by")


class PipelineError(RuntimeError):
    exit_code = 1
    summary: dict | None = None


class UsageError(PipelineError):
    exit_code = 2


class DvcLockHeld(PipelineError):
    exit_code = 3


class StageFailed(PipelineError):
    def __init__(self, stage: str, returncode: int, tail: str, log_file: Path | None = None):
        self.stage, self.returncode, self.tail, self.log_file = stage, returncode, tail, log_file
        where = f" (full log: {log_file})" if log_file else ""
        super().__init__(f"stage '{stage}' failed: dvc repro exited with {returncode}{where}\n{tail}")


# ---------------------------------------------------------------- DVC helpers
@dataclasses.dataclass
class Stage:
    name: str  # DVC address: 'train', 'sub/dvc.yaml:train', 'fit@resnet'
    cmd: str
    deps: list[str]  # upstream stage names


def dvc_stages(root: Path | str = ".") -> list[Stage]:
    """Pipeline stages of the DVC project in ``root``, dependencies first (ties: file order)."""
    import networkx as nx
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    root = Path(root)
    if not (root / ".dvc").is_dir():
        raise UsageError(f"{root.resolve()}: not a DVC project (no .dvc folder)")
    try:
        with Repo(str(root)) as repo:
            stages = [s for s in repo.index.stages if getattr(s, "cmd", None)]
            graph = repo.index.graph  # edges: stage -> the stages it depends on
            order = {s: i for i, s in enumerate(repo.index.stages)}
            upstream = {s: [d for d in graph.successors(s) if getattr(d, "cmd", None)] for s in stages}
            sub = graph.subgraph(stages).reverse(copy=True)  # dependency -> dependant
            ordered = list(nx.lexicographical_topological_sort(sub, key=lambda s: order[s]))

            def address(s) -> str:  # relative to the project root (s.addressing is relative to the cwd)
                rel = os.path.relpath(s.path, repo.root_dir)
                return s.name if rel == "dvc.yaml" else f"{rel}:{s.name}"

            return [Stage(address(s), s.cmd if isinstance(s.cmd, str) else " && ".join(s.cmd),
                          [address(d) for d in upstream[s]]) for s in ordered]  # fmt: skip
    except DvcException as exc:
        raise UsageError(f"cannot read the DVC pipeline in {root.resolve()}: {exc}") from exc


def select_stages(all_stages: list[Stage], wanted: list[str] | None) -> list[Stage]:
    """The stages to run, in DAG order; ``wanted`` names stages (a foreach name selects all its items)."""
    if not wanted:
        return list(all_stages)
    names = [s.name for s in all_stages]
    unknown = [w for w in wanted if not any(n == w or n.startswith(f"{w}@") for n in names)]
    if unknown:
        raise UsageError(f"unknown stage(s): {', '.join(unknown)} (stages: {', '.join(names)})")
    return [s for s in all_stages if any(s.name == w or s.name.startswith(f"{w}@") for w in wanted)]


def lock_holder(root: Path | str = ".") -> str | None:
    """A description of who holds this workspace's DVC lock, or None when it is free."""
    tmp = Path(root) / ".dvc" / "tmp"
    lock = tmp / "lock"
    if lock.exists():
        try:
            with open(lock) as fh:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    pid = fh.read().strip()
                    return f"the repository lock {lock} (PID {pid or 'unknown'})"
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        except OSError:
            pass
    rw = tmp / "rwlock"
    if rw.exists():
        try:
            data = json.loads(rw.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            return None
        live = []
        for mode in ("write", "read"):
            for path, infos in (data.get(mode) or {}).items():
                for info in infos if isinstance(infos, list) else [infos]:
                    if _pid_alive(info.get("pid")):
                        live.append(f"{info.get('cmd', '?')} (PID {info.get('pid')}) on {path}")
        if live:
            return f"{rw}: " + "; ".join(sorted(set(live)))
    return None


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def stage_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the stage commands: this interpreter's bin first (``python`` in dvc.yaml)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra or {})
    return env


def run_dvc(args: list[str], root: Path, env: dict[str, str], log, log_file: Path | None,
            label: str) -> tuple[int, str, list[str]]:  # fmt: skip
    """Run ``dvc <args>`` streaming its output to ``log``; -> (returncode, tail, all lines)."""
    cmd = [sys.executable, "-m", "dvc", *args]
    log.info("$ dvc %s", " ".join(args))
    lines: list[str] = []
    tail: deque[str] = deque(maxlen=25)
    fh = None
    if log_file:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = open(log_file, "a")
    try:
        with subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, errors="replace", bufsize=1) as proc:  # fmt: skip
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                lines.append(line)
                tail.append(line)
                if fh:
                    fh.write(raw)
                if line.strip():
                    log.info("[%s] %s", label, line)
            rc = proc.wait()
    finally:
        if fh:
            fh.close()
    return rc, "\n".join(tail), lines


_ERROR_LINE = re.compile(r"^\s*([\w.]+(Error|Exception|Exit)\b|ERROR\b|\w+: error:)")


def failure_excerpt(lines: list[str], n_tail: int = 12) -> str:
    """The last lines of a failed stage, preceded by the error lines a long traceback pushed out."""
    tail = lines[-n_tail:]
    earlier = [ln for ln in lines[:-n_tail] if _ERROR_LINE.match(ln)]
    seen, key = set(tail), []
    for ln in reversed(earlier):
        if ln not in seen and len(key) < 5:
            key.insert(0, ln)
            seen.add(ln)
    return "\n".join(([*key, "..."] if key else []) + tail)


def is_lock_error(text: str) -> bool:
    return any(p in text for p in _LOCK_PATTERNS)


def stage_status(name: str, lines: list[str]) -> str:
    text = "\n".join(lines)
    short = name.rsplit(":", 1)[-1]
    if re.search(rf"Running stage '(.*:)?{re.escape(short)}'", text):
        return "ran"
    if "is cached - skipping run" in text:
        return "restored from run-cache"
    if "didn't change, skipping" in text or "Data and pipelines are up to date" in text:
        return "up to date"
    return "done"


# ---------------------------------------------------------------- Prefect tasks
def _retry_unless_lock(task, task_run, state) -> bool:
    """Prefect retry condition: transient failures only (never a held DVC lock)."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001  (the result itself may be unreadable: retry then)
        return True
    return not isinstance(exc, DvcLockHeld | UsageError)


def _stage_task_fn(stage: str, root: str, force: bool, env: dict[str, str], log_dir: str | None) -> dict:
    from prefect import get_run_logger

    log = get_run_logger()
    args = ["repro", "--single-item", stage] + (["--force"] if force else [])
    log_file = Path(log_dir) / f"{stage.replace('/', '_').replace(':', '_')}.log" if log_dir else None
    t0 = time.time()
    rc, tail, lines = run_dvc(args, Path(root), env, log, log_file, stage)
    seconds = round(time.time() - t0, 2)
    if rc != 0:
        if is_lock_error(tail):
            raise DvcLockHeld(f"stage '{stage}': {LOCK_HINT}\n{tail}")
        raise StageFailed(stage, rc, failure_excerpt(lines), log_file)
    status = stage_status(stage, lines)
    log.info("stage %s: %s in %.1f s", stage, status, seconds)
    return {"stage": stage, "status": status, "seconds": seconds}


def _pull_task_fn(root: str, env: dict[str, str], log_dir: str | None) -> dict:
    from prefect import get_run_logger

    log = get_run_logger()
    t0 = time.time()
    log_file = Path(log_dir) / "pull.log" if log_dir else None
    rc, tail, _ = run_dvc(["pull", "--allow-missing"], Path(root), env, log, log_file, "pull")
    if rc != 0:
        if is_lock_error(tail):
            raise DvcLockHeld(f"dvc pull: {LOCK_HINT}\n{tail}")
        raise StageFailed("pull", rc, tail, log_file)
    return {"stage": "(dvc pull)", "status": "done", "seconds": round(time.time() - t0, 2)}


# ---------------------------------------------------------------- results
def results_markdown(root: Path, rows: list[dict], failed: str | None, parent: str | None) -> str:
    md = ["# ferpipe pipeline run", ""]
    if failed:
        md += [f"**FAILED at stage `{failed}`**; outputs of the stages before it are kept.", ""]
    md += ["| stage | status | seconds |", "|---|---|---|"]
    md += [f"| {r['stage']} | {r['status']} | {r['seconds']:.1f} |" for r in rows]
    md += ["", f"Total: {sum(r['seconds'] for r in rows):.1f} s."]
    if parent:
        md.append(f"MLflow parent run: `{parent}`.")
    md.append("")
    for path in [root / "artifacts/aggregate/results.md", *sorted((root / "artifacts/compare").glob("*.md"))]:
        if path.is_file():
            md += [f"<!-- {path.relative_to(root)} -->", path.read_text().strip(), ""]
    return "\n".join(md)


def flat_metrics(path: Path) -> dict[str, float]:
    """metrics.json ({method: {protocol: {...}}}) as the flat keys aggregate logs to MLflow."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {f"{m}.{p}.{k}": float(v) for m, ps in data.items() for p, d in ps.items()
            for k, v in d.items() if isinstance(v, int | float) and not isinstance(v, bool)}  # fmt: skip


# ---------------------------------------------------------------- the flow
def _pipeline_flow_fn(stages: list[str], force: bool = False, pull: bool = False,
                      fold_runner: str | None = None, retries: int = 1, retry_delay: float = 10.0,
                      params_files: list[str] | None = None, mlflow: bool = True,
                      root: str = ".") -> dict:  # fmt: skip
    from prefect import get_run_logger, task
    from prefect.artifacts import create_markdown_artifact
    from prefect.cache_policies import NONE
    from prefect.context import get_run_context

    log = get_run_logger()
    rootp = Path(root).resolve()
    os.chdir(rootp)  # like DVC: the tracking store, params and git commit are the project's
    run_ctx = get_run_context()
    holder = lock_holder(rootp)
    if holder:
        raise DvcLockHeld(f"{LOCK_HINT}\n(held: {holder})")
    run_name = str(run_ctx.flow_run.name)
    log_dir = rootp / ".dvc" / "tmp" / "pipeline" / run_name
    env = {"PREFECT_API_URL": str(run_ctx.client.api_url)}  # train's fold flow reports to this server
    if fold_runner:
        env["FERPIPE_FOLD_RUNNER"] = fold_runner

    parent = None
    if mlflow:
        from ferpipe import config, tracking

        files = params_files or [str(config.PARAMS_FILE)]
        params = config.read_params_files(files) if all(Path(f).exists() for f in files) else {}
        parent = tracking.start_parent(params, name=f"pipeline-{run_name}")
        tracking.client().set_tag(parent, "prefect.flow_run_id", str(run_ctx.flow_run.id))
        env[tracking.PARENT_ENV] = parent
        log.info("MLflow parent run %s (%s)", parent, tracking.tracking_uri())
    env = stage_env(env)

    opts = dict(retries=retries, retry_delay_seconds=retry_delay, retry_condition_fn=_retry_unless_lock,
                cache_policy=NONE, persist_result=False)  # fmt: skip
    rows: list[dict] = []
    failed, error = None, None
    t_start = time.time()
    try:
        if pull:
            pull_task = task(_pull_task_fn, name="dvc-pull", **opts)
            rows.append(pull_task(str(rootp), env, str(log_dir)))
        for name in stages:
            stage_task = task(_stage_task_fn, name=f"stage-{name}", task_run_name=name, **opts)
            t0 = time.time()
            try:
                rows.append(stage_task(name, str(rootp), force, env, str(log_dir)))
            except PipelineError as exc:
                rows.append({"stage": name, "status": "FAILED", "seconds": round(time.time() - t0, 2)})
                failed, error = name, exc
                break
        if error is None and mlflow and not any(r["stage"] == "aggregate" and r["status"] == "ran" for r in rows):
            _log_parent_results(rootp, parent)  # aggregate did not run: record the current metrics here
    except BaseException as exc:  # the pull failed, or an interrupt
        failed, error = failed or "pull", exc
        raise
    finally:
        md = results_markdown(rootp, rows, failed, parent)
        try:
            create_markdown_artifact(markdown=md, key="ferpipe-results",
                                     description="ferpipe pipeline: stage timings and results tables")  # fmt: skip
        except Exception as exc:  # noqa: BLE001  (the artifact is a convenience, never the verdict)
            log.warning("could not create the results artifact: %s", exc)
        if parent:
            _finish_parent(rootp, parent, rows, md, failed=error is not None)
    total = round(time.time() - t_start, 2)
    summary = {"stages": rows, "failed": failed, "total_seconds": total, "mlflow_parent_run_id": parent,
               "log_dir": str(log_dir)}  # fmt: skip
    if error is not None:
        if isinstance(error, PipelineError):
            error.summary = summary  # the CLI prints the stage table of a failed run too
        raise error
    return summary


def _log_parent_results(root: Path, parent: str | None) -> None:
    from ferpipe import tracking

    metrics = flat_metrics(root / "metrics" / "metrics.json")
    results = root / "artifacts" / "aggregate" / "results.md"
    if parent and metrics:
        tracking.log_parent_results(parent, metrics, [results, root / "metrics" / "metrics.json"])


def _finish_parent(root: Path, parent: str, rows: list[dict], md: str, failed: bool) -> None:
    import tempfile

    from ferpipe import tracking

    try:
        timings = {f"stage_seconds.{r['stage']}": r["seconds"] for r in rows if not r["stage"].startswith("(")}
        with tempfile.TemporaryDirectory() as tmp:
            summary = Path(tmp) / "pipeline_summary.md"
            summary.write_text(md)
            tracking.log_parent_results(parent, timings, [summary])
    finally:
        tracking.finish(parent, failed=failed)


def make_flow():
    from prefect import flow

    return flow(_pipeline_flow_fn, name="ferpipe-pipeline", persist_result=False, log_prints=True)
