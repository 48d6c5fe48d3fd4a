"""anneal continual learning, Python twin of examples/rust/continual.rs: the whole loop.

A classifier serves a stream whose distribution shifts; labels arrive later; a monitor
notices, retrains, gates and promotes; a webhook receiver is told; a PNG plot and a
summary come out of the catalog's rows. Offline (the receiver is a local thread); no
downloads.

Run:    python examples/python/continual.py [home dir] [--smoke]   (after `pip install ./bindings-python`)
        (default home ./anneal-continual, which must not hold a `churn` model yet;
        --smoke: no pause between batches, for CI)
Output: one line per batch (rows, serving version, realised accuracy of the last 100
        labels, what the monitor did), the webhook deliveries as the receiver gets them
        (event type, id, signature checked), then a summary: accuracy before the drift,
        after it, after the retrain; the promotions; the monitor's decisions; the
        deliveries received; and `<home>/continual.png`.

1. A seeded synthetic scenario (`anneal.synthetic_scenario`): 4 numeric and 1
   categorical feature, 2 classes; from row 700 on the features move (covariate shift)
   and the labelling function changes (concept drift).
2. `churn` v1, a logistic regression on rows 0..300, is promoted to production.
3. A webhook points at an `http.server` thread in this program that answers 200, checks
   each delivery's Standard Webhooks signature (`anneal.verify_signature`) and prints it.
   Monitor events go to the webhook's outbox in the same transaction as the decision; a
   background deliverer (`webhooks().spawn`) posts them.
4. Rows 300..1500 arrive in batches of 50 through a `Predictor` (every prediction
   logged); each batch's true labels arrive one batch later (`continual().label`). After
   each batch the monitor ticks: the accuracy floor (0.8 on the last 100 labels) and a
   drift check of the last 100 predictions are its triggers; a breach must persist two
   ticks; a retrain fits on the labelled predictions and must beat production on the
   newest of them, held out, to be promoted.
5. `continual().plot_timeline` draws accuracy and drift over time with the events.

The same seed as the Rust example, so the same story: the drift check flags the columns
at the first drifted batch, accuracy falls, the first retrain is kept out by the gate,
the next ones are promoted and the retrained version serves far better than v1 did after
the drift. The example exits with an error if no retrained version was promoted, if the
receiver missed the promotion, or if the retrain did not beat v1 after the drift.
"""

import http.server
import json
import sys
import threading
import time

import anneal

MODEL = "churn"
TRAIN_ROWS = 300
DRIFT_AT = 700
ROWS = 1500
BATCH = 50
PAUSE = 0.15  # seconds between batches (a stream arrives over time); none with --smoke


def summary(event, d):
    if event == "drift_detected":
        return f"{d['model']} drifted on {d['drifted_columns']}"
    if event == "retrain_started":
        return f"{d['model']} retrain, trigger {d['trigger']}"
    if event == "candidate_evaluated":
        return f"{d['candidate']} {d['candidate_value']} vs production {d['production_value']}: {d['verdict']}"
    if event == "promoted":
        return f"{d['model']} promoted ({d['mode']})"
    return json.dumps(d)[:80]


def start_receiver(secret, received):
    """A webhook receiver on 127.0.0.1 (a free port): answers 200 to every POST, checks
    its signature with `secret["value"]` (set once the webhook exists), prints it and
    keeps it. Returns the server."""

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["content-length"]))
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
            h = lambda k: self.headers.get(k, "")  # noqa: E731
            try:
                anneal.verify_signature(
                    secret["value"], h("webhook-id"), h("webhook-timestamp"), body, h("webhook-signature")
                )
                signed = True
            except anneal.InvalidDataError:
                signed = False
            v = json.loads(body)
            event = v.get("type", "?")
            text = summary(event, v.get("data", {}))
            ok = "signature ok" if signed else "BAD SIGNATURE"
            print(f"    webhook <- {event} {h('webhook-id')} ({ok}): {text}", flush=True)
            received.append({"id": h("webhook-id"), "event": event, "signed": signed, "summary": text})

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def pct(c, n):
    return "-" if n == 0 else f"{100 * c / n:.1f}% of {n}"


def main():
    started = time.monotonic()
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    smoke = "--smoke" in sys.argv
    home = anneal.Home.open(args[0] if args else "anneal-continual")
    try:
        home.models().resolve(MODEL)
        sys.exit(f"{home.root} already has a `{MODEL}` model: run the example on a fresh directory")
    except anneal.NotFoundError:
        pass
    print(f"home: {home.root}")

    # 1. The scenario: the features move and the concept changes at row DRIFT_AT.
    s = anneal.synthetic_scenario(
        rows=ROWS,
        numeric=4,
        categorical=1,
        categories=3,
        classes=2,
        separation=3.0,
        seed=7,
        drift=[
            {"kind": "covariate", "start": DRIFT_AT, "magnitude": 1.0},
            {"kind": "concept", "start": DRIFT_AT, "magnitude": 2.0},
        ],
    )
    rows, labels = s["rows"], s["labels"]

    # 2. v1 on the first rows, in production.
    train = [dict(r, label=y) for r, y in zip(rows[:TRAIN_ROWS], labels[:TRAIN_ROWS])]
    home.datasets().import_records(train, name=f"{MODEL}-train")
    engine = home.training()
    job = engine.create_job(
        {"dataset": f"{MODEL}-train", "eval_fraction": 0.2, "method": {"classifier": {}}, "output_name": MODEL}
    )
    engine.run(job.id)
    home.models().promote(f"{MODEL}@1")
    print(f"{MODEL}@1 trained on rows 0..{TRAIN_ROWS} and promoted to production")

    # 3. The webhook receiver, the webhook, and a background deliverer of its outbox.
    received, secret = [], {}
    server = start_receiver(secret, received)
    url = f"http://127.0.0.1:{server.server_address[1]}/hooks/anneal"
    webhooks = home.webhooks()
    hook = webhooks.add(url)
    secret["value"] = hook["secret"]
    deliverer = webhooks.spawn(100)
    print(f"webhook {hook['id']} -> {url}")

    # 4. The monitor and the stream.
    policy = {
        "triggers": {"accuracy_floor": 0.8, "drift_window": 100, "window": 100},
        "guards": {"min_samples": 50, "consecutive_breaches": 2},
        "action": {"replay_fraction": 0.0},
        "gate": {"mode": "auto", "margin": 0.02},
    }
    monitor = home.monitors().create(MODEL, policy)
    continual = home.continual()
    row_of = {}  # prediction id -> scenario row
    unlabelled = []  # (prediction id, label) until the label arrives
    print("\nbatch  rows (* drifted)  served by   acc(last 100)  monitor")
    for b, start in enumerate(range(TRAIN_ROWS, ROWS, BATCH)):
        end = min(start + BATCH, ROWS)
        # The production model may have changed since the last batch: load it anew.
        predictor = home.predictor(f"{MODEL}@production")
        # The previous batch's labels arrive now.
        for pid, y in unlabelled:
            continual.label(pid, y)
        unlabelled = []
        for i, p in zip(range(start, end), predictor.predict_batch(rows[start:end])):
            row_of[p["prediction_id"]] = i
            unlabelled.append((p["prediction_id"], labels[i]))
        served = home.models().resolve(f"{MODEL}@production")
        r = monitor.tick()
        acc = "-" if r["realised_accuracy"] is None else f"{r['realised_accuracy']:.2f}"
        drifted = "*" if start >= DRIFT_AT else " "
        print(
            f"{b:>5}  {start:>4}..{end:<4}{drifted}  {served.reference():<10}  {acc:<13}  "
            f"{r['outcome']}: {r['reason'][:110]}",
            flush=True,
        )
        if not smoke:
            time.sleep(PAUSE)
    for pid, y in unlabelled:
        continual.label(pid, y)
    # Deliver what is left, then stop the deliverer.
    deliverer.stop()
    webhooks.deliver_due()

    # 5. The plot and the summary, from the catalog's rows.
    png = f"{home.root}/continual.png"
    continual.plot_timeline(MODEL, png, window=100)
    t = continual.timeline(MODEL, window=100)
    print(
        f"\nplot: {png} ({t['labelled']} labelled predictions, {len(t['drift'])} drift checks, "
        f"{len(t['events'])} events)"
    )

    promotions = [e for e in t["events"] if e["kind"] == "promoted"]
    first_promotion = next((e["at"] for e in promotions if (e["version"] or 1) > 1), None)
    # Accuracy of the labelled predictions in three phases, from the timeline's rows.
    before, after, retrained = [0, 0], [0, 0], [0, 0]
    for p in t["accuracy"]:
        row = row_of.get(p["prediction_id"], 0)
        phase = before if row < DRIFT_AT else after if p["version"] == 1 else retrained
        phase[0] += p["correct"]
        phase[1] += 1
    print(f"\naccuracy before the drift (v1, rows {TRAIN_ROWS}..{DRIFT_AT}): {pct(*before)}")
    print(f"accuracy after the drift, before the retrain (v1):   {pct(*after)}")
    print(f"accuracy after the retrain (promoted versions):       {pct(*retrained)}")
    for v in t["versions"]:
        r = continual.realised_accuracy(v["model_id"])
        acc = float("nan") if r["accuracy"] is None else r["accuracy"]
        print(
            f"  {MODEL}@{v['version']}: {v['predictions']} predictions, {r['labelled']} labelled, "
            f"realised accuracy {acc:.3f}"
        )
    print("\npromotions:")
    for e in promotions:
        was = "none" if e["previous_version"] is None else f"v{e['previous_version']}"
        reason = f": {e['reason']}" if e["reason"] else ""
        print(f"  {e['at']}  v{e['version']} (was {was}){reason}")
    print("\nmonitor decisions:")
    for d in monitor.decisions():
        print(f"  {d['at']}  {d['kind']:<19} {d['reason'][:100]}")
    outbox = webhooks.deliveries(webhook_id=hook["id"])
    bad = sum(not r["signed"] for r in received)
    print(f"\nwebhook deliveries received: {len(received)} ({len(outbox)} in the outbox, {bad} signature failures)")
    for r in received:
        print(f"  {r['event']:<20} {r['id']}  {r['summary']}")
    server.shutdown()
    print(f"\ndone in {time.monotonic() - started:.1f}s")

    # The story this example tells must have happened.
    if first_promotion is None:
        sys.exit("the monitor never promoted a retrained version")
    if not any(r["event"] == "promoted" for r in received) or bad:
        sys.exit("the receiver did not get a signed `promoted` delivery")
    if retrained[1] == 0 or retrained[0] / retrained[1] <= after[0] / max(after[1], 1):
        sys.exit("the retrained version is no better than v1 after the drift")


if __name__ == "__main__":
    main()
