"""Continual learning from Python: a logistic classifier trained through `create_job`
(method `{"classifier": {...}}`) on a tabular JSONL dataset, served by a Predictor
(predictions as dicts, logged), labels, realised accuracy, evaluation, drift checks and
typed errors."""

import random

import pytest

import anneal
from conftest import write_jsonl

PREDICTION_KEYS = {"label", "confidence", "probabilities", "model", "model_id", "prediction_id", "unseen"}


def rows(n, seed, shift=0.0):
    """Two classes: `a` around (0, 2), `b` around (3, 0); a colour that mostly follows
    the class; `shift` moves the numbers."""
    r = random.Random(seed)
    out = []
    for i in range(n):
        c = i % 2
        colour = ["red", "blue"][c] if r.random() < 0.8 else ["blue", "red"][c]
        out.append(
            {
                "x1": c * 3.0 + r.gauss(0, 0.6) + shift,
                "x2": (1 - c) * 2.0 + r.gauss(0, 0.6) + shift,
                "color": colour,
                "label": ["a", "b"][c],
            }
        )
    return out


def features(row):
    return {k: v for k, v in row.items() if k != "label"}


@pytest.fixture
def served(home, tmp_path):
    ds = home.datasets()
    test = rows(40, 2)
    train = ds.import_file(write_jsonl(tmp_path / "train.jsonl", rows(80, 1)), name="toy")
    assert train.format == "tabular"
    ds.import_file(write_jsonl(tmp_path / "test.jsonl", test), name="toy-test")
    engine = home.training()
    job = engine.create_job({"dataset": "toy", "method": {"classifier": {"c": 1.0}}, "output_name": "toy-lr"})
    report = engine.run(job.id)
    return home, test, report


def test_classifier_trains_through_create_job(served):
    home, _, report = served
    rec = home.models().get(report.model)
    assert (rec.kind, rec.family, rec.name, rec.version) == ("classifier", "tabular", "toy-lr", 1)
    assert home.training().job(report.job_id).status == "completed"
    # The method's fields are the core's: a bad one names its path.
    with pytest.raises(anneal.InvalidConfigError) as e:
        home.training().create_job({"dataset": "toy", "method": {"classifier": {"c": -1}}})
    assert e.value.code == "invalid_config"
    assert e.value.field == "method.classifier.c"
    with pytest.raises(anneal.InvalidConfigError) as e:
        home.training().create_job({"dataset": "toy", "method": {"classifier": {"kind": "mlp"}}})
    assert "kind" in str(e.value)


def test_predict_label_accuracy_evaluate(served):
    home, test, report = served
    predictor = home.predictor("toy-lr")
    assert predictor.model.id == report.model
    assert sorted(predictor.classes) == ["a", "b"]
    p = predictor.predict(features(test[0]))
    assert set(p) == PREDICTION_KEYS
    assert (p["model"], p["model_id"], p["unseen"]) == ("toy-lr@1", report.model, [])
    assert abs(sum(p["probabilities"].values()) - 1.0) < 1e-9
    assert p["confidence"] == p["probabilities"][p["label"]] == max(p["probabilities"].values())
    assert p["label"] == test[0]["label"]

    batch = predictor.predict_batch([features(r) for r in test])
    assert len(batch) == 40 and all(set(b) == PREDICTION_KEYS for b in batch)
    continual = home.continual()
    logged = continual.predictions("toy-lr")
    assert len(logged) == 41
    assert logged[0]["id"] == batch[-1]["prediction_id"], "newest first"
    # Logged features read back as JSON (numbers within an ulp).
    assert logged[0]["features"] == pytest.approx(features(test[-1]), abs=1e-12)
    assert len(continual.predictions("toy-lr", limit=3)) == 3

    hits = 0
    for b, r in zip(batch, test):
        rec = continual.label(b["prediction_id"], r["label"])
        assert (rec["actual"], rec["correct"]) == (r["label"], b["label"] == r["label"])
        hits += b["label"] == r["label"]
    assert continual.prediction(batch[0]["prediction_id"])["actual"] == test[0]["label"]
    assert len(continual.predictions("toy-lr", labelled=True)) == 40
    acc = continual.realised_accuracy("toy-lr")
    assert (acc["model_id"], acc["labelled"], acc["correct"]) == (report.model, 40, hits)
    assert acc["accuracy"] == hits / 40 and acc["accuracy"] > 0.8
    assert continual.realised_accuracy("toy-lr", last=5)["labelled"] == 5
    assert continual.realised_accuracy("toy-lr", since="2999-01-01T00:00:00Z")["accuracy"] is None

    ev = continual.evaluate("toy-lr", "toy-test")
    assert (ev["model"], ev["rows"]) == ("toy-lr@1", 40)
    assert ev["metrics"]["accuracy"] == hits / 40
    assert {"accuracy", "f1_macro", "log_loss", "ece"} <= set(ev["metrics"])
    assert [e["id"] for e in continual.evaluations("toy-lr")] == [ev["id"]]


def test_drift_windows(served, tmp_path):
    home, test, _ = served
    ds = home.datasets()
    shifted = ds.import_file(write_jsonl(tmp_path / "shifted.jsonl", rows(40, 3, shift=3.0)), name="shifted")
    few = ds.import_file(write_jsonl(tmp_path / "few.jsonl", rows(10, 4)), name="few")
    continual = home.continual()
    moved = continual.drift("toy-lr", {"dataset": shifted.id})
    assert moved["verdict"] == "drift"
    assert moved["window"] == f"dataset:{shifted.id}"
    assert moved["report"]["drifted_columns"] >= 2
    assert 0.0 < moved["expected_accuracy"] <= 1.0
    small = continual.drift("toy-lr", {"dataset": "few"})
    assert small["verdict"] == "insufficient_data"
    assert small["report"]["window_rows"] == 10
    # Options are the core's DriftOptions: a lower min_rows gives a verdict.
    judged = continual.drift("toy-lr", {"dataset": few.id}, min_rows=5)
    assert judged["verdict"] in ("drift", "no_drift")
    predictor = home.predictor("toy-lr")
    predictor.predict_batch([features(r) for r in test])
    recent = continual.drift("toy-lr", {"predictions": 40})
    assert recent["window"] == "predictions:last=40"
    assert recent["report"]["window_rows"] == 40
    assert recent["verdict"] == "no_drift"
    checks = continual.drift_checks("toy-lr")
    assert [c["id"] for c in checks] == [recent["id"], judged["id"], small["id"], moved["id"]]

    with pytest.raises(anneal.InvalidConfigError) as e:
        continual.drift("toy-lr", {"weeks": 3})
    assert e.value.field == "window"
    with pytest.raises(anneal.InvalidConfigError) as e:
        continual.drift("toy-lr", {"dataset": few.id}, p_value=2.0)
    assert e.value.field == "p_value"
    assert len(continual.drift_checks("toy-lr")) == 4, "failed checks store nothing"


def test_typed_errors(served):
    home, test, _ = served
    predictor = home.predictor("toy-lr")
    continual = home.continual()
    bad = dict(features(test[0]), x1="tall")
    with pytest.raises(anneal.InvalidDataError) as e:
        predictor.predict(bad)
    assert (e.value.code, e.value.record, e.value.field) == ("invalid_data", 1, "x1")
    batch = [features(r) for r in test[:4]]
    batch[2] = dict(features(test[2]), x9=1.0)
    with pytest.raises(anneal.InvalidDataError) as e:
        predictor.predict_batch(batch)
    assert (e.value.record, e.value.field) == (3, "x9")
    with pytest.raises(anneal.InvalidDataError) as e:
        predictor.predict_batch([features(test[0]), [1, 2]])
    assert e.value.record == 2
    assert continual.predictions("toy-lr") == [], "a failed call logs nothing"

    with pytest.raises(anneal.NotFoundError) as e:
        continual.label("pred_nope", "a")
    assert e.value.code == "not_found" and "pred_nope" in str(e.value)
    p = predictor.predict(features(test[0]))
    with pytest.raises(anneal.InvalidDataError) as e:
        continual.label(p["prediction_id"], "zebra")
    assert e.value.field == "label"
    assert continual.prediction(p["prediction_id"])["actual"] is None

    with pytest.raises(anneal.NotFoundError):
        home.predictor("nope")
    with pytest.raises(anneal.InvalidConfigError) as e:
        home.predictor("toy-lr", max_rows=0)
    assert e.value.field == "max_rows"
    with pytest.raises(anneal.NotFoundError):
        continual.evaluate("toy-lr", "nope")
