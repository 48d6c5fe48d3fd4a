"""scikit-learn's side of the classifier accuracy comparison (benches/continual/run.sh accuracy).

    python sklearn_accuracy.py --out DIR [--datasets iris,wine,breast_cancer,digits] [--max-iter-mlp 200]

For each of scikit-learn's bundled datasets (no download): a stratified 75/25 split
(`train_test_split(..., stratify=y, random_state=0)`), written as DIR/<name>-train.jsonl and
DIR/<name>-test.jsonl (`{"f0": x, ..., "label": y}`), which anneal's `continual_accuracy` bin
imports, so both sides train and test on the same rows. Then, on the same rows:

  logistic : StandardScaler + LogisticRegression(lbfgs, C=1, max_iter=1000, tol=1e-4)
  mlp      : StandardScaler + MLPClassifier((100,), relu, adam, alpha=1e-4, lr 1e-3,
             batch min(200, n), max_iter=200, tol=1e-4, n_iter_no_change=10,
             early_stopping=False, random_state=seed for each of --seeds)

(anneal standardises numeric features itself and stores the scaler with the model.)
Output: one JSON line per (dataset, model) with test accuracy, macro F1 and log-loss.
"""

import argparse
import json
import os
import warnings

import numpy as np
from sklearn import datasets
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, log_loss
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

LOADERS = {
    "iris": datasets.load_iris,
    "wine": datasets.load_wine,
    "breast_cancer": datasets.load_breast_cancer,
    "digits": datasets.load_digits,
}


def write_jsonl(path, x, y):
    with open(path, "w") as f:
        for row, label in zip(x, y):
            rec = {f"f{j}": float(v) for j, v in enumerate(row)}
            rec["label"] = int(label)
            f.write(json.dumps(rec) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--datasets", default=",".join(LOADERS))
    ap.add_argument("--test-size", type=float, default=0.25)
    ap.add_argument("--max-iter-lr", type=int, default=1000)
    ap.add_argument("--max-iter-mlp", type=int, default=200)
    ap.add_argument("--hidden", type=int, default=100)
    ap.add_argument("--seeds", default="0", help="MLP seeds, comma-separated (one line per seed)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    os.makedirs(args.out, exist_ok=True)
    for name in args.datasets.split(","):
        x, y = LOADERS[name](return_X_y=True)
        xtr, xte, ytr, yte = train_test_split(x, y, test_size=args.test_size, stratify=y, random_state=0)
        write_jsonl(os.path.join(args.out, f"{name}-train.jsonl"), xtr, ytr)
        write_jsonl(os.path.join(args.out, f"{name}-test.jsonl"), xte, yte)
        models = [("logistic", 0, LogisticRegression(C=1.0, solver="lbfgs", max_iter=args.max_iter_lr, tol=1e-4))]
        models += [("mlp", seed, MLPClassifier(
                hidden_layer_sizes=(args.hidden,),
                activation="relu",
                solver="adam",
                alpha=1e-4,
                learning_rate_init=1e-3,
                batch_size=min(200, len(xtr)),
                max_iter=args.max_iter_mlp,
                tol=1e-4,
                n_iter_no_change=10,
                early_stopping=False,
                random_state=seed,
            )) for seed in seeds]
        for kind, seed, clf in models:
            pipe = make_pipeline(StandardScaler(), clf)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                pipe.fit(xtr, ytr)
            converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
            proba = pipe.predict_proba(xte)
            pred = pipe.classes_[np.argmax(proba, axis=1)]
            iters = clf.n_iter_
            print(json.dumps({
                "impl": "sklearn",
                "dataset": name,
                "model": kind,
                "seed": seed,
                "train_rows": len(xtr),
                "test_rows": len(xte),
                "features": x.shape[1],
                "classes": len(np.unique(y)),
                "accuracy": accuracy_score(yte, pred),
                "f1_macro": f1_score(yte, pred, average="macro"),
                "log_loss": log_loss(yte, proba, labels=pipe.classes_),
                "iterations": int(np.max(iters)),
                "converged": converged,
            }), flush=True)


if __name__ == "__main__":
    main()
