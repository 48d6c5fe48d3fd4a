"""Webhooks from Python against a real HTTP receiver in this process (http.server on a
thread): signed deliveries verified with anneal.verify_signature, retries, giving up,
the background deliverer, routing on_event to the outbox, and typed errors."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import anneal


class Receiver:
    """Records every POST; answers the scripted statuses in order, then 200."""

    def __init__(self, *statuses):
        self.requests = []
        self.script = list(statuses)
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver.lock:
                    receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    status = receiver.script.pop(0) if receiver.script else 200
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait_for(self, n, timeout=5.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                if len(self.requests) >= n:
                    return list(self.requests)
            time.sleep(0.01)
        raise AssertionError(f"expected {n} requests, got {len(self.requests)}")

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def promoted(n):
    return {
        "type": "promoted",
        "model": f"churn@{n}",
        "model_id": f"mdl_{n}",
        "alias": "production",
        "mode": "manual",
        "reason": f"accuracy 0.9{n}",
    }


FAST = dict(timeout_ms=2000, retry_base_ms=1000, retry_max_ms=60_000)


def test_a_signed_delivery_verifies_and_carries_the_event(home, receiver):
    wh = home.webhooks()
    assert isinstance(wh, anneal.Webhooks)
    hook = wh.add(receiver.url, **FAST)
    assert hook["id"].startswith("wh_") and hook["secret"].startswith("whsec_")
    assert (hook["url"], hook["format"], hook["events"], hook["timeout_ms"]) == (receiver.url, "json", [], 2000)
    assert wh.list() == [hook] and wh.get(hook["id"]) == hook

    ids = wh.enqueue(promoted(3))
    assert len(ids) == 1 and ids[0].startswith("msg_")
    pending = wh.delivery(ids[0])
    assert (pending["status"], pending["attempts"], pending["event_type"]) == ("pending", 0, "promoted")

    # The receiver is a thread of this process: it can only answer with the GIL released.
    report = wh.deliver_due()
    assert report == {"attempted": 1, "delivered": 1, "retried": 0, "failed": 0}
    [(headers, body)] = receiver.wait_for(1)
    assert headers["webhook-id"] == ids[0]
    assert headers["content-type"] == "application/json"
    anneal.verify_signature(
        hook["secret"], headers["webhook-id"], headers["webhook-timestamp"], body, headers["webhook-signature"]
    )
    # The same with text and an integer timestamp.
    anneal.verify_signature(
        hook["secret"],
        headers["webhook-id"],
        int(headers["webhook-timestamp"]),
        body.decode(),
        headers["webhook-signature"],
        tolerance_ms=60_000,
    )
    sent = json.loads(body)
    assert (sent["id"], sent["type"], sent["data"]["model"]) == (ids[0], "promoted", "churn@3")

    done = wh.delivery(ids[0])
    assert (done["status"], done["attempts"], done["last_status"]) == ("delivered", 1, 200)
    assert done["body"] == body.decode() and done["delivered_at"]
    # Delivered rows are never sent again.
    assert wh.deliver_due()["attempted"] == 0

    # A byte changed in transit, another secret, a replayed old timestamp: typed errors.
    with pytest.raises(anneal.InvalidDataError) as e:
        anneal.verify_signature(
            hook["secret"],
            headers["webhook-id"],
            headers["webhook-timestamp"],
            body.replace(b"churn@3", b"churn@4"),
            headers["webhook-signature"],
        )
    assert (e.value.code, e.value.field) == ("invalid_data", "webhook-signature")
    with pytest.raises(anneal.InvalidDataError) as e:
        old = str(int(headers["webhook-timestamp"]) - 3600)
        anneal.verify_signature(hook["secret"], headers["webhook-id"], old, body, headers["webhook-signature"])
    assert e.value.field == "webhook-timestamp"
    with pytest.raises(anneal.InvalidConfigError) as e:
        anneal.verify_signature("whsec_%%%", headers["webhook-id"], headers["webhook-timestamp"], body, "v1,x")
    assert (e.value.code, e.value.field) == ("invalid_config", "secret")


def test_retries_then_gives_up_and_retry_failed_requeues(home):
    r = Receiver(500, 410)
    try:
        wh = home.webhooks()
        hook = wh.add(r.url, max_attempts=3, **FAST)
        [mid] = wh.enqueue(promoted(1))
        assert wh.deliver_due() == {"attempted": 1, "delivered": 0, "retried": 1, "failed": 0}
        d = wh.delivery(mid)
        assert (d["status"], d["attempts"], d["last_status"]) == ("pending", 1, 500)
        # Not due yet (backoff of at least 500 ms)...
        assert wh.deliver_due()["attempted"] == 0
        # ...due later: 410 Gone gives up at once.
        assert wh.deliver_due(now=time.time() + 120)["failed"] == 1
        d = wh.delivery(mid)
        assert (d["status"], d["attempts"], d["last_status"]) == ("failed", 2, 410)
        assert [x["id"] for x in wh.deliveries(status="failed")] == [mid]
        assert wh.deliveries(webhook_id=hook["id"], status="delivered") == []

        assert wh.retry_failed(hook["id"]) == 1
        assert wh.delivery(mid)["status"] == "pending"
        assert wh.deliver_due()["delivered"] == 1
        got = r.wait_for(3)
        assert {h["webhook-id"] for h, _ in got} == {mid}, "every attempt carries the same webhook-id"
        assert wh.retry_failed() == 0
    finally:
        r.close()


def test_spawned_deliverer_sends_in_the_background(home, receiver):
    wh = home.webhooks()
    wh.add(receiver.url, events=["promoted"], **FAST)
    with wh.spawn(interval_ms=20) as d:
        assert isinstance(d, anneal.Deliverer) and d.running
        wh.enqueue(promoted(1))
        wh.enqueue({"type": "log", "job_id": "j", "level": "info", "message": "not wanted"})
        receiver.wait_for(1)
        assert d.last_error is None
    assert not d.running
    d.stop()  # idempotent
    assert [json.loads(b)["type"] for _, b in receiver.requests] == ["promoted"]
    # A deliverer left to the garbage collector stops without blocking.
    d2 = wh.spawn(50)
    del d2


def test_on_event_routes_a_calls_events_to_the_webhooks(home, receiver):
    wh = home.webhooks()
    hook = wh.add(receiver.url, **FAST)
    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(3)]
    rec = home.datasets().import_records(rows, name="routed", on_event=wh.enqueue)
    types = [d["event_type"] for d in wh.deliveries(webhook_id=hook["id"])]
    # Progress events are not wanted by a webhook without a filter.
    assert types == ["task_started", "task_finished"]
    assert wh.deliver_due()["delivered"] == 2
    last = json.loads(receiver.wait_for(2)[-1][1])
    assert last["data"]["id"] == rec.id and last["data"]["status"] == "completed"
    wh.remove(hook["id"])
    assert wh.list() == [] and wh.deliveries() == []
    with pytest.raises(anneal.NotFoundError):
        wh.get(hook["id"])


def test_typed_errors_name_the_field(home, receiver):
    wh = home.webhooks()
    for url in ["not a url", "ftp://example.com/x", "http:///nohost"]:
        with pytest.raises(anneal.InvalidConfigError) as e:
            wh.add(url)
        assert (e.value.code, e.value.field) == ("invalid_config", "url"), url
    for kw, field in [
        ({"timeout_ms": 0}, "timeout_ms"),
        ({"max_attempts": 1000}, "max_attempts"),
        ({"events": ["promotd"]}, "events"),
        ({"secret": "whsec_short"}, "secret"),
        ({"format": "teams"}, "format"),
    ]:
        with pytest.raises(anneal.InvalidConfigError) as e:
            wh.add(receiver.url, **kw)
        assert e.value.field == field, kw
    assert wh.list() == [], "nothing stored after a refused add"
    with pytest.raises(anneal.InvalidConfigError) as e:
        wh.enqueue({"type": "no_such_event"})
    assert e.value.field == "event.type"
    with pytest.raises(anneal.InvalidConfigError) as e:
        wh.enqueue({"type": "log", "job_id": "j", "level": "info"})
    assert e.value.field == "event"
    with pytest.raises(anneal.InvalidConfigError) as e:
        wh.enqueue("promoted")
    assert e.value.field == "event"
    with pytest.raises(anneal.InvalidConfigError) as e:
        wh.spawn(interval_ms=0)
    assert e.value.field == "interval"
    with pytest.raises(anneal.InvalidConfigError) as e:
        wh.deliveries(status="lost")
    assert e.value.field == "status"
    with pytest.raises(anneal.NotFoundError):
        wh.delivery("msg_missing")
    with pytest.raises(anneal.NotFoundError):
        wh.retry_failed("wh_missing")
    with pytest.raises(anneal.InvalidConfigError) as e:
        wh.deliver_due(now=float("nan"))
    assert e.value.field == "now"
