"""anneal's Python side of the single-row predict latency comparison
(benches/continual/run.sh latency): an in-process call to the binding's predictor.

    python anneal_predict.py --home HOME --model bench-logistic --data DIR [--requests 2000] [--warmup 200]

HOME holds the model that `predict_latency --prepare` trained on DIR/train.jsonl. Each
request is `predictor.predict(row)` on one row of DIR/queries.jsonl (a dict back, the
prediction logged in the catalog, as the Rust predictor does).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from latency_stats import read_jsonl, summary  # noqa: E402

import anneal  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    args = ap.parse_args()
    queries = read_jsonl(os.path.join(args.data, "queries.jsonl"))
    home = anneal.Home.open(args.home)
    predictor = home.predictor(args.model)
    times = []
    for i in range(args.warmup + args.requests):
        row = queries[i % len(queries)]
        t0 = time.perf_counter()
        p = predictor.predict(row)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    if not (isinstance(p, dict) and "confidence" in p and "prediction_id" in p):
        sys.exit(f"unexpected answer: {p!r}")
    kind = args.model.removeprefix("bench-")
    print(summary("anneal-python", kind, times), flush=True)


if __name__ == "__main__":
    main()
