"""The pipeline's MLflow parent run always ends (FINISHED / FAILED / KILLED, stage named)."""

import json

import pytest

from ferpipe import tracking


def status_of(run_id):
    run = tracking.client().get_run(run_id)
    return run.info.status, run.data.tags, run.info.end_time


def test_finished_after_a_stage(store):
    parent = tracking.start_parent({"x": 1})
    with tracking.stage_status(parent, "aggregate"):
        pass
    st, tags, end = status_of(parent)
    assert st == "FINISHED" and tags["ferpipe.last_stage"] == "aggregate" and end


def test_failed_stage_named_on_exception_and_on_fail(store):
    parent = tracking.start_parent({"x": 1})
    with pytest.raises(RuntimeError), tracking.stage_status(parent, "baselines"):
        raise RuntimeError("boom")
    st, tags, _ = status_of(parent)
    assert st == "FAILED" and tags["ferpipe.failed_stage"] == "baselines"
    other = tracking.start_parent({"x": 1})
    with tracking.stage_status(other, "report") as s:
        s.fail()
    assert status_of(other)[0] == "FAILED"


def test_killed_on_interrupt(store):
    parent = tracking.start_parent({"x": 1})
    with pytest.raises(KeyboardInterrupt), tracking.stage_status(parent, "train"):
        raise KeyboardInterrupt
    st, tags, _ = status_of(parent)
    assert st == "KILLED" and tags["ferpipe.failed_stage"] == "train"


def test_orchestrator_parent_left_to_the_orchestrator(store, monkeypatch):
    parent = tracking.start_parent({"x": 1})
    monkeypatch.setenv(tracking.PARENT_ENV, parent)
    with tracking.stage_status(parent, "train"):
        pass
    assert status_of(parent)[0] == "RUNNING"  # python -m pipeline ends it (pipeline/flow.py)
    tracking.finish(parent)


def test_record_from_another_store_is_not_used(store, tmp_path):
    rec = tmp_path / "mlflow.json"
    rec.write_text(json.dumps({"parent_run_id": "0123456789abcdef", "tracking_uri": "sqlite:////elsewhere.db"}))
    assert tracking.parent_run_id(rec) is None
    parent = tracking.start_parent({"x": 1})
    rec.write_text(json.dumps({"parent_run_id": parent, "tracking_uri": tracking.tracking_uri()}))
    assert tracking.parent_run_id(rec) == parent


def test_unknown_parent_in_environment_is_a_named_error(store, monkeypatch):
    monkeypatch.setenv(tracking.PARENT_ENV, "deadbeef")
    with pytest.raises(tracking.ParentRunError, match="deadbeef"):
        tracking.parent_run_id()


def test_experiment_marked_as_model_training(store):
    c = tracking.client()
    exp = c.get_experiment(tracking.experiment_id(c))
    assert exp.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
