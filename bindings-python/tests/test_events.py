import _thread
import threading
import time

import pytest

import anneal
from conftest import dataset_dirs, ticks_during, write_jsonl


def test_import_events_order_and_shape(ds, big_file):
    events = []
    rec = ds.import_file(big_file, name="big", on_event=events.append)
    types = [e["type"] for e in events]
    assert types[0] == "task_started" and types[-1] == "task_finished"
    assert set(types[1:-1]) == {"task_progress"}
    assert len(types) >= 3
    start, last = events[0], events[-1]
    total = big_file.stat().st_size
    assert start == {"type": "task_started", "task": "import_dataset", "name": "big", "total": total, "unit": "bytes"}
    assert last == {"type": "task_finished", "task": "import_dataset", "status": "completed", "id": rec.id}
    progress = [e for e in events if e["type"] == "task_progress"]
    assert all(set(e) == {"type", "task", "done", "total"} for e in progress)
    done = [e["done"] for e in progress]
    assert done == sorted(done) and done[-1] == total
    assert all(isinstance(e, dict) for e in events)


def test_progress_is_throttled(ds, big_file):
    times = []
    ds.import_file(big_file, name="big", on_event=lambda e: times.append((time.monotonic(), e["type"])))
    progress = [t for t, kind in times if kind == "task_progress"]
    # The last progress (done == total) is flushed whatever the interval; the rest are >= 100 ms apart.
    gaps = [b - a for a, b in zip(progress, progress[1:-1])]
    assert all(g >= 0.095 for g in gaps), gaps


def test_failed_import_ends_with_task_finished_failed(ds, tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "a"}\nnope\n')
    events = []
    with pytest.raises(anneal.InvalidDataError):
        ds.import_file(p, on_event=events.append)
    assert events[0]["type"] == "task_started"
    last = events[-1]
    assert last["type"] == "task_finished" and last["status"] == "failed"
    assert last["error"]["code"] == "invalid_data" and "record 2" in last["error"]["message"]


def test_register_events(models, fixtures):
    events = []
    rec = models.register_dir(fixtures / "tiny-llama", on_event=events.append)
    assert events[0]["type"] == "task_started" and events[0]["task"] == "register_model"
    assert events[-1] == {"type": "task_finished", "task": "register_model", "status": "completed", "id": rec.id}


def test_callback_exception_is_reraised_unchanged(home, ds, big_file):
    class Boom(Exception):
        pass

    boom = Boom("stop")
    seen = []

    def on_event(e):
        seen.append(e["type"])
        if e["type"] == "task_progress":
            raise boom

    with pytest.raises(Boom) as ei:
        ds.import_file(big_file, name="big", on_event=on_event)
    assert ei.value is boom
    # The final event is still delivered; nothing was imported.
    assert seen[-1] == "task_finished"
    assert ds.list() == [] and dataset_dirs(home) == []


def test_callback_exception_on_start(ds):
    def on_event(e):
        raise ValueError(e["type"])

    with pytest.raises(ValueError, match="task_started"):
        ds.import_records([{"text": "a"}], name="x", on_event=on_event)
    assert ds.list() == []


def test_callback_exception_in_records_import(ds):
    class Stop(Exception):
        pass

    def on_event(e):
        if e["type"] == "task_progress":
            raise Stop()

    with pytest.raises(Stop):
        ds.import_records(({"text": str(i)} for i in range(3000)), name="x", on_event=on_event)
    assert ds.list() == []


def test_on_event_must_be_callable(ds):
    with pytest.raises(TypeError, match="on_event"):
        ds.import_records([{"text": "a"}], name="x", on_event="print")


def test_cancel_token(home, ds, big_file):
    token = anneal.CancelToken()
    assert not token.is_cancelled
    events = []

    def on_event(e):
        events.append(e)
        if e["type"] == "task_progress":
            token.cancel()

    with pytest.raises(anneal.CancelledError) as ei:
        ds.import_file(big_file, name="big", on_event=on_event, cancel=token)
    assert ei.value.code == "cancelled"
    assert token.is_cancelled
    assert events[-1]["type"] == "task_finished" and events[-1]["status"] == "cancelled"
    assert ds.list() == [] and dataset_dirs(home) == []


@pytest.fixture(scope="module")
def huge_file(big_file, tmp_path_factory):
    """~120 MB: a Ctrl-C or cancel 0.2 s in always lands mid-import, however fast the build."""
    chunk = open(big_file, "rb").read()
    path = tmp_path_factory.mktemp("huge") / "huge.jsonl"
    with open(path, "wb") as f:
        for _ in range(4):
            f.write(chunk)
    return path


def test_cancel_from_another_thread(ds, huge_file):
    token = anneal.CancelToken()
    threading.Timer(0.2, token.cancel).start()
    with pytest.raises(anneal.CancelledError):
        ds.import_file(huge_file, name="big", cancel=token)
    assert ds.list() == []


def test_cancelled_before_start(ds):
    token = anneal.CancelToken()
    token.cancel()
    with pytest.raises(anneal.CancelledError):
        ds.import_records([{"text": "a"}], name="x", cancel=token)
    with pytest.raises(anneal.CancelledError):
        ds.import_records(({"text": "a"} for _ in range(10)), name="y", cancel=token)
    assert ds.list() == []


def test_import_releases_the_gil(ds, big_file):
    took, ticks = ticks_during(lambda: ds.import_file(big_file, name="big"))
    # With the GIL held the ticker could not run at all; released, it ticks every ~5 ms.
    assert took > 0.05, "the fixture must make the import take a while"
    assert ticks >= 5


def test_records_import_releases_the_gil(ds):
    records = [{"prompt": "p" * 200 + str(i), "completion": "c" * 800} for i in range(30000)]
    _, ticks = ticks_during(lambda: ds.import_records(records, name="mem"))
    assert ticks >= 5


def test_ctrl_c_interrupts_an_import(home, ds, huge_file):
    timer = threading.Timer(0.2, _thread.interrupt_main)
    timer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            ds.import_file(huge_file, name="big")
        assert time.monotonic() - t0 < 5
    finally:
        timer.cancel()
    assert ds.list() == [] and dataset_dirs(home) == []


def test_ctrl_c_interrupts_a_records_import(ds):
    def forever():
        i = 0
        while True:
            i += 1
            yield {"text": str(i)}

    timer = threading.Timer(0.2, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            ds.import_records(forever(), name="endless")
    finally:
        timer.cancel()
    assert ds.list() == []


def test_ctrl_c_callback_sees_cancelled(ds, huge_file):
    events = []
    timer = threading.Timer(0.2, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            ds.import_file(huge_file, name="big", on_event=events.append)
    finally:
        timer.cancel()
    assert events[-1]["type"] == "task_finished" and events[-1]["status"] == "cancelled"


def test_small_import_events(ds, tmp_path):
    events = []
    ds.import_file(write_jsonl(tmp_path / "s.jsonl", [{"text": "a"}]), on_event=events.append)
    assert [e["type"] for e in events] == ["task_started", "task_progress", "task_finished"]
