"""Tables of benches/continual/run.sh from its JSON lines.

    python report.py RESULTS.jsonl IDLE(1|0)

Ratios (anneal / peer) are printed only when IDLE is 1 (load average at most 0.5 at the
start of the run).
"""

import json
import sys


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
    idle = sys.argv[2] == "1"
    by = {}
    for r in rows:
        by.setdefault(r.get("bench"), []).append(r)

    acc = by.get("accuracy", [])
    if acc:
        print("\n## Accuracy (test split; same rows and hyperparameters on both sides)\n")
        print("| dataset | model | train/test rows | accuracy sklearn | accuracy anneal | macro F1 sklearn "
              "| macro F1 anneal | log-loss sklearn | log-loss anneal | iterations sklearn / anneal |")
        print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
        keyed = {(r["dataset"], r["model"], r["impl"]): r for r in acc}
        for (ds, model, impl), s in keyed.items():
            if impl != "sklearn":
                continue
            a = keyed.get((ds, model, "anneal"), {})
            f = lambda d, k: f"{d[k]:.4f}" if k in d else "-"  # noqa: E731
            print(f"| {ds} | {model} | {s['train_rows']}/{s['test_rows']} | {f(s, 'accuracy')} | {f(a, 'accuracy')} "
                  f"| {f(s, 'f1_macro')} | {f(a, 'f1_macro')} | {f(s, 'log_loss')} | {f(a, 'log_loss')} "
                  f"| {s['iterations']} / {a.get('iterations', '-')} |")

    lat = by.get("latency", [])
    if lat:
        print("\n## Single-row predict latency (ms)\n")
        print("| model | impl | requests | median | p95 | mean | FastAPI median / this median |")
        print("|---|---|---:|---:|---:|---:|---:|")
        peer = {r["model"]: r for r in lat if r["impl"] == "fastapi"}
        for r in sorted(lat, key=lambda r: (r["model"], r["impl"])):
            p = peer.get(r["model"])
            ratio = ""
            if p and r["impl"] != "fastapi":
                ratio = f"{p['median_ms'] / r['median_ms']:.1f}x" if idle else "n/a (busy)"
            print(f"| {r['model']} | {r['impl']} | {r['requests']} | {r['median_ms']:.4f} | {r['p95_ms']:.4f} "
                  f"| {r['mean_ms']:.4f} | {ratio} |")

    dr = by.get("drift", [])
    if dr:
        print("\n## Drift check (s, median over repetitions)\n")
        print("| impl | window rows | columns | tests | total | parse | stats | predict | verdict "
              "| drifted columns | expected accuracy | anneal / scipy total |")
        print("|---|---:|---:|---|---:|---:|---:|---:|---|---:|---:|---:|")
        peer = next((r for r in dr if r["impl"] == "scipy"), None)
        for r in dr:
            ratio = ""
            if peer and r["impl"] == "anneal":
                ratio = f"{r['drift_s'] / peer['drift_s']:.2f}" if idle else "n/a (busy)"
            ea = r.get("expected_accuracy")
            print(f"| {r['impl']} | {r['rows']} | {r['columns']} | {r['numeric_test']} + {r['categorical_test']} "
                  f"| {r['drift_s']:.3f} | {r['parse_s']:.3f} | {r['stats_s']:.3f} | {r['predict_s']:.3f} "
                  f"| {r['verdict']} | {r['drifted_columns']} | {ea:.4f} | {ratio} |")
        if peer:
            ours = next((r for r in dr if r["impl"] == "anneal"), None)
            if ours and sorted(ours["drifted"]) != sorted(peer["drifted"]):
                print(f"\nnote: the drifted columns differ: anneal {ours['drifted']}, scipy {peer['drifted']}")
        print("\n(anneal's total is one `Continual::drift` call: it reads the dataset file, compares, predicts "
              "and stores the check; its phases are timed apart in memory.)")


if __name__ == "__main__":
    main()
