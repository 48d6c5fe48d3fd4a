"""Record classes: every serialized field is an attribute with the same value, and the
record classes keep their reprs, equality and hashability."""

import pytest

import anneal


def plain(value):
    """A record attribute as `to_dict` renders it (nested records as dicts)."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def records(home):
    models, datasets, training = home.models(), home.datasets(), home.training()
    base = models.create_preset("nano", seed=0, tags=["a"])
    models.set_alias(base.id, "prod")
    datasets.import_records([{"prompt": f"{i} plus one is", "completion": f" {i + 1}"} for i in range(20)], name="qa")
    split = datasets.split("qa", 0.25, seed=1)
    report = training.train(base=base.id, dataset="qa-train", eval_dataset="qa-val", method="full", max_steps=2,
                            seq_len=16, batch_size=2)
    gen = home.generator(base.id)
    out = gen.generate("1 plus", max_new_tokens=3, seed=1, temperature=0.7)
    stream = gen.stream("2 plus", max_new_tokens=2)
    chunks = list(stream)
    return [
        *models.list(), *base.files, *models.presets(), models.usage(base.id), *models.generations(),
        *datasets.list(), datasets.stats("qa"), split,
        report, training.job(report.job_id), *training.metrics(report.job_id), *training.logs(report.job_id),
        out, out.timings, *gen.score(["hello"]), *chunks, stream.generation,
    ]


def test_every_serialized_field_is_an_attribute(home):
    seen = set()
    for rec in records(home):
        seen.add(type(rec).__name__)
        d = rec.to_dict()
        assert d, rec
        for key, value in d.items():
            assert plain(getattr(rec, key)) == value, (type(rec).__name__, key)
    assert seen == {
        "ModelRecord", "ModelFile", "Preset", "ModelUsage", "GenerationRecord", "DatasetRecord", "DatasetStats",
        "DatasetSplit", "TrainReport", "JobRecord", "MetricPoint", "JobLog", "Generation", "Timings", "Score",
        "StreamChunk",
    }


def test_reprs_and_aliases(home):
    recs = records(home)
    for rec in recs:
        name = type(rec).__name__
        assert repr(rec).startswith(name + "("), repr(rec)
    report = next(r for r in recs if isinstance(r, anneal.TrainReport))
    assert report.model_id == report.model and isinstance(report.model_id, str)
    assert repr(report) == (f"TrainReport(job_id='{report.job_id}', model='{report.model}', steps=2, "
                            f"final_loss={report.final_loss!r})")
    job = next(r for r in recs if isinstance(r, anneal.JobRecord))
    assert repr(job) == f"JobRecord(id='{job.id}', status='completed', step=2/2)" and not job.is_resumable
    split = next(r for r in recs if isinstance(r, anneal.DatasetSplit))
    train, val = split
    assert repr(split) == f"DatasetSplit(train={train!r}, val={val!r})"
    assert repr(train) == f"DatasetRecord(id='{train.id}', name='qa-train', format='completion', num_records=15)"
    model = next(r for r in recs if isinstance(r, anneal.ModelRecord))
    assert model.reference() == "nano@1" and model.aliases == ["prod"] and model.tags == ["a"]
    chunk = next(r for r in recs if isinstance(r, anneal.StreamChunk))
    assert repr(chunk).endswith(f", token_ids=[{','.join(map(str, chunk.token_ids))}])")


def test_equality_and_hashing(home):
    for rec in records(home):
        cls = type(rec)
        assert (rec == rec) is True
        if "__eq__" in cls.__dict__:
            # Records compared by value are not hashable.
            assert rec != object()
            with pytest.raises(TypeError):
                hash(rec)
        else:
            hash(rec)
