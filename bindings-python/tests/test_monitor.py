"""Monitors from Python: a production classifier trained on a seeded synthetic scenario,
labelled predictions after the scenario drifts (covariate + concept), ticks that detect the
drift, retrain, gate and promote (auto) or wait for approval (manual), rollback, the
decision trail, background ticking, bad policies and the events' shapes.

The event keys here are the same as in bindings-node/__test__/monitor.test.mjs (there in
camelCase)."""

import threading
import time

import pytest

import anneal
from conftest import ticks_during

# Rows 0..150 follow one concept; from row 150 the features move and the concept changes.
SCENARIO = dict(
    rows=260,
    numeric=3,
    categorical=1,
    categories=3,
    classes=2,
    separation=3.0,
    seed=11,
    drift=[
        {"kind": "concept", "start": 150, "magnitude": 2.0},
        {"kind": "covariate", "start": 150, "magnitude": 3.0},
    ],
)

# The keys of each monitor event (same in Node, camelCased).
EVENT_KEYS = {
    "drift_detected": {
        "type", "monitor", "model", "model_id", "signal", "window_rows", "drifted_columns", "score",
        "threshold", "expected_accuracy",
    },
    "retrain_started": {"type", "monitor", "model", "model_id", "job_id", "trigger", "reason"},
    "candidate_evaluated": {
        "type", "monitor", "candidate", "candidate_id", "production", "dataset_id", "metric",
        "candidate_value", "production_value", "metrics", "verdict", "reason",
    },
    "promoted": {"type", "model", "model_id", "alias", "previous", "mode", "monitor", "reason"},
    "rolled_back": {"type", "model", "model_id", "alias", "previous", "monitor", "reason"},
}  # fmt: skip


def policy(mode="auto", **gate):
    return {
        "triggers": {"drift_window": 60},
        "guards": {"min_samples": 20},
        "action": {"replay_fraction": 0.0},
        "gate": {"mode": mode, "margin": 0.0, **gate},
    }


@pytest.fixture
def churn(home):
    """`churn` v1 (logistic regression on rows 0..100) in production, and the scenario."""
    s = anneal.synthetic_scenario(**SCENARIO)
    records = [dict(r, label=y) for r, y in zip(s["rows"][:100], s["labels"][:100])]
    home.datasets().import_records(records, name="churn-train")
    engine = home.training()
    job = engine.create_job(
        {"dataset": "churn-train", "eval_fraction": 0.2, "method": {"classifier": {}}, "output_name": "churn"}
    )
    engine.run(job.id)
    home.models().promote("churn@1")
    return home, s


def stream(home, s, start, stop):
    """Predicts rows start..stop with the production model and labels each with its truth."""
    p = home.predictor("churn@production")
    c = home.continual()
    for pred, y in zip(p.predict_batch(s["rows"][start:stop]), s["labels"][start:stop]):
        c.label(pred["prediction_id"], y)


def version(home):
    return home.models().resolve("churn@production").version


def kinds(m):
    return [d["kind"] for d in m.decisions()]


def monitor_events(events):
    return [e for e in events if e["type"] in EVENT_KEYS]


def test_drift_retrain_gate_promote_and_rollback(churn):
    home, s = churn
    monitors = home.monitors()
    m = monitors.create("churn", policy())
    assert (m.name, repr(m)) == ("churn", "Monitor('churn')")
    with pytest.raises(anneal.AlreadyExistsError):
        monitors.create("churn", policy())
    assert [r["name"] for r in monitors.list()] == ["churn"]
    assert monitors.get("churn").name == "churn"

    # Before the drift: nothing happens, no event.
    stream(home, s, 100, 150)
    events = []
    r = m.tick(on_event=events.append)
    assert (r["outcome"], r["model"], r["labelled"]) == ("idle", "churn@1", 50), r
    assert events == []

    # After it: one tick detects the drift, retrains, gates and promotes.
    stream(home, s, 150, 230)
    r = m.tick(on_event=events.append)
    assert (r["outcome"], r["trigger"], r["candidate"]) == ("promoted", "drift", "churn@2"), r
    assert r["job_id"] and r["model"] == "churn@1"
    assert version(home) == 2
    types = [e["type"] for e in events]
    order = ["drift_detected", "retrain_started", "job_started", "job_finished", "candidate_evaluated", "promoted"]
    assert [t for t in types if t in order] == order, types
    for e in monitor_events(events):
        assert set(e) == EVENT_KEYS[e["type"]], (e["type"], set(e) ^ EVENT_KEYS[e["type"]])
    by = {e["type"]: e for e in events}
    assert by["drift_detected"]["window_rows"] == 60 and by["drift_detected"]["drifted_columns"]
    assert by["retrain_started"]["job_id"] == r["job_id"]
    ev = by["candidate_evaluated"]
    assert (ev["verdict"], ev["candidate"], ev["production"], ev["metric"]) == ("passed", "churn@2", "churn@1", "accuracy")
    assert ev["candidate_value"] >= ev["production_value"]
    assert (by["promoted"]["mode"], by["promoted"]["previous"], by["promoted"]["monitor"]) == ("auto", "churn@1", "churn")

    assert kinds(m) == ["drift_detected", "retrain_started", "candidate_evaluated", "promoted"]
    d = m.decisions()
    assert [x["id"] for x in d] == sorted(x["id"] for x in d)
    assert d[1]["details"]["replayed_rows"] == 0 and d[1]["job_id"] == r["job_id"]
    rec = m.record()
    assert rec["current_job_id"] is None and rec["last_retrain_at"]
    assert (rec["retrains_today"], rec["consecutive_breaches"]) == (1, 0)
    assert rec["last_tick"]["outcome"] == "promoted"
    # The stored policy has every field, defaults filled in.
    assert rec["policy"]["triggers"]["window"] == 200 and rec["policy"]["gate"]["holdout_fraction"] == 0.3

    # Roll back: production is v1 again, with the decision and a rolled_back event.
    events = []
    moved = m.rollback("operator says so", on_event=events.append)
    v1 = home.models().resolve("churn@1")
    assert moved["production"] == v1.id
    assert version(home) == 1
    assert [e["type"] for e in events] == ["rolled_back"]
    e = events[0]
    assert set(e) == EVENT_KEYS["rolled_back"]
    assert (e["model"], e["previous"], e["reason"]) == ("churn@1", "churn@2", "operator says so")
    assert kinds(m)[-1] == "rolled_back"

    monitors.delete("churn")
    assert monitors.list() == []
    with pytest.raises(anneal.NotFoundError):
        monitors.get("churn")


def test_manual_mode_waits_for_approval(churn):
    home, s = churn
    stream(home, s, 150, 230)
    m = home.monitors().create("churn", policy("manual"), name="churn-manual")
    assert m.name == "churn-manual"
    with pytest.raises(anneal.NotFoundError):
        m.approve()
    # run_jobs=False submits the retrain only; the next tick runs and gates it.
    r = m.tick(run_jobs=False)
    assert r["outcome"] == "retrain_started"
    assert home.training().job(r["job_id"]).status == "pending"
    assert m.record()["current_job_id"] == r["job_id"]
    r = m.tick()
    assert (r["outcome"], r["candidate"]) == ("awaiting_approval", "churn@2"), r
    assert version(home) == 1
    assert home.models().resolve("churn@candidate").version == 2
    # The waiting candidate holds further retrains.
    assert m.tick()["outcome"] == "awaiting_approval"

    events = []
    moved = m.approve("looks good", on_event=events.append)
    assert version(home) == 2
    assert moved["previous"] == home.models().resolve("churn@1").id
    assert [e["type"] for e in events] == ["promoted"]
    assert set(events[0]) == EVENT_KEYS["promoted"]
    assert (events[0]["mode"], events[0]["reason"]) == ("manual", "looks good")
    assert m.record()["candidate_id"] is None
    assert kinds(m)[-1] == "promoted"


def field_of(exc_info):
    assert exc_info.value.code == "invalid_config"
    return exc_info.value.field


@pytest.mark.parametrize(
    "bad, field",
    [
        ({}, "triggers"),
        ({"triggers": {"floor": 0.7}}, "triggers.floor"),
        ({"trigger": {"accuracy_floor": 0.7}}, "trigger"),
        ({"triggers": {"accuracy_floor": 1.5}}, "triggers.accuracy_floor"),
        ({"triggers": {"accuracy_floor": "high"}}, "triggers.accuracy_floor"),
        ({"triggers": {"accuracy_floor": float("nan")}}, "triggers.accuracy_floor"),
        ({"triggers": {"accuracy_floor": 0.7}, "guards": {"min_samples": 1000}}, "guards.min_samples"),
        ({"triggers": {"accuracy_floor": 0.7}, "guards": {"cooldown_secs": -1}}, "guards.cooldown_secs"),
        ({"triggers": {"schedule_secs": 60}, "guards": {"cooldown_secs": 120}}, "guards.cooldown_secs"),
        ({"triggers": {"accuracy_floor": 0.7}, "gate": {"mode": "yolo"}}, "gate.mode"),
        ({"triggers": {"accuracy_floor": 0.7}, "gate": {"metric": "loss"}}, "gate.metric"),
        ({"triggers": {"accuracy_floor": 0.7}, "action": {"replay_fraction": 2}}, "action.replay_fraction"),
        ({"triggers": {"accuracy_floor": 0.7}, "action": {"config": {"c": -1}}}, "action.config.c"),
        ("often", "policy"),
    ],
)
def test_bad_policies_are_refused_naming_the_field(churn, bad, field):
    home, _ = churn
    monitors = home.monitors()
    with pytest.raises(anneal.InvalidConfigError) as e:
        monitors.create("churn", bad)
    assert field_of(e) == field, str(e.value)
    assert monitors.list() == [], "nothing recorded"
    # set_policy refuses it the same way and keeps the stored policy.
    m = monitors.create("churn", policy())
    with pytest.raises(anneal.InvalidConfigError) as e:
        m.set_policy(bad)
    assert field_of(e) == field
    assert m.record()["policy"]["triggers"]["drift_window"] == 60


def test_other_bad_arguments(churn):
    home, _ = churn
    monitors = home.monitors()
    with pytest.raises(anneal.InvalidConfigError) as e:
        monitors.create("nothing", policy())
    assert field_of(e) == "model"
    with pytest.raises(anneal.InvalidConfigError) as e:
        monitors.create("churn", policy(), name="no spaces allowed/")
    assert field_of(e) == "name"
    with pytest.raises(anneal.NotFoundError):
        monitors.get("nope")
    with pytest.raises(anneal.NotFoundError):
        monitors.delete("nope")
    m = monitors.create("churn", policy())
    with pytest.raises(anneal.InvalidConfigError) as e:
        m.tick(run_jobs="yes")
    assert field_of(e) == "run_jobs"
    with pytest.raises(TypeError):
        m.tick(on_event=42)
    for secs in (0, -1, float("inf")):
        with pytest.raises(anneal.InvalidConfigError) as e:
            m.spawn(secs)
        assert field_of(e) == "interval_secs"
    new = m.set_policy(dict(policy(), triggers={"new_labels": 5}))
    assert (new["policy"]["triggers"]["new_labels"], new["policy"]["triggers"]["drift_window"]) == (5, None)
    # A failing pass is recorded and raised: no production model any more.
    home.models().remove_alias("churn", "production")
    events = []
    with pytest.raises(anneal.NotFoundError):
        m.tick(on_event=events.append)
    assert [e["type"] for e in events] == ["monitor_error"]
    assert events[0]["error"]["code"] == "not_found"
    assert kinds(m)[-1] == "error"
    assert m.record()["last_tick"]["outcome"] == "error"


def test_tick_releases_the_gil_and_reraises_the_callbacks_exception(churn):
    home, s = churn
    stream(home, s, 150, 230)
    m = home.monitors().create("churn", policy())
    reports = []
    took, counted = ticks_during(lambda: reports.append(m.tick()))
    assert reports[0]["outcome"] == "promoted"
    assert counted >= 1, f"no other thread ran during a {took:.3f} s tick"

    # The callback's exception is raised once the tick returns; its changes stay.
    m.rollback()

    class Boom(Exception):
        pass

    def boom(e):
        raise Boom(e["type"])

    before = len(m.decisions())
    with pytest.raises(Boom, match="drift_detected"):
        m.tick(on_event=boom)
    assert kinds(m)[before : before + 2] == ["drift_detected", "retrain_started"]
    assert m.record()["last_tick"]["outcome"] in ("promoted", "kept")


def test_spawn_ticks_in_the_background_until_stopped(churn):
    home, s = churn
    stream(home, s, 150, 230)
    m = home.monitors().create("churn", policy())
    seen, threads = [], set()

    def on_event(e):
        threads.add(threading.get_ident())
        seen.append(e)

    with m.spawn(0.02, on_event) as handle:
        assert handle.running
        t0 = time.monotonic()
        while version(home) != 2 and time.monotonic() - t0 < 60:
            time.sleep(0.02)
        while handle.ticks < 3 and time.monotonic() - t0 < 60:
            time.sleep(0.02)
        assert handle.last_error is None
    assert not handle.running
    handle.stop()  # idempotent
    assert handle.ticks >= 3
    assert version(home) == 2
    assert threading.get_ident() not in threads, "events come from the monitor's thread"
    types = [e["type"] for e in seen]
    for t in ("drift_detected", "retrain_started", "candidate_evaluated", "promoted"):
        assert t in types, types
    for e in monitor_events(seen):
        assert set(e) == EVENT_KEYS[e["type"]]
    assert "running=False" in repr(handle)


def test_a_spawned_monitor_outlives_a_raising_callback_and_reports_failed_ticks(churn, monkeypatch):
    home, s = churn
    stream(home, s, 150, 230)
    m = home.monitors().create("churn", policy())
    unraisable = []
    monkeypatch.setattr("sys.unraisablehook", lambda u: unraisable.append(u.exc_value))

    def boom(e):
        raise RuntimeError(e["type"])

    handle = m.spawn(0.02, boom)
    try:
        t0 = time.monotonic()
        while version(home) != 2 and time.monotonic() - t0 < 60:
            time.sleep(0.02)
        assert version(home) == 2
        # Take production away: ticks fail, are recorded, and the loop goes on.
        home.models().remove_alias("churn", "production")
        n = handle.ticks
        while (handle.last_error is None or handle.ticks < n + 2) and time.monotonic() - t0 < 60:
            time.sleep(0.02)
        assert handle.last_error["code"] == "not_found"
        assert handle.ticks >= n + 2
    finally:
        handle.stop()
    assert any(isinstance(x, RuntimeError) and str(x) == "promoted" for x in unraisable), unraisable
    assert handle.last_error["code"] == "not_found", "kept after stop()"
