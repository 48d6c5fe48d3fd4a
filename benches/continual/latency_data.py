"""Rows for the single-row predict latency comparison (benches/continual/run.sh latency).

    python latency_data.py --out DIR [--rows 5000] [--features 20] [--classes 3] [--queries 1000]

Writes DIR/train.jsonl (`{"f0": x, ..., "label": y}`, scikit-learn's make_classification,
random_state 0) that both anneal and the FastAPI + scikit-learn peer train the same model
kind on, and DIR/queries.jsonl: held-out feature rows that every client sends, one per
request, in the same order (cycling when there are more requests than rows).
"""

import argparse
import json
import os

from sklearn.datasets import make_classification


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--features", type=int, default=20)
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--queries", type=int, default=1000)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    x, y = make_classification(
        n_samples=args.rows + args.queries,
        n_features=args.features,
        n_informative=max(2, args.features // 2),
        n_classes=args.classes,
        random_state=0,
    )
    with open(os.path.join(args.out, "train.jsonl"), "w") as f:
        for row, label in zip(x[: args.rows], y[: args.rows]):
            rec = {f"f{j}": float(v) for j, v in enumerate(row)}
            rec["label"] = int(label)
            f.write(json.dumps(rec) + "\n")
    with open(os.path.join(args.out, "queries.jsonl"), "w") as f:
        for row in x[args.rows :]:
            f.write(json.dumps({f"f{j}": float(v) for j, v in enumerate(row)}) + "\n")


if __name__ == "__main__":
    main()
