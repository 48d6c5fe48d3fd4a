"""Tables of benches/continual/run.sh from its JSON lines.

    python report.py RESULTS.jsonl IDLE(1|0)

Ratios (anneal / peer) are printed only when IDLE is 1 (load average at most 0.5 at the
start of the run).
"""

import json
import statistics
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
        print("MLP rows: the mean over the seeds (and the standard deviation of accuracy); each library draws "
              "its own initialisation for a seed.\n")
        print("| dataset | model | train/test rows | seeds | accuracy sklearn | accuracy anneal | macro F1 sklearn "
              "| macro F1 anneal | log-loss sklearn | log-loss anneal | iterations sklearn / anneal |")
        print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        groups = {}
        for r in acc:
            groups.setdefault((r["dataset"], r["model"], r["impl"]), []).append(r)

        def mean(rs, k):
            return statistics.fmean(r[k] for r in rs)

        def cell(rs, k, spread=False):
            if not rs:
                return "-"
            text = f"{mean(rs, k):.4f}"
            if spread and len(rs) > 1:
                text += f" ± {statistics.stdev(r[k] for r in rs):.4f}"
            return text

        for (ds, model, impl), s in groups.items():
            if impl != "sklearn":
                continue
            a = groups.get((ds, model, "anneal"), [])
            its = f"{mean(s, 'iterations'):.0f} / " + (f"{mean(a, 'iterations'):.0f}" if a else "-")
            print(f"| {ds} | {model} | {s[0]['train_rows']}/{s[0]['test_rows']} | {len(s)} "
                  f"| {cell(s, 'accuracy', True)} | {cell(a, 'accuracy', True)} "
                  f"| {cell(s, 'f1_macro')} | {cell(a, 'f1_macro')} | {cell(s, 'log_loss')} | {cell(a, 'log_loss')} "
                  f"| {its} |")

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
