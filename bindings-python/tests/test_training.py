import _thread
import threading
import time

import pytest

import anneal
from conftest import ticks_during


@pytest.fixture
def env(home):
    """A nano base model and a 40-record completion dataset."""
    base = home.models().create_preset("nano", seed=0)
    records = [{"prompt": f"{i} plus one is", "completion": f" {i + 1}"} for i in range(40)]
    home.datasets().import_records(records, name="qa")

    class Env:
        pass

    e = Env()
    e.home, e.base, e.engine = home, base, home.training()
    e.spec = {"base": base.id, "dataset": "qa", "method": "full", "max_steps": 8, "seq_len": 32, "batch_size": 4,
              "learning_rate": 3e-3}
    return e


def test_train_end_to_end_registers_a_model(env):
    report = env.engine.train(env.spec)
    assert isinstance(report, anneal.TrainReport)
    assert report.steps == 8 and report.tokens > 0 and report.final_loss > 0
    model = env.home.models().get(report.model_id)
    assert model.id == report.model == report.model_id and model.kind == "full"
    job = env.engine.job(report.job_id)
    assert job.status == "completed" and job.output_model_id == report.model_id
    assert job.spec["max_steps"] == 8 and job.spec["schedule"] == "linear"  # defaults from the core
    assert report.to_dict()["model"] == report.model_id
    assert [j.id for j in env.engine.jobs(status="completed")] == [report.job_id]
    assert env.engine.jobs(status="failed") == []


def test_keyword_spec_and_create_job_then_run(env):
    spec = dict(env.spec)
    base = spec.pop("base")
    job = env.engine.create_job(spec, base=base, max_steps=3)
    assert job.status == "pending" and job.spec["max_steps"] == 3 and job.is_resumable
    report = env.engine.run(job.id)
    assert report.job_id == job.id and report.steps == 3
    report2 = env.engine.train(**{**env.spec, "max_steps": 2, "output_name": "tiny-qa"})
    assert env.home.models().get(report2.model_id).name == "tiny-qa"


def test_events_order_and_shape(env):
    events = []
    report = env.engine.train(env.spec, on_event=events.append)
    types = [e["type"] for e in events]
    assert types[0] == "job_started" and types[-1] == "job_finished"
    assert "step" in types and set(types[1:-1]) <= {"step", "eval", "checkpoint", "log"}
    assert events[0] == {"type": "job_started", "job_id": report.job_id, "total_steps": 8, "epochs": 1}
    steps = [e for e in events if e["type"] == "step"]
    assert {"job_id", "epoch", "step", "total_steps", "loss", "lr", "tokens_per_sec", "progress"} <= set(steps[0])
    assert steps[-1]["step"] == 8 and steps[-1]["progress"] == pytest.approx(1.0)
    assert events[-1] == {"type": "job_finished", "job_id": report.job_id, "status": "completed",
                          "model_id": report.model_id}


def test_train_releases_the_gil(env):
    took, ticks = ticks_during(lambda: env.engine.train({**env.spec, "max_steps": 50}), period=0.002)
    assert took > 0.05, "training must take a while for this test"
    assert ticks >= 5


def test_callback_exception_is_reraised_unchanged_and_job_fails(env):
    class Boom(Exception):
        pass

    boom = Boom("stop")
    seen = []

    def on_event(e):
        seen.append(e)
        if e["type"] == "step":
            raise boom

    with pytest.raises(Boom) as ei:
        env.engine.train(env.spec, on_event=on_event)
    assert ei.value is boom
    last = seen[-1]
    assert last["type"] == "job_finished" and last["status"] == "failed"
    assert last["error"]["code"] == "callback_failed"
    (job,) = env.engine.jobs()
    assert job.status == "failed" and job.error["code"] == "callback_failed" and job.is_resumable
    assert env.engine.resume(job.id).steps == 8


def test_ctrl_c_cancels_cleanly_and_resume_completes(env):
    events = []

    def on_event(e):
        events.append(e)
        if e["type"] == "step" and e["step"] == 1:
            _thread.interrupt_main()

    with pytest.raises(KeyboardInterrupt):
        env.engine.train({**env.spec, "max_steps": 30}, on_event=on_event)
    assert events[-1]["type"] == "job_finished" and events[-1]["status"] == "cancelled"
    (job,) = env.engine.jobs()
    assert job.status == "cancelled" and job.is_resumable
    assert 1 <= job.step < 30 and job.checkpoint
    report = env.engine.resume(job.id)
    assert report.steps == 30
    assert env.engine.job(job.id).status == "completed"


def test_ctrl_c_from_a_timer(env):
    timers = []

    def on_event(e):
        # Started once the run is under way, so the interrupt cannot hit the test itself.
        if e["type"] == "job_started":
            timers.append(threading.Timer(0.05, _thread.interrupt_main))
            timers[0].start()

    try:
        with pytest.raises(KeyboardInterrupt):
            env.engine.train({**env.spec, "max_steps": 2000}, on_event=on_event)
    finally:
        for t in timers:
            t.cancel()
    (job,) = env.engine.jobs()
    assert job.status == "cancelled" and job.step < 2000


def test_cancel_token(env):
    token = anneal.CancelToken()

    def on_event(e):
        if e["type"] == "step":
            token.cancel()

    with pytest.raises(anneal.CancelledError) as ei:
        env.engine.train({**env.spec, "max_steps": 30}, on_event=on_event, cancel=token)
    assert ei.value.code == "cancelled"
    (job,) = env.engine.jobs(status="cancelled")
    assert env.engine.resume(job.id).steps == 30


def test_spawn_wait_from_another_thread_and_cancel(env):
    job = env.engine.create_job({**env.spec, "max_steps": 2000})
    handle = env.engine.spawn(job.id)
    assert handle.job_id == job.id
    outcome = {}

    def waiter():
        try:
            outcome["report"] = handle.wait()
        except BaseException as e:  # noqa: BLE001
            outcome["error"] = e

    t = threading.Thread(target=waiter)
    t.start()
    events = []
    for e in handle.events():
        events.append(e)
        if e["type"] == "step" and e["step"] == 2:
            handle.cancel()
    t.join(10)
    assert not t.is_alive()
    assert isinstance(outcome.get("error"), anneal.CancelledError), outcome
    assert events[0]["type"] == "job_started" and events[-1]["type"] == "job_finished"
    assert events[-1]["status"] == "cancelled"
    assert handle.is_finished
    with pytest.raises(anneal.CancelledError):
        handle.wait()  # again: same outcome
    rec = env.engine.job(job.id)
    assert rec.status == "cancelled" and rec.is_resumable
    # spawn on a cancelled job resumes it
    h2 = env.engine.spawn(job.id)
    h2.cancel()
    with pytest.raises(anneal.CancelledError):
        h2.wait()


def test_spawn_completes_and_iterates(env):
    job = env.engine.create_job(env.spec)
    handle = env.engine.spawn(job.id)
    report = handle.wait()
    assert report.steps == 8 and report.job_id == job.id
    types = [e["type"] for e in handle]  # events buffered when the thread was joined
    assert types[0] == "job_started" and types[-1] == "job_finished"
    assert types.count("step") == 8  # spawn is not throttled
    assert handle.wait() == report


def test_catalog_cancel_of_a_pending_job(env):
    job = env.engine.create_job(env.spec)
    assert env.engine.cancel(job.id).status == "cancelled"
    assert env.engine.resume(job.id).steps == 8


def test_mixed_precision_bf16_follows_f32(env):
    """mixed_precision="bf16" trains (linear layers in bfloat16, sums in f32) within 1% of
    f32's losses, and is recorded in the job's spec; a wrong value names the field."""
    losses = {}
    for mp in ("no", "bf16"):
        report = env.engine.train({**env.spec, "mixed_precision": mp})
        assert env.engine.job(report.job_id).spec["mixed_precision"] == mp
        losses[mp] = [m.loss for m in env.engine.metrics(report.job_id) if m.kind == "train"]
    assert len(losses["no"]) == len(losses["bf16"]) == 8
    assert losses["no"] != losses["bf16"]
    assert all(abs(a - b) / a < 0.01 for a, b in zip(losses["no"], losses["bf16"])), losses
    with pytest.raises(anneal.InvalidConfigError) as ei:
        env.engine.create_job({**env.spec, "mixed_precision": "fp8"})
    assert ei.value.field == "mixed_precision"


def test_invalid_spec_names_the_field(env):
    with pytest.raises(anneal.InvalidConfigError) as ei:
        env.engine.train({**env.spec, "lr": 1e-3})
    assert ei.value.code == "invalid_config" and ei.value.field == "lr"
    with pytest.raises(anneal.InvalidConfigError) as ei:
        env.engine.create_job({**env.spec, "batch_size": 0})
    assert ei.value.field == "batch_size"
    with pytest.raises(anneal.InvalidConfigError) as ei:
        env.engine.train(dataset="qa")
    assert ei.value.field == "base"
    with pytest.raises(anneal.InvalidConfigError) as ei:
        env.engine.jobs(status="sleeping")
    assert ei.value.field == "status"
    with pytest.raises(TypeError):
        env.engine.create_job(["not", "a", "dict"])
    assert env.engine.jobs() == []


def test_not_found(env):
    with pytest.raises(anneal.NotFoundError):
        env.engine.job("job_missing")
    with pytest.raises(anneal.NotFoundError):
        env.engine.run("job_missing")
    with pytest.raises(anneal.NotFoundError):
        env.engine.logs("job_missing")


def test_run_twice_is_in_use(env):
    report = env.engine.train(env.spec)
    with pytest.raises(anneal.InUseError):
        env.engine.run(report.job_id)


def test_metrics_and_logs(env):
    report = env.engine.train(env.spec)
    metrics = env.engine.metrics(report.job_id)
    assert [m.step for m in metrics if m.kind == "train"] == list(range(1, 9))
    assert all(m.loss > 0 for m in metrics) and isinstance(metrics[0], anneal.MetricPoint)
    assert set(metrics[0].to_dict()) >= {"kind", "step", "epoch", "loss", "lr", "tokens_per_sec", "at"}
    logs = env.engine.logs(report.job_id)
    assert logs and all(isinstance(log, anneal.JobLog) and log.level and log.message for log in logs)
    rec = env.engine.job(report.job_id)
    assert rec.to_dict()["id"] == rec.id and "JobRecord(" in repr(rec)


def test_progress_bar_with_tqdm(env, capsys):
    pytest.importorskip("tqdm")
    events = []
    report = env.engine.train(env.spec, progress=True, on_event=events.append)
    assert report.steps == 8 and events[-1]["type"] == "job_finished"
    err = capsys.readouterr().err
    assert "8/8" in err and report.job_id in err


def test_on_event_must_be_callable(env):
    with pytest.raises(TypeError, match="on_event"):
        env.engine.train(env.spec, on_event="print")
