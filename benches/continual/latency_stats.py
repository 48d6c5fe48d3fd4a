"""Shared by the Python latency clients: the summary every side prints (the Rust and Node
clients compute the same quantiles: q(p) = sorted[min(n - 1, floor(p * n))])."""

import json


def quantile(sorted_ms, p):
    return sorted_ms[min(len(sorted_ms) - 1, int(p * len(sorted_ms)))]


def summary(impl, model, times_s, **extra):
    ms = sorted(t * 1000.0 for t in times_s)
    out = {
        "impl": impl,
        "model": model,
        "requests": len(ms),
        "median_ms": quantile(ms, 0.5),
        "p95_ms": quantile(ms, 0.95),
        "mean_ms": sum(ms) / len(ms),
    }
    out.update(extra)
    return json.dumps(out)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
