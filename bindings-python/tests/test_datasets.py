import json

import pytest

import anneal
from conftest import dataset_dirs, write_jsonl

COMPLETION = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(10)]


# ------------------------------------------------------------------ imports by file type


def test_import_jsonl(ds, tmp_path):
    rec = ds.import_file(write_jsonl(tmp_path / "support.jsonl", COMPLETION))
    assert isinstance(rec, anneal.DatasetRecord)
    assert rec.name == "support"
    assert rec.format == "completion"
    assert rec.source_format == "jsonl"
    assert rec.num_records == 10
    assert rec.id.startswith("ds_")
    assert len(rec.sha256) == 64
    assert rec.source.endswith("support.jsonl")
    assert rec.columns == {"prompt": "prompt", "completion": "completion"}
    assert rec.parent_id is None
    assert rec.bytes > 0 and rec.created_at


def test_import_json_array(ds, tmp_path):
    p = tmp_path / "alpaca.json"
    p.write_text(json.dumps([{"instruction": "add", "input": "1 2", "output": "3"}] * 2 + [
        {"instruction": "say hi", "output": "hi"}
    ]))
    rec = ds.import_file(p)
    assert (rec.format, rec.source_format, rec.num_records) == ("instruction", "json", 3)
    assert ds.preview(rec.id, 5)[2] == {"instruction": "say hi", "input": "", "output": "hi"}


def test_import_csv_tabular_and_completion(ds, tmp_path):
    p = tmp_path / "reviews.csv"
    p.write_text("text_len,stars,label\n10,5,pos\n3,1,neg\n7,4,pos\n")
    rec = ds.import_file(p)
    assert (rec.format, rec.source_format, rec.num_records) == ("tabular", "csv", 3)
    assert ds.preview(rec.id, 1) == [{"features": {"text_len": "10", "stars": "5"}, "label": "pos"}]
    assert ds.stats(rec.id).label_counts == {"neg": 1, "pos": 2}

    q = tmp_path / "qa.csv"
    q.write_text("prompt,completion\nhello,world\n")
    assert ds.import_file(q).format == "completion"


def test_import_txt_lines_and_document(ds, tmp_path):
    p = tmp_path / "book.txt"
    p.write_text("first line\n\nsecond line\nthird\n")
    rec = ds.import_file(p)
    assert (rec.format, rec.source_format, rec.num_records) == ("text", "txt", 3)
    assert ds.preview(rec.id, 1) == [{"text": "first line"}]
    doc = ds.import_file(p, name="book-doc", txt_mode="document")
    assert doc.num_records == 1
    assert ds.preview(doc.id)[0]["text"].startswith("first line\n")


def test_import_chat_detected(ds, tmp_path):
    conv = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    rec = ds.import_file(write_jsonl(tmp_path / "chat.jsonl", [conv, conv | {"id": 2}]))
    assert rec.format == "chat"
    stats = ds.stats(rec.id)
    assert stats.role_counts == {"assistant": 2, "user": 2}


@pytest.mark.parametrize(
    "record,fmt",
    [
        ({"text": "a"}, "text"),
        ({"prompt": "a", "completion": "b"}, "completion"),
        ({"instruction": "a", "input": "", "output": "b"}, "instruction"),
        ({"messages": [{"role": "user", "content": "x"}]}, "chat"),
        ({"x": 1, "label": "pos"}, "tabular"),
    ],
)
def test_format_detection_from_records(ds, record, fmt):
    assert ds.import_records([record], name=f"d-{fmt}").format == fmt


def test_forced_format_and_column_mapping(ds, tmp_path):
    rows = [{"question": "2+2?", "answer": "4"}, {"question": "3+3?", "answer": "6"}]
    p = write_jsonl(tmp_path / "qa.jsonl", rows)
    rec = ds.import_file(p, format="completion", columns={"prompt": "question", "completion": "answer"})
    assert rec.format == "completion"
    assert rec.columns == {"prompt": "question", "completion": "answer"}
    assert ds.preview(rec.id, 1) == [{"prompt": "2+2?", "completion": "4"}]
    # A text record forced to `text` from another column.
    t = ds.import_records([{"body": "hello"}], name="bodies", format="text", columns={"text": "body"})
    assert ds.preview(t.name) == [{"text": "hello"}]


def test_source_format_override(ds, tmp_path):
    p = tmp_path / "data.log"
    p.write_text('{"text": "a"}\n{"text": "b"}\n')
    rec = ds.import_file(p, source_format="jsonl")
    assert (rec.source_format, rec.num_records) == ("jsonl", 2)
    tsv = tmp_path / "pairs.dat"
    tsv.write_text("prompt\tcompletion\nx\ty\n")
    assert ds.import_file(tsv, source_format="tsv").format == "completion"


def test_import_accepts_pathlike_and_str(ds, tmp_path):
    p = write_jsonl(tmp_path / "a.jsonl", [{"text": "x"}])
    assert ds.import_file(str(p)).name == "a"


# ------------------------------------------------------------------ in-memory records


def test_import_records_from_list_and_generator(ds):
    rec = ds.import_records(COMPLETION, name="from-list")
    assert (rec.num_records, rec.source, rec.source_format) == (10, "memory", "records")
    gen = ({"text": f"line {i}"} for i in range(5000))
    big = ds.import_records(gen, name="from-gen")
    assert (big.num_records, big.format) == (5000, "text")
    assert ds.preview("from-gen", 2) == [{"text": "line 0"}, {"text": "line 1"}]


def test_import_records_from_tuple_and_custom_iterable(ds):
    class Source:
        def __iter__(self):
            yield {"text": "a"}
            yield {"text": "b"}

    assert ds.import_records(Source(), name="custom").num_records == 2
    assert ds.import_records(({"text": "c"},), name="tup").num_records == 1


def test_import_records_default_name(ds):
    rec = ds.import_records([{"text": "a"}])
    assert rec.name.startswith("records_")


def test_import_records_unsupported_value_is_invalid_data(ds, unchanged):
    u = unchanged()
    records = [{"text": "a"}, {"text": "b"}, {"text": "c", "meta": {"tags": {1, 2}}}]
    with pytest.raises(anneal.InvalidDataError) as ei:
        ds.import_records(records, name="bad")
    assert (ei.value.record, ei.value.field) == (3, "meta.tags")
    assert "set" in str(ei.value)
    u.check()


def deep200():
    v = 1
    for _ in range(200):
        v = [v]
    return v


def test_import_records_bad_keys_and_deep_nesting_are_typed_errors(ds, unchanged):
    u = unchanged()
    with pytest.raises(anneal.InvalidDataError) as ei:
        ds.import_records([{"text": "a", "meta": {1: "x"}}], name="bad")
    assert (ei.value.record, ei.value.field) == (1, "meta") and "int" in str(ei.value)
    with pytest.raises(anneal.InvalidDataError) as ei:
        ds.import_records([{"text": "a", "\ud800": 1}], name="bad")
    assert ei.value.record == 1
    deep = {"text": "a"}
    for _ in range(10_000):  # far beyond Python's and serde's recursion limits
        deep = {"x": deep}
    with pytest.raises(anneal.InvalidDataError, match="nested deeper than 1000"):
        ds.import_records([deep], name="bad")
    with pytest.raises(anneal.InvalidDataError, match="nested deeper than 125") as ei:
        ds.import_records([{"text": "a", "y": deep200()}], name="bad")
    assert ei.value.field == "y"
    u.check()


def test_import_records_non_dict_item(ds, unchanged):
    u = unchanged()
    with pytest.raises(anneal.InvalidDataError) as ei:
        ds.import_records([{"text": "a"}, "just a string"], name="bad")
    assert ei.value.code == "invalid_data"
    assert ei.value.record == 2
    assert "record 2" in str(ei.value)
    u.check()


def test_import_records_generator_exception_propagates_unchanged(ds, unchanged):
    class Broken(Exception):
        pass

    boom = Broken("generator broke")

    def gen():
        yield {"text": "a"}
        raise boom

    u = unchanged()
    with pytest.raises(Broken) as ei:
        ds.import_records(gen(), name="broken")
    assert ei.value is boom
    u.check()


def test_import_records_not_iterable(ds):
    with pytest.raises(TypeError):
        ds.import_records(42, name="x")


# ------------------------------------------------------------------ duplicates


def test_duplicate_content_detected_and_reused(ds, tmp_path):
    first = ds.import_file(write_jsonl(tmp_path / "one.jsonl", COMPLETION))
    copy = write_jsonl(tmp_path / "two.jsonl", COMPLETION)
    with pytest.raises(anneal.DuplicateContentError) as ei:
        ds.import_file(copy)
    e = ei.value
    assert e.code == "duplicate_content"
    assert e.existing_id == first.id and e.existing_name == "one" and e.sha256 == first.sha256
    assert "one" in str(e)
    assert [r.id for r in ds.list()] == [first.id]
    again = ds.import_file(copy, on_duplicate="reuse")
    assert again == first
    # Same content from memory normalises to the same bytes: also a duplicate.
    with pytest.raises(anneal.DuplicateContentError):
        ds.import_records(COMPLETION, name="mem")
    assert ds.import_records(COMPLETION, name="mem", on_duplicate="reuse").id == first.id


# ------------------------------------------------------------------ preview, stats, split, list, get, delete


def test_preview_stats(ds):
    rec = ds.import_records(COMPLETION, name="qa")
    assert ds.preview("qa", 3) == COMPLETION[:3]
    assert ds.preview(rec.id) == COMPLETION[:5]
    assert ds.preview("qa", 100) == COMPLETION
    s = ds.stats("qa")
    assert isinstance(s, anneal.DatasetStats)
    assert s.num_records == 10 and s.bytes == rec.bytes
    assert set(s.fields) == {"prompt", "completion"}
    assert s.fields["prompt"]["min_chars"] == 2
    assert sum(b["count"] for b in s.length_histogram) == 10
    d = s.to_dict()
    assert d["num_records"] == 10 and "fields" in d


def test_split_is_deterministic(ds):
    ds.import_records([{"text": f"t{i}"} for i in range(100)], name="corpus")
    train, val = ds.split("corpus", 0.2, seed=7)
    assert (train.name, val.name) == ("corpus-train", "corpus-val")
    assert (train.num_records, val.num_records) == (80, 20)
    assert train.parent_id == val.parent_id == ds.get("corpus").id
    # Same arguments: the same halves.
    again = ds.split("corpus", 0.2, seed=7)
    assert (again.train, again.val) == (train, val)
    # Another seed, other names: other records.
    other = ds.split("corpus", 0.2, seed=8, names=("c-tr", "c-va"))
    assert other.val.name == "c-va"
    assert ds.preview("c-va", 20) != ds.preview("corpus-val", 20)
    with pytest.raises(anneal.InvalidConfigError) as ei:
        ds.split("corpus", 1.5)
    assert ei.value.field == "val_fraction"


def test_list_get_delete(home, ds):
    a = ds.import_records([{"text": "a"}], name="a")
    b = ds.import_records([{"text": "b"}], name="b")
    assert [r.name for r in ds.list()] == ["a", "b"]
    assert ds.get("a") == a and ds.get(b.id) == b
    d = a.to_dict()
    assert d["id"] == a.id and d["format"] == "text" and d["path"] == a.path
    assert "DatasetRecord(" in repr(a) and "'a'" in repr(a)
    ds.delete("a")
    assert [r.name for r in ds.list()] == ["b"]
    with pytest.raises(anneal.NotFoundError) as ei:
        ds.get("a")
    assert ei.value.code == "not_found"
    with pytest.raises(anneal.NotFoundError):
        ds.delete("a")
    assert dataset_dirs(home) == [b.sha256]


def test_records_are_frozen(ds):
    rec = ds.import_records([{"text": "a"}], name="a")
    with pytest.raises(AttributeError):
        rec.name = "b"


# ------------------------------------------------------------------ bad input: nothing imported


def test_malformed_json_at_line_n(home, ds, tmp_path, unchanged):
    p = tmp_path / "broken.jsonl"
    p.write_text('{"text": "ok"}\n{"text": "ok"}\n{"text": oops}\n{"text": "ok"}\n')
    u = unchanged()
    with pytest.raises(anneal.InvalidDataError) as ei:
        ds.import_file(p)
    e = ei.value
    assert e.code == "invalid_data"
    assert str(p) in str(e) and "record 3" in str(e) and "malformed JSON" in str(e)
    assert (e.file, e.record) == (str(p), 3)
    u.check()


def test_malformed_json_array(ds, tmp_path, unchanged):
    p = tmp_path / "broken.json"
    p.write_text('[{"text": "a"}, {"text": "b"}, {"text": ]')
    u = unchanged()
    with pytest.raises(anneal.InvalidDataError) as ei:
        ds.import_file(p)
    assert str(p) in str(ei.value) and "record 3" in str(ei.value)
    u.check()


def test_missing_column(ds, tmp_path, unchanged):
    p = write_jsonl(tmp_path / "qa.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "c"}])
    u = unchanged()
    with pytest.raises(anneal.InvalidDataError) as ei:
        ds.import_file(p)
    e = ei.value
    assert str(p) in str(e) and "record 2" in str(e) and "`completion`" in str(e)
    assert (e.record, e.field) == (2, "completion")
    u.check()


def test_misnamed_column_with_mapping(ds, tmp_path, unchanged):
    p = write_jsonl(tmp_path / "qa.jsonl", [{"question": "a", "answer": "b"}])
    u = unchanged()
    with pytest.raises(anneal.InvalidDataError) as ei:
        ds.import_file(p, format="completion", columns={"prompt": "question", "completion": "answr"})
    e = ei.value
    assert str(p) in str(e) and "record 1" in str(e) and "`answr`" in str(e) and "mapped to `completion`" in str(e)
    assert e.field == "answr"
    u.check()


def test_mapping_unknown_field_is_config_error(ds, tmp_path, unchanged):
    p = write_jsonl(tmp_path / "qa.jsonl", [{"question": "a", "answer": "b"}])
    u = unchanged()
    with pytest.raises(anneal.InvalidConfigError) as ei:
        ds.import_file(p, columns={"query": "question"})
    assert ei.value.field == "columns.query"
    u.check()


def test_empty_file(ds, tmp_path, unchanged):
    u = unchanged()
    for name in ["empty.jsonl", "empty.csv", "empty.txt", "empty.json"]:
        p = tmp_path / name
        p.write_text("")
        with pytest.raises(anneal.InvalidDataError) as ei:
            ds.import_file(p)
        assert str(p) in str(ei.value) and "empty" in str(ei.value), name
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n  \n")
    with pytest.raises(anneal.InvalidDataError) as ei:
        ds.import_file(blank)
    assert "no records" in str(ei.value)
    u.check()


def test_empty_records(ds, unchanged):
    u = unchanged()
    with pytest.raises(anneal.InvalidDataError) as ei:
        ds.import_records([], name="nothing")
    assert "no records" in str(ei.value)
    u.check()


def test_invalid_utf8(ds, tmp_path, unchanged):
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    u = unchanged()
    with pytest.raises(anneal.InvalidDataError) as ei:
        ds.import_file(p)
    assert str(p) in str(ei.value) and "record 2" in str(ei.value) and "UTF-8" in str(ei.value)
    c = tmp_path / "latin1.csv"
    c.write_bytes(b"prompt,completion\nok,fine\nok,caf\xe9\n")
    with pytest.raises(anneal.InvalidDataError) as ei:
        ds.import_file(c)
    assert str(c) in str(ei.value) and "record 3" in str(ei.value) and "UTF-8" in str(ei.value)
    u.check()


def test_ragged_csv(ds, tmp_path, unchanged):
    p = tmp_path / "ragged.csv"
    p.write_text("prompt,completion\na,b\nc,d,e\n")
    u = unchanged()
    with pytest.raises(anneal.InvalidDataError) as ei:
        ds.import_file(p)
    assert str(p) in str(ei.value) and "record 3" in str(ei.value) and "ragged" in str(ei.value)
    assert ei.value.record == 3
    u.check()


def test_format_override_that_does_not_fit(ds, tmp_path, unchanged):
    p = write_jsonl(tmp_path / "texts.jsonl", [{"text": "a"}])
    u = unchanged()
    with pytest.raises(anneal.InvalidDataError) as ei:
        ds.import_file(p, format="chat")
    e = ei.value
    assert str(p) in str(e) and "record 1" in str(e) and "`messages`" in str(e)
    with pytest.raises(anneal.InvalidDataError) as ei:
        ds.import_records([{"text": "a"}], name="x", format="completion")
    assert "record 1" in str(ei.value) and "`prompt`" in str(ei.value)
    u.check()


def test_unknown_option_values_are_config_errors(ds, tmp_path, unchanged):
    p = write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}])
    u = unchanged()
    cases = [
        ({"format": "poetry"}, "format"),
        ({"source_format": "xml"}, "source_format"),
        ({"txt_mode": "pages"}, "txt_mode"),
        ({"on_duplicate": "ignore"}, "on_duplicate"),
        ({"name": 5}, "name"),
        ({"columns": ["prompt"]}, "columns"),
        ({"name": "bad name!"}, "name"),
    ]
    for kwargs, field in cases:
        with pytest.raises(anneal.InvalidConfigError) as ei:
            ds.import_file(p, **kwargs)
        assert ei.value.code == "invalid_config"
        assert ei.value.field == field, (kwargs, ei.value)
        assert field in str(ei.value)
    u.check()


def test_path_that_does_not_exist(ds, tmp_path, unchanged):
    missing = tmp_path / "nope.jsonl"
    u = unchanged()
    with pytest.raises(FileNotFoundError) as ei:
        ds.import_file(missing)
    e = ei.value
    assert isinstance(e, anneal.AnnealError) and isinstance(e, anneal.AnnealFileNotFoundError)
    assert e.code == "file_not_found"
    assert str(missing) in str(e)
    assert e.filename == str(missing) and e.errno == 2
    assert str(e) == f"[Errno 2] No such file or directory: {str(missing)!r}"
    u.check()


def test_name_taken(ds, tmp_path, unchanged):
    ds.import_records([{"text": "a"}], name="taken")
    u = unchanged()
    with pytest.raises(anneal.AlreadyExistsError) as ei:
        ds.import_file(write_jsonl(tmp_path / "other.jsonl", [{"text": "b"}]), name="taken")
    assert ei.value.code == "already_exists" and "taken" in str(ei.value)
    with pytest.raises(anneal.AlreadyExistsError):
        ds.import_records([{"text": "c"}], name="taken")
    u.check()


def test_bad_chat_message_names_field(ds, tmp_path, unchanged):
    good = {"messages": [{"role": "user", "content": "hi"}]}
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}
    p = write_jsonl(tmp_path / "chat.jsonl", [good, good, bad])
    u = unchanged()
    with pytest.raises(anneal.InvalidDataError) as ei:
        ds.import_file(p)
    assert str(p) in str(ei.value) and "record 3" in str(ei.value) and "messages[1].role" in str(ei.value)
    assert ei.value.field == "messages[1].role"
    u.check()


def test_directory_instead_of_file(ds, tmp_path, unchanged):
    u = unchanged()
    with pytest.raises(anneal.InvalidConfigError) as ei:
        ds.import_file(tmp_path)
    assert ei.value.field == "path"
    u.check()


def test_failed_imports_leave_no_directories(home, ds, tmp_path):
    before = dataset_dirs(home)
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "a"}\nnot json\n')
    for _ in range(3):
        with pytest.raises(anneal.InvalidDataError):
            ds.import_file(p)
    assert dataset_dirs(home) == before == []


def test_values_json_cannot_hold_are_typed_errors(ds, unchanged):
    u = unchanged()
    for bad, why in [(float("nan"), "finite"), (float("inf"), "finite"), (2**64, "64 bits"), ("\ud800", "Unicode")]:
        with pytest.raises(anneal.InvalidDataError) as ei:
            ds.import_records([{"text": "a"}, {"text": "b", "meta": {"x": bad}}], name="bad")
        assert ei.value.code == "invalid_data" and ei.value.record == 2, ei.value
        assert "meta.x" in str(ei.value) and why in str(ei.value), ei.value
        with pytest.raises(anneal.InvalidConfigError) as ei:
            ds.import_records([{"text": "a"}], name=bad)
        assert ei.value.field == "name", ei.value
    u.check()


def test_negative_counts_are_invalid_config(ds, home):
    ds.import_records([{"text": str(i)} for i in range(4)], name="four")
    for call, field in [
        (lambda: ds.preview("four", -1), "n"),
        (lambda: ds.split("four", 0.5, seed=-1), "seed"),
        (lambda: home.models().generations(limit=-1), "limit"),
    ]:
        with pytest.raises(anneal.InvalidConfigError) as ei:
            call()
        assert ei.value.field == field, ei.value


# ------------------------------------------------------------------ record size cap, non-regular files, races


def test_max_record_bytes_refuses_a_long_line_naming_it(ds, tmp_path, unchanged):
    p = tmp_path / "long.jsonl"
    p.write_text(json.dumps({"text": "short"}) + "\n" + json.dumps({"text": "x" * 500}) + "\n")
    u = unchanged()
    with pytest.raises(anneal.InvalidDataError) as ei:
        ds.import_file(p, max_record_bytes=100)
    e = ei.value
    assert (e.code, e.file, e.record) == ("invalid_data", str(p), 2)
    assert "line 2 is longer than max_record_bytes (100 bytes)" in str(e), e
    # In memory: the record as stored.
    with pytest.raises(anneal.InvalidDataError) as ei:
        ds.import_records([{"text": "a"}, {"text": "b" * 100}], name="mem", max_record_bytes=50)
    assert ei.value.record == 2 and "(50 bytes)" in str(ei.value), ei.value
    for bad in [0, -1, "big"]:
        with pytest.raises(anneal.InvalidConfigError) as ei:
            ds.import_file(p, max_record_bytes=bad)
        assert ei.value.field == "max_record_bytes", ei.value
    u.check()
    assert ds.import_file(p, max_record_bytes=1000).num_records == 2


def test_a_fifo_is_refused_without_blocking(ds, tmp_path, unchanged):
    import os
    import threading

    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    u = unchanged()
    out = {}

    def run():
        try:
            ds.import_file(fifo)
        except anneal.AnnealError as e:
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    if t.is_alive():  # blocked in open(): unblock it, then fail
        with open(fifo, "w"):
            pass
        t.join()
        pytest.fail("importing a FIFO blocked")
    e = out["error"]
    assert isinstance(e, anneal.InvalidConfigError) and e.field == "path", e
    assert "not a regular file" in str(e) and str(fifo) in str(e)
    u.check()


RACE_CHILD = """
import json, os, sys, time
import anneal
home, path, go, on_duplicate = sys.argv[1:]
ds = anneal.Home.open(home).datasets()
while not os.path.exists(go):
    time.sleep(0.001)
try:
    print(json.dumps({"id": ds.import_file(path, on_duplicate=on_duplicate).id}))
except anneal.AnnealError as e:
    print(json.dumps({"code": e.code, "message": str(e)}))
"""


@pytest.mark.parametrize("on_duplicate", ["error", "reuse"])
def test_processes_importing_one_file_at_once_end_as_sequential_ones(tmp_path, on_duplicate):
    import subprocess
    import sys

    home = tmp_path / "home"
    anneal.Home.open(home)
    p = write_jsonl(tmp_path / "shared.jsonl", [{"text": f"record {i} " + "x" * 100} for i in range(20000)])
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE_CHILD, str(home), str(p), str(go), on_duplicate],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    go.write_text("")
    results = [json.loads(proc.communicate(timeout=120)[0]) for proc in procs]
    ok = [r for r in results if "id" in r]
    if on_duplicate == "error":
        assert len(ok) == 1, results
        assert all(r.get("code") == "duplicate_content" for r in results if "id" not in r), results
    else:
        assert len(ok) == 4 and len({r["id"] for r in ok}) == 1, results
    h = anneal.Home.open(home)
    stored = h.datasets().list()
    assert [d.id for d in stored] == [ok[0]["id"]]
    assert sorted(x.name for x in (home / "datasets").iterdir()) == [stored[0].sha256]
