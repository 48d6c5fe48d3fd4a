"""The timeline and its plot, `learn`, and a language model monitor's feeds, from Python.

A production classifier trained on a seeded scenario, labelled predictions after the
scenario drifts, a monitor tick that retrains and promotes: the timeline reads it all
back and `plot_timeline` draws it (PNG bytes, and a file when a path is given).
`learn` updates a classifier on new labelled rows as a new version with lineage.
`Monitor.feed` hands a language model's monitor new data that its ticks count."""

import pytest

import anneal
from conftest import ticks_during

# Rows 0..150 follow one concept; from row 150 the features move and the concept changes.
SCENARIO = dict(
    rows=360,
    numeric=3,
    categorical=1,
    categories=3,
    classes=2,
    separation=3.0,
    seed=11,
    drift=[
        {"kind": "concept", "start": 150, "magnitude": 2.0},
        {"kind": "covariate", "start": 150, "magnitude": 1.0},
    ],
)

PNG = b"\x89PNG\r\n\x1a\n"


def records(s, start, stop):
    return [dict(r, label=y) for r, y in zip(s["rows"][start:stop], s["labels"][start:stop])]


@pytest.fixture
def churn(home):
    """`churn` v1 (logistic regression on rows 0..100) in production, and the scenario."""
    s = anneal.synthetic_scenario(**SCENARIO)
    home.datasets().import_records(records(s, 0, 100), name="churn-train")
    engine = home.training()
    job = engine.create_job({"dataset": "churn-train", "eval_fraction": 0.2, "method": {"classifier": {}}, "output_name": "churn"})
    engine.run(job.id)
    home.models().promote("churn@1")
    return home, s


def stream(home, s, start, stop):
    """Predicts rows start..stop with the production model and labels each with its truth."""
    p = home.predictor("churn@production")
    c = home.continual()
    for pred, y in zip(p.predict_batch(s["rows"][start:stop]), s["labels"][start:stop]):
        c.label(pred["prediction_id"], y)


def accuracy(home, model, s, start, stop):
    preds = home.predictor(model, log_features=False).predict_batch(s["rows"][start:stop])
    return sum(p["label"] == y for p, y in zip(preds, s["labels"][start:stop])) / (stop - start)


def test_timeline_and_plot_after_a_monitored_retrain(churn, tmp_path):
    home, s = churn
    policy = {
        "triggers": {"drift_window": 60, "accuracy_floor": 0.7},
        "guards": {"min_samples": 20},
        "action": {"replay_fraction": 0.0},
        "gate": {"mode": "auto", "margin": 0.0},
    }
    m = home.monitors().create("churn", policy)
    stream(home, s, 100, 150)
    assert m.tick()["outcome"] == "idle"
    stream(home, s, 150, 230)
    assert m.tick()["outcome"] == "promoted"
    stream(home, s, 230, 260)

    c = home.continual()
    t = c.timeline("churn", window=20)
    assert set(t) == {
        "model_name", "window", "since", "until", "labelled", "accuracy", "versions", "drift", "evaluations",
        "events", "accuracy_floor",
    }  # fmt: skip
    assert (t["model_name"], t["window"], t["labelled"], t["accuracy_floor"]) == ("churn", 20, 160, 0.7)
    points = t["accuracy"]
    assert [p["index"] for p in points] == list(range(1, 161))
    assert [p["version"] for p in points] == [1] * 130 + [2] * 30
    assert points[-1]["window_rows"] == 20 and all(0.0 <= p["accuracy"] <= 1.0 for p in points)
    # The rolling accuracy is the share of correct ones among the last 20.
    correct = [p["correct"] for p in points]
    assert points[-1]["accuracy"] == pytest.approx(sum(correct[-20:]) / 20)
    assert [(v["version"], v["labelled"]) for v in t["versions"]] == [(1, 130), (2, 30)]
    assert [e["kind"] for e in t["events"]] == ["promoted", "retrain_started", "promoted"]
    first, promoted = t["events"][0], t["events"][-1]
    assert (first["version"], first["previous_version"]) == (1, None)
    assert (promoted["version"], promoted["previous_version"]) == (2, 1)
    assert any(d["verdict"] == "drift" for d in t["drift"])
    assert t["evaluations"] and {"accuracy", "log_loss"} <= set(t["evaluations"][0]["metrics"])
    # A reference stands for its name; max_points thins, keeping the first and the last.
    thin = c.timeline("churn@production", window=20, max_points=10)
    assert len(thin["accuracy"]) <= 10 and thin["accuracy"][-1] == points[-1]
    assert thin["accuracy"][0] == points[0]

    # The plot: PNG bytes of the asked size; with a path, the same bytes in the file.
    png = c.plot_timeline("churn", window=20, width=640, height=400, title="churn")
    assert isinstance(png, bytes) and png.startswith(PNG)
    assert int.from_bytes(png[16:20], "big") == 640 and int.from_bytes(png[20:24], "big") == 400
    plots = tmp_path / "plots"
    plots.mkdir()
    out = plots / "timeline.png"
    again = c.plot_timeline("churn", out, window=20, width=640, height=400, title="churn")
    assert out.read_bytes() == again == png
    assert [p.name for p in plots.iterdir()] == ["timeline.png"], "no temporary file left"

    # Typed errors naming the field; nothing written.
    for kwargs, field in [
        (dict(window=0), "window"),
        (dict(max_points=1), "max_points"),
        (dict(since="yesterday"), "since"),
        (dict(width=10), "width"),
        (dict(height="tall"), "height"),
    ]:
        with pytest.raises(anneal.InvalidConfigError) as e:
            c.plot_timeline("churn", plots / "bad.png", **kwargs)
        assert e.value.field == field, (kwargs, e.value)
    assert [p.name for p in plots.iterdir()] == ["timeline.png"]
    with pytest.raises(anneal.InvalidConfigError) as e:
        c.timeline("churn", window=-1)
    assert e.value.field == "window"
    with pytest.raises(anneal.NotFoundError):
        c.timeline("nobody")
    with pytest.raises(anneal.AnnealFileNotFoundError):
        c.plot_timeline("churn", tmp_path / "missing-dir" / "t.png")


def test_plot_timeline_releases_the_gil(churn):
    home, s = churn
    stream(home, s, 100, 160)
    c = home.continual()
    pngs = []
    took, counted = ticks_during(lambda: pngs.append(c.plot_timeline("churn", width=3000, height=2000)))
    assert pngs[0].startswith(PNG)
    assert counted >= 1, f"no other thread ran during a {took:.3f} s plot"


def test_learn_registers_a_better_version_with_lineage(churn):
    home, s = churn
    c = home.continual()
    served = home.predictor("churn@production")
    probe = served.predict(s["rows"][300])
    v1 = home.models().resolve("churn@1")

    v2 = c.learn("churn@production", records(s, 150, 300), epochs=3, learning_rate=0.1)
    assert isinstance(v2, anneal.ModelRecord)
    assert (v2.name, v2.version, v2.kind, v2.source) == ("churn", 2, "classifier", f"learn:{v1.id}")
    before, after = accuracy(home, "churn@1", s, 300, 360), accuracy(home, "churn@2", s, 300, 360)
    assert after > before + 0.1, (before, after)
    lineage = v2.lineage
    assert (lineage["base"], lineage["base_ref"]) == (v1.id, "churn@1")
    learned = lineage["learned"]
    assert (learned["records"], learned["epochs"], learned["batch_size"], learned["steps"]) == (150, 3, 1, 450)
    assert learned["learning_rate"] == 0.1 and learned["accuracy_after"] > learned["accuracy_before"]
    stored = {f.name: f.sha256 for f in v2.files}
    assert stored["learned_records.jsonl"] == learned["records_sha256"]
    # The version learned from, and a predictor loaded on it, are unchanged.
    assert home.models().resolve("churn@production").id == v1.id
    assert home.models().resolve("churn@1").sha256 == v1.sha256
    assert served.predict(s["rows"][300])["probabilities"] == probe["probabilities"]
    # learn_many batches, another name.
    other = c.learn("churn@1", records(s, 150, 250), batch_size=25, output_name="churn-sgd")
    assert (other.name, other.version, other.lineage["learned"]["steps"]) == ("churn-sgd", 1, 4)


def test_learn_refuses_bad_records_and_registers_nothing(churn):
    home, s = churn
    c = home.continual()
    good = records(s, 150, 155)
    before = [m.id for m in home.models().list()]

    def bad(i, **change):
        r = [dict(x) for x in good]
        for k, v in change.items():
            if v is KeyError:
                del r[i][k]
            else:
                r[i][k] = v
        return r

    for rows, record, field in [
        (bad(2, nope=1.0), 3, "nope"),
        (bad(3, x1=KeyError), 4, "x1"),
        (bad(0, x0="high"), 1, "x0"),
        (bad(1, x0=float("nan")), 2, "x0"),
        (bad(4, label=7), 5, "label"),
        (bad(1, label=KeyError), 2, "label"),
        (good + ["not a dict"], 6, None),
    ]:
        with pytest.raises(anneal.InvalidDataError) as e:
            c.learn("churn", rows)
        assert (e.value.record, e.value.field) == (record, field), (rows, e.value)
    for kwargs, field in [
        (dict(epochs=0), "epochs"),
        (dict(batch_size=-1), "batch_size"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(output_name=""), "output_name"),
    ]:
        with pytest.raises(anneal.InvalidConfigError) as e:
            c.learn("churn", good, **kwargs)
        assert e.value.field == field
    with pytest.raises(anneal.InvalidConfigError) as e:
        c.learn("churn", {"x0": 1.0, "label": 0})
    assert e.value.field == "records"
    with pytest.raises(anneal.NotFoundError):
        c.learn("nobody", good)
    assert [m.id for m in home.models().list()] == before


def test_a_language_model_monitor_takes_feeds_that_its_ticks_count(home):
    home.models().create_preset("nano")
    home.models().promote("nano@1")
    ds = home.datasets()
    ds.import_records([{"text": f"the cat sat on mat {i}."} for i in range(12)], name="new-words")
    ds.import_records([{"x": float(i), "label": i % 2} for i in range(10)], name="rows")
    # The metric trigger reads the fed rows (under min_samples: counted, not scored).
    m = home.monitors().create("nano", {"triggers": {"new_rows": 1000, "metric_limit": 100.0}})
    assert m.feeds() == []
    assert m.tick()["labelled"] == 0

    fed = m.feed("new-words")
    assert set(fed) == {"id", "dataset_id", "dataset", "rows", "fed_at", "job_id"}
    assert (fed["dataset"], fed["rows"], fed["job_id"]) == ("new-words", 12, None)
    assert m.feeds() == [fed]
    with pytest.raises(anneal.AlreadyExistsError):
        m.feed("new-words")
    with pytest.raises(anneal.InvalidConfigError) as e:
        m.feed("rows")
    assert e.value.field == "dataset"
    with pytest.raises(anneal.NotFoundError):
        m.feed("nothing-like-it")

    # The tick counts the fed rows (no retrain under the thresholds) ...
    r = m.tick()
    assert (r["outcome"], r["labelled"], r["model"]) == ("idle", 12, "nano@1"), r
    assert "12 fed rows" in r["reason"]
    # ... and a retrain takes them: submitted only (run_jobs=False), the feed names its job.
    m.set_policy({"triggers": {"new_rows": 10}, "action": {"max_steps": 1}})
    r = m.tick(run_jobs=False)
    assert (r["outcome"], r["trigger"]) == ("retrain_started", "new_rows"), r
    assert m.feeds()[0]["job_id"] == r["job_id"]
    assert home.training().job(r["job_id"]).status == "pending"
