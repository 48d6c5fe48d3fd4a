"""Promotions, rollbacks and the alias history; home.stats() after a few operations;
seeded synthetic scenarios; datasets.generate with its lineage."""

import json
from datetime import datetime, timezone

import pytest

import anneal


@pytest.fixture
def churn(models):
    return [models.create_preset("nano", name="churn", seed=i) for i in range(3)]


def test_promote_rollback_and_alias_history(models, churn):
    v1, v2, v3 = churn
    m = models.promote(v1.id, reason="first")
    assert (m["production"], m["previous"]) == (v1.id, None)
    assert [(c["alias"], c["action"], c["reason"], c["model_id"]) for c in m["changes"]] == [
        ("production", "promote", "first", v1.id)
    ]
    m = models.promote(v2.reference())
    assert (m["production"], m["previous"]) == (v2.id, v1.id)
    models.set_alias(v3.id, "candidate")
    m = models.promote("churn@candidate", reason="better")
    assert (m["production"], m["previous"]) == (v3.id, v2.id)
    # The candidate alias moved to production is removed in the same transaction.
    removed, added = models.alias_history("churn", "candidate")
    assert (removed["action"], removed["model_id"], removed["previous_id"]) == ("promote", None, v3.id)
    assert (added["action"], added["model_id"]) == ("set", v3.id)
    with pytest.raises(anneal.NotFoundError):
        models.resolve("churn@candidate")

    m = models.rollback("churn", reason="regression")
    assert (m["production"], m["previous"]) == (v2.id, v1.id)
    assert models.resolve("churn@production").id == v2.id
    m = models.rollback("churn")
    assert (m["production"], m["previous"]) == (v1.id, None)
    with pytest.raises(anneal.NotFoundError) as e:
        models.rollback("churn")
    assert e.value.code == "not_found"

    history = models.alias_history("churn", "production")
    assert [c["action"] for c in history] == ["rollback", "rollback", "promote", "promote", "promote"]
    assert [c["version"] for c in history] == [1, 2, 3, 2, 1]
    assert history[0]["previous_version"] == 2 and history[1]["reason"] == "regression"
    ids = [c["id"] for c in history]
    assert ids == sorted(ids, reverse=True)
    everything = models.alias_history("churn")
    assert {c["alias"] for c in everything} == {"production", "previous", "candidate"}

    # What production pointed at, at the time of each change (text or datetime).
    first = history[-1]
    assert models.alias_at("churn", "production", first["at"])["model_id"] in (v1.id, v2.id, v3.id)
    assert models.alias_at("churn", "production", "2000-01-01T00:00:00Z") is None
    now = models.alias_at("churn", "production", datetime.now(timezone.utc))
    assert now["model_id"] == v1.id and now["action"] == "rollback"

    with pytest.raises(anneal.InvalidConfigError) as e:
        models.alias_at("churn", "production", "yesterday")
    assert e.value.field == "at"
    with pytest.raises(anneal.InvalidConfigError) as e:
        models.promote(v2.id, reason="x" * 5000)
    assert e.value.field == "reason"
    with pytest.raises(anneal.NotFoundError):
        models.promote("nobody@1")


def test_stats_after_a_few_operations(home, models, churn):
    empty = anneal.Home.open(home.root + "-empty").stats()
    assert empty["jobs"]["total"] == 0 and empty["recent"] == [] and empty["models_by_kind"] == {}

    home.datasets().import_records([{"prompt": "a", "completion": "b"}], name="pairs")
    models.promote(churn[0].id)
    models.promote(churn[1].id)
    models.rollback("churn")
    home.generator(churn[0].id).generate("hi", max_new_tokens=2, ignore_eos=True)

    s = home.stats()
    assert s["models_by_kind"] == {"base": 3}
    assert s["datasets_by_format"] == {"completion": 1}
    assert s["presets"] == [{"preset": "nano", "models": 3, "jobs": 0}]
    assert (s["aliases"]["promotions"], s["aliases"]["rollbacks"]) == (2, 1)
    assert s["aliases"]["changes"] >= 5
    assert s["jobs"] == {
        "total": 0,
        "pending": 0,
        "running": 0,
        "completed": 0,
        "failed": 0,
        "cancelled": 0,
        "interrupted": 0,
        "duration": {"count": 0, "mean_s": None, "p50_s": None, "p95_s": None, "min_s": None, "max_s": None},
    }
    [g] = s["generations"]
    assert (g["model_id"], g["calls"], g["texts"], g["generated_tokens"]) == (churn[0].id, 1, 1, 2)
    [prod] = s["monitoring"]["production"]
    assert (prod["name"], prod["model_id"], prod["version"]) == ("churn", churn[0].id, 1)
    kinds = {a["kind"] for a in s["recent"]}
    assert {"dataset_created", "model_registered", "alias_changed", "generation"} <= kinds
    assert s["recent"][0]["kind"] == "generation", "newest first"

    assert len(home.stats(recent=2)["recent"]) == 2
    later = home.stats(since="2999-01-01T00:00:00Z")
    assert later["recent"] == [] and later["aliases"]["changes"] == 0 and later["generations"] == []
    assert later["since"] == "2999-01-01T00:00:00.000Z"
    assert later["models_by_kind"] == {"base": 3}, "inventories ignore since"
    assert home.stats(since=datetime(2000, 1, 1))["aliases"]["promotions"] == 2
    with pytest.raises(anneal.InvalidConfigError) as e:
        home.stats(since="soon")
    assert e.value.field == "since"
    with pytest.raises(anneal.InvalidConfigError) as e:
        home.stats(recent=10**6)
    assert e.value.field == "recent"


def test_synthetic_scenarios_are_seeded(tmp_path, home):
    drift = [{"kind": "covariate", "start": 150, "magnitude": 3.0}]
    a = anneal.synthetic_scenario(rows=200, seed=7, classes=3, drift=drift)
    b = anneal.synthetic_scenario(rows=200, seed=7, classes=3, drift=drift)
    c = anneal.synthetic_scenario(rows=200, seed=8, classes=3, drift=drift)
    assert a == b and a["rows"] != c["rows"]
    assert a["columns"] == ["x0", "x1", "x2", "x3", "c0"]
    assert len(a["rows"]) == len(a["labels"]) == len(a["probabilities"]) == 200
    assert set(a["labels"]) <= {0, 1, 2} and all(abs(sum(p) - 1) < 1e-9 for p in a["probabilities"])
    # Rows before the drift are the same with or without it; after it they move.
    plain = anneal.synthetic_scenario(rows=200, seed=7, classes=3)
    assert plain["rows"][:150] == a["rows"][:150] and plain["rows"][150:] != a["rows"][150:]

    path = tmp_path / "scenario.jsonl"
    anneal.write_synthetic_scenario(path, rows=200, seed=7, classes=3, drift=drift)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r.pop("label") for r in lines] == a["labels"] and lines == a["rows"]
    rec = home.datasets().import_file(path)
    assert (rec.format, rec.num_records) == ("tabular", 200)

    for kw, field in [
        ({"rows": 0}, "rows"),
        ({"classes": 1}, "classes"),
        ({"drift": [{"kind": "label", "start": 5000}]}, "drift[0].start"),
        ({"drift": [{"kind": "sideways"}]}, "drift[0].kind"),
        ({"colour": 1}, None),
    ]:
        if field is None:
            with pytest.raises(TypeError):
                anneal.synthetic_scenario(**kw)
            continue
        with pytest.raises(anneal.InvalidConfigError) as e:
            anneal.synthetic_scenario(**kw)
        assert e.value.field == field, kw
    with pytest.raises(anneal.InvalidConfigError):
        anneal.write_synthetic_scenario(tmp_path / "bad.jsonl", rows=0)
    assert not (tmp_path / "bad.jsonl").exists()


def test_datasets_generate_records_lineage(home, models):
    nano = models.create_preset("nano", seed=0)
    events = []
    rec = home.datasets().generate(
        nano.id,
        ["the cat", "a dog"],
        name="gen",
        generation={"max_new_tokens": 3, "ignore_eos": True},
        on_event=events.append,
    )
    assert (rec.name, rec.format, rec.num_records) == ("gen", "completion", 2)
    assert rec.source == f"generate:{nano.id}"
    rows = home.datasets().preview("gen")
    assert [r["prompt"] for r in rows] == ["the cat", "a dog"]
    lin = home.datasets().lineage("gen")
    assert (lin["model"], lin["model_ref"], lin["prompts"]) == (nano.id, nano.reference(), 2)
    assert lin["generation"]["max_new_tokens"] == 3 and lin["generation"]["seed"] is not None
    assert events[0]["type"] == "task_started" and events[-1]["type"] == "task_finished"
    assert home.datasets().lineage(
        home.datasets().import_records([{"text": "x"}], name="plain").id
    ) is None
    with pytest.raises(anneal.InvalidConfigError) as e:
        home.datasets().generate(nano.id, [])
    assert e.value.field == "prompts"
    with pytest.raises(anneal.InvalidConfigError) as e:
        home.datasets().generate(nano.id, ["x"], generation={"max_new_tokenz": 3})
    assert e.value.field == "generation.max_new_tokenz"
