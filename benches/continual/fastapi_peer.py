"""The FastAPI + scikit-learn peer of the single-row predict latency comparison
(benches/continual/run.sh latency).

    python fastapi_peer.py --data DIR --model logistic|mlp [--requests 2000] [--warmup 200]

Fits StandardScaler + LogisticRegression(lbfgs, C=1) or + MLPClassifier((100,), adam,
alpha 1e-4) on DIR/train.jsonl (the rows anneal trains on), then measures two things:

  sklearn-inproc : the handler's work alone, in this process: the JSON row to a numpy
                   row, `predict_proba`, the answer dict (what the service cannot go below)
  fastapi        : a POST /predict to a uvicorn server (a child process on 127.0.0.1,
                   one worker, access log off) from one client over one keep-alive HTTP/1.1
                   connection (http.client), one row per request, the JSON answer parsed:
                   label, confidence, class probabilities and the model version, as
                   anneal's predictor answers

Prints one JSON line per measurement (latency_stats.summary). `--serve PORT` runs the
server itself (used by the client mode).
"""

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from latency_stats import read_jsonl, summary  # noqa: E402


def fit(data, kind, hidden):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = read_jsonl(os.path.join(data, "train.jsonl"))
    columns = [k for k in rows[0] if k != "label"]
    x = np.array([[r[c] for c in columns] for r in rows])
    y = np.array([r["label"] for r in rows])
    if kind == "logistic":
        clf = LogisticRegression(C=1.0, solver="lbfgs", max_iter=1000)
    else:
        clf = MLPClassifier(hidden_layer_sizes=(hidden,), solver="adam", alpha=1e-4, max_iter=200, random_state=0)
    pipe = make_pipeline(StandardScaler(), clf)
    with warnings.catch_warnings():
        # The MLP may stop at max_iter (as anneal's does, with the same cap).
        warnings.simplefilter("ignore")
        pipe.fit(x, y)
    return pipe, columns


def handler(pipe, columns, model_name):
    classes = pipe.classes_

    def predict(row):
        x = np.array([[float(row[c]) for c in columns]])
        p = pipe.predict_proba(x)[0]
        i = int(p.argmax())
        return {
            "label": classes[i].item(),
            "confidence": float(p[i]),
            "probabilities": {str(c): float(v) for c, v in zip(classes, p)},
            "model": model_name,
        }

    return predict


def serve(args):
    import uvicorn
    from fastapi import FastAPI

    pipe, columns = fit(args.data, args.model, args.hidden)
    predict = handler(pipe, columns, f"bench-{args.model}@1")
    app = FastAPI()

    @app.get("/health")
    async def health():
        return {"ok": True}

    @app.post("/predict")
    async def post_predict(row: dict[str, float]):
        return predict(row)

    uvicorn.run(app, host="127.0.0.1", port=args.serve, log_level="warning", access_log=False, workers=1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default="logistic", choices=["logistic", "mlp"])
    ap.add_argument("--hidden", type=int, default=100)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--serve", type=int, default=0, help="run the server on this port")
    args = ap.parse_args()
    if args.serve:
        serve(args)
        return
    queries = read_jsonl(os.path.join(args.data, "queries.jsonl"))

    # In process: the handler's own work.
    pipe, columns = fit(args.data, args.model, args.hidden)
    predict = handler(pipe, columns, f"bench-{args.model}@1")
    times = []
    for i in range(args.warmup + args.requests):
        row = queries[i % len(queries)]
        t0 = time.perf_counter()
        predict(row)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    print(summary("sklearn-inproc", args.model, times), flush=True)

    # Over HTTP.
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--data", args.data, "--model", args.model,
         "--hidden", str(args.hidden), "--serve", str(port)],
    )
    try:
        conn = None
        deadline = time.time() + 120
        while True:
            if server.poll() is not None:
                sys.exit(f"the uvicorn server exited with {server.returncode}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request("GET", "/health")
                conn.getresponse().read()
                break
            except OSError:
                if time.time() > deadline:
                    sys.exit("the uvicorn server did not start within 120 s")
                time.sleep(0.2)
        headers = {"Content-Type": "application/json"}
        times = []
        for i in range(args.warmup + args.requests):
            body = json.dumps(queries[i % len(queries)])
            t0 = time.perf_counter()
            conn.request("POST", "/predict", body=body, headers=headers)
            resp = conn.getresponse()
            answer = json.loads(resp.read())
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
            if resp.status != 200 or "confidence" not in answer:
                sys.exit(f"bad answer {resp.status}: {answer}")
        conn.close()
        print(summary("fastapi", args.model, times), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
