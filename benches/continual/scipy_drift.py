"""The scipy peer of the drift-check time comparison (benches/continual/run.sh drift).

    python scipy_drift.py --data DIR [--reps 3]

DIR/train.jsonl and DIR/window.jsonl are the rows anneal's `drift_time` bin wrote (and
checked). As anneal does at training time, and untimed here: a reference profile of the
training rows (per numeric column a uniform sample of at most 1000 values, the standard
deviation, the PSI deciles and their shares; per categorical column the count of each
category) and a scikit-learn classifier (one-hot + standardised numbers, LogisticRegression
lbfgs C=1). Timed, per repetition, the same check as `Continual::drift` on a dataset window:

  parse_s   : the window's JSON lines into rows, then into column arrays
  stats_s   : per numeric column the test the issue prescribes for the reference's size
              (<= 1000 reference rows: scipy.stats.ks_2samp on the sample, p < 0.05; more:
              scipy.stats.wasserstein_distance(sample, window) / reference std >= 0.1) and
              PSI; per categorical column chi-square (scipy.stats.chi2_contingency, <= 1000
              rows) or Jensen-Shannon (scipy.spatial.distance.jensenshannon, base 2, >= 0.1)
              and PSI; the verdict: drift when at least half the columns drift
  predict_s : predict_proba over the window and the mean top-class probability (the
              label-free expected accuracy)

Prints one JSON line with the medians over repetitions and the drifted columns (compare
them with anneal's).
"""

import argparse
import json
import os
import statistics
import time

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency, ks_2samp, wasserstein_distance

SAMPLE = 1000
SMALL_REFERENCE_ROWS = 1000
PSI_EPS = 1e-4


def read_rows(path):
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    for r in rows:
        r.pop("label", None)
    return rows


def columns_of(rows, kinds):
    out = {}
    for c, kind in kinds.items():
        if kind == "numeric":
            out[c] = np.array([r[c] for r in rows], dtype=float)
        else:
            out[c] = np.array([str(r[c]) for r in rows])
    return out


def psi(expected, actual):
    e = np.clip(expected, PSI_EPS, None)
    a = np.clip(actual, PSI_EPS, None)
    return float(np.sum((a - e) * np.log(a / e)))


def bin_shares(values, edges):
    idx = np.searchsorted(edges, values, side="right")
    return np.bincount(idx, minlength=len(edges) + 1) / len(values)


def build_reference(rows, kinds, seed=0):
    cols = columns_of(rows, kinds)
    rng = np.random.default_rng(seed)
    ref = {}
    for c, v in cols.items():
        if kinds[c] == "numeric":
            sample = v if len(v) <= SAMPLE else rng.choice(v, SAMPLE, replace=False)
            edges = np.quantile(v, np.arange(1, 10) / 10)
            ref[c] = {"sample": np.sort(sample), "std": float(v.std()), "edges": edges,
                      "shares": bin_shares(v, edges)}
        else:
            cats, counts = np.unique(v, return_counts=True)
            ref[c] = {"cats": cats, "counts": counts.astype(float)}
    return ref, cols


def compare(ref, cols, reference_rows, window_rows):
    small = reference_rows <= SMALL_REFERENCE_ROWS
    drifted = []
    for c, r in ref.items():
        v = cols[c]
        if "sample" in r:
            if small:
                hit = ks_2samp(r["sample"], v).pvalue < 0.05
            else:
                hit = wasserstein_distance(r["sample"], v) / max(r["std"], 1e-3) >= 0.1
            psi(r["shares"], bin_shares(v, r["edges"]))
        else:
            cats, counts = np.unique(v, return_counts=True)
            pos = {k: i for i, k in enumerate(r["cats"])}
            win = np.zeros(len(r["cats"]) + 1)
            for k, n in zip(cats, counts):
                win[pos.get(k, len(r["cats"]))] += n
            reference = np.append(r["counts"], 0.0)
            if small:
                keep = (reference + win) > 0
                hit = chi2_contingency(np.array([reference[keep], win[keep]])).pvalue < 0.05
            else:
                hit = jensenshannon(reference, win, base=2) >= 0.1
            psi(reference / reference.sum(), win / win.sum())
        if hit and window_rows >= 30:
            drifted.append(c)
    if window_rows < 30:
        verdict = "insufficient_data"
    else:
        verdict = "drift" if len(drifted) >= len(ref) / 2 else "no_drift"
    return verdict, drifted


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    with open(os.path.join(args.data, "train.jsonl")) as f:
        first = json.loads(f.readline())
    first.pop("label")
    kinds = {c: ("numeric" if isinstance(v, (int, float)) else "categorical") for c, v in first.items()}
    numeric = [c for c in kinds if kinds[c] == "numeric"]
    categorical = [c for c in kinds if kinds[c] == "categorical"]

    # Untimed: what anneal does at training time.
    train_rows = []
    labels = []
    with open(os.path.join(args.data, "train.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            labels.append(r.pop("label"))
            train_rows.append(r)
    ref, train_cols = build_reference(train_rows, kinds)

    def matrix(cols):
        num = np.column_stack([cols[c] for c in numeric]) if numeric else np.empty((len(next(iter(cols.values()))), 0))
        cat = np.column_stack([cols[c] for c in categorical]).astype(object) if categorical else None
        return num if cat is None else np.hstack([num.astype(object), cat])

    transform = ColumnTransformer([
        ("num", StandardScaler(), list(range(len(numeric)))),
        ("cat", OneHotEncoder(handle_unknown="ignore"), list(range(len(numeric), len(kinds)))),
    ])
    model = make_pipeline(transform, LogisticRegression(C=1.0, solver="lbfgs", max_iter=1000))
    model.fit(matrix(train_cols), np.array(labels))

    parse, stats, predict, total = [], [], [], []
    verdict, drifted, expected = None, None, None
    for _ in range(args.reps):
        t0 = time.perf_counter()
        rows = read_rows(os.path.join(args.data, "window.jsonl"))
        cols = columns_of(rows, kinds)
        t1 = time.perf_counter()
        verdict, drifted = compare(ref, cols, len(train_rows), len(rows))
        t2 = time.perf_counter()
        p = model.predict_proba(matrix(cols))
        expected = float(p.max(axis=1).mean())
        t3 = time.perf_counter()
        parse.append(t1 - t0)
        stats.append(t2 - t1)
        predict.append(t3 - t2)
        total.append(t3 - t0)
    small = len(train_rows) <= SMALL_REFERENCE_ROWS
    print(json.dumps({
        "impl": "scipy",
        "rows": len(rows),
        "columns": len(kinds),
        "reps": args.reps,
        "drift_s": statistics.median(total),
        "parse_s": statistics.median(parse),
        "stats_s": statistics.median(stats),
        "predict_s": statistics.median(predict),
        "verdict": verdict,
        "drifted_columns": len(drifted),
        "drifted": drifted,
        "numeric_test": "ks" if small else "wasserstein",
        "categorical_test": "chi_square" if small else "jensen_shannon",
        "expected_accuracy": expected,
    }), flush=True)


if __name__ == "__main__":
    main()
