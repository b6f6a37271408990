"""CI reproduction gate: passes on the committed metrics, fails on a perturbed or missing one."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipeline import gate  # noqa: E402

COMMITTED = REPO / "metrics" / "metrics.json"


@pytest.fixture
def real() -> dict:
    return json.loads(COMMITTED.read_text())


def write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=2))
    return path


def run(tmp_path, fresh: dict, *extra: str, committed: Path = COMMITTED) -> int:
    f = write(tmp_path / "fresh.json", fresh)
    return gate.main(["--committed", str(committed), "--fresh", str(f), "--tolerances", *extra])


def test_passes_on_the_committed_metrics(tmp_path, real, capsys):
    assert run(tmp_path, real) == 0
    out = capsys.readouterr().out
    assert "gate: passed" in out
    for col in ("metric", "committed", "reproduced", "delta", "tolerance", "verdict"):
        assert col in out.splitlines()[0]
    assert "resnet50_spatial/stratified/oa_mean" in out and "resnet50_gap/subject/oa_mean" in out


def test_fails_on_a_perturbed_oa(tmp_path, real, capsys):
    bad = copy.deepcopy(real)
    method = next(iter(bad))
    protocol = next(iter(bad[method]))
    bad[method][protocol]["oa_mean"] += 10.0  # beyond every default tolerance (at most 5 pp)
    tol = gate.GateParams().tolerance(method, protocol)
    assert tol is not None and tol < 10.0
    assert run(tmp_path, bad) == 1
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if f"{method}/{protocol}/oa_mean" in ln)
    assert "+10.0000" in line and "FAIL" in line
    assert "gate: FAILED: 1 of" in out


def test_within_tolerance_passes_and_boundary_is_inclusive(tmp_path, real):
    moved = copy.deepcopy(real)
    for protocols in moved.values():
        for m in protocols.values():
            m["oa_mean"] += 0.5
    assert run(tmp_path, moved, "--tol", "resnet50_frozen=0.5", "--tol", "default=0.5") == 0
    assert run(tmp_path, moved, "--tol", "resnet50_frozen=0.49", "--tol", "default=0.49") == 1


def test_missing_protocol_or_metric_fails(tmp_path, real, capsys):
    method = next(iter(real))
    protocols = list(real[method])
    gone = copy.deepcopy(real)
    del gone[method][protocols[0]]
    assert run(tmp_path, gone) == 1
    assert "missing from the reproduction" in capsys.readouterr().out
    no_oa = copy.deepcopy(real)
    del no_oa[method][protocols[-1]]["oa_mean"]
    assert run(tmp_path, no_oa) == 1
    assert "metric 'oa_mean' missing on the reproduced side" in capsys.readouterr().out


def test_new_method_not_committed_fails(tmp_path, real, capsys):
    extra = copy.deepcopy(real)
    extra["hwt"] = {"stratified": {"oa_mean": 78.0, "oa_std": 1.0, "n_runs": 10}}
    assert run(tmp_path, extra) == 1
    assert "hwt/stratified/oa_mean" in capsys.readouterr().out


def test_run_count_mismatch_fails(tmp_path, real, capsys):
    fewer = copy.deepcopy(real)
    method = next(iter(fewer))
    protocol = next(iter(fewer[method]))
    fewer[method][protocol]["n_runs"] -= 1
    assert run(tmp_path, fewer) == 1
    assert "a different number of runs" in capsys.readouterr().out


def test_tolerances_from_params_section_and_patterns(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  mode: frozen\ngate:\n  tolerances:\n    resnet50_*: 0.25\n"
                      "    resnet50_finetune/subject: 7\n    default: 2\n")  # fmt: skip
    gp = gate.load_gate_params([params])
    assert gp.tolerance("resnet50_frozen", "stratified") == 0.25
    assert gp.tolerance("resnet50_finetune", "subject") == 7.0  # exact beats the wildcard
    assert gp.tolerance("hwt", "stratified") == 2.0
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("gate:\n  tolerances:\n    hwt: 3\n")  # a later file replaces the mapping
    gp2 = gate.load_gate_params([params, overlay])
    assert gp2.tolerance("hwt", "x") == 3.0 and gp2.tolerance("resnet50_frozen", "x") is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("gate:\n  tolerances:\n    default: -1\n")
    with pytest.raises(gate.GateInputError, match="gate.tolerances.default"):
        gate.load_gate_params([bad])
    typo = tmp_path / "typo.yaml"
    typo.write_text("gate:\n  tolerance: {default: 1}\n")
    with pytest.raises(gate.GateInputError, match="unknown key"):
        gate.load_gate_params([typo])


def test_no_tolerance_for_a_method_fails(tmp_path, real, capsys):
    only = tmp_path / "tol.yaml"
    only.write_text("tolerances:\n  hwt: 1\n")  # a file holding just the section
    assert run(tmp_path, real, str(only)) == 1
    assert "no tolerance" in capsys.readouterr().out


def test_unreadable_inputs_exit_2(tmp_path, real, capsys):
    assert gate.main(["--committed", str(tmp_path / "nope.json"), "--fresh", str(COMMITTED)]) == 2
    assert "metrics file not found" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("{")
    assert gate.main(["--committed", str(COMMITTED), "--fresh", str(tmp_path / "broken.json")]) == 2
    assert gate.main(["--committed", str(COMMITTED), "--fresh", str(COMMITTED), str(COMMITTED)]) == 2


def test_several_pairs_and_markdown(tmp_path, real, monkeypatch):
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    a = write(tmp_path / "a.json", real)
    b = write(tmp_path / "b.json", {"resnet50_finetune": {"stratified": {"oa_mean": 20.0, "n_runs": 1}}})
    b2 = write(tmp_path / "b2.json", {"resnet50_finetune": {"stratified": {"oa_mean": 24.5, "n_runs": 1}}})
    md = tmp_path / "gate.md"
    rc = gate.main(["--committed", str(COMMITTED), str(b), "--fresh", str(a), str(b2),
                    "--tolerances", "--markdown", str(md)])  # fmt: skip
    assert rc == 0
    text = md.read_text()
    assert "| b2.json:resnet50_finetune/stratified/oa_mean | 20.0000 | 24.5000 | +4.5000 | 5.0000 | ok |" in text
    assert summary.read_text() == text + "\n"


def test_aggregate_format_detection(real):
    assert gate.is_aggregate_metrics(real)
    compare_like = {"stratified": {"hwt": {"oa_mean": 1.0}, "a vs b": {"wilcoxon_p": 0.01}}}
    assert not gate.is_aggregate_metrics(compare_like)
    assert not gate.is_aggregate_metrics({}) and not gate.is_aggregate_metrics([1])


def test_workspace_gate_ignores_only_the_always_changed_report():
    from pipeline.reproduce import stale_stages

    assert stale_stages({"report": ["always changed"]}) == {}
    stale = {"train": [{"changed deps": {"src/ferpipe/train.py": "modified"}}], "report": ["always changed"]}
    assert stale_stages(stale) == {"train": stale["train"]}
