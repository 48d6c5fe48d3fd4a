"""The tables of run_generate.sh, from its JSON lines.

    python generate_table.py RESULTS.jsonl IDLE

IDLE is 1 when benches/load_guard.sh found the machine idle; otherwise ratio columns read
"n/a (busy)". Batch-1 rows (no "mode" key) make the first table, against the decode
roofline (needs membw's rows); rows of `--batch N` / `--concurrent N` (generate bench,
llama_generate.py) make the second: aggregate decode tokens/s, each against the same
implementation's batch-1 row ("x batch 1") and anneal's against llama.cpp's N parallel
sequences.
"""

import json
import sys


def main():
    idle = sys.argv[2] == "1"
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
    single = medians([r for r in rows if r["impl"] != "membw" and "mode" not in r])
    batched = medians([r for r in rows if r.get("mode") in ("batch", "concurrent")])
    if single:
        roofline_table(rows, single, idle)
    if batched:
        batch_table(single, batched, idle)


def medians(rows):
    """One row per (impl, config, dtype, mode, batch): its numbers' medians over the
    rounds (ROUNDS in run_generate.sh), the rest from its first round. A round whose row 0 differs from batch 1 marks the merged row as differing."""
    groups = {}
    for r in rows:
        groups.setdefault((r["impl"], r["config"], r["dtype"], r.get("mode"), r.get("batch")), []).append(r)
    out = []
    for group in groups.values():
        merged = dict(group[0])
        for k, v in group[0].items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                vals = sorted(g[k] for g in group)
                merged[k] = vals[len(vals) // 2]
        if "row0_matches_batch1" in merged:
            merged["row0_matches_batch1"] = all(g["row0_matches_batch1"] for g in group)
        out.append(merged)
    return out


def roofline_table(rows, single, idle):
    bw = max(r["read_gb_per_s"] for r in rows if r["impl"] == "membw" and r["threads"] == 2) * 1e9
    # Weight bytes read per decoded token: every matmul weight incl. the LM head (GPT-2's
    # tied head is the wte matrix); embedding / position lookups read one row, ignored.
    shapes = {
        "tiny": [(256, 768), (256, 256), (256, 1024), (1024, 256)] * 4 + [(8192, 256)],
        "small": [(512, 512)] * 32 + [(512, 1376), (512, 1376), (1376, 512)] * 8 + [(32000, 512)],
    }
    per_weight = {"f32": 4.0, "bf16": 2.0, "q8_0": 34.0 / 32.0}

    def bytes_per_token(config, dtype):
        return sum(a * b for a, b in shapes[config]) * per_weight[dtype]

    def roof(config, dtype):
        return bw / bytes_per_token(config, dtype)

    print(f"\nread bandwidth (membw, 2 threads): {bw / 1e9:.1f} GB/s")
    for c in shapes:
        print(f"decode roofline {c}: " + ", ".join(
            f"{d} {roof(c, d):.0f} tok/s ({bytes_per_token(c, d) / 1e6:.1f} MB/token)" for d in per_weight))
    print("(a model whose weights fit in the 32 MiB L3 can beat this DRAM roofline)")
    by = {(r["impl"], r["config"], r["dtype"]): r for r in single}
    print("\n| config | impl | dtype | TTFT ms | decode tok/s | peak RSS MiB | share of decode roofline | anneal / peer |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    order = {"anneal": 0, "llama.cpp": 1, "transformers": 2}
    for (impl, config, dtype), r in sorted(by.items(), key=lambda kv: (kv[0][1] != "tiny", kv[0][2], order[kv[0][0]])):
        share = r["decode_tokens_per_s"] / roof(config, dtype)
        mine = by.get(("anneal", config, dtype))
        ratio = f"{mine['decode_tokens_per_s'] / r['decode_tokens_per_s']:.2f}" if mine and impl != "anneal" else ""
        if ratio and not idle:
            ratio = "n/a (busy)"
        print(f"| {config} | {impl} | {dtype} | {r['ttft_ms']:.1f} | {r['decode_tokens_per_s']:.0f} "
              f"| {r['peak_rss_mib']:.0f} | {share:.0%} | {ratio} |")


def batch_table(single, batched, idle):
    one = {(r["impl"], r["config"], r["dtype"]): r["decode_tokens_per_s"] for r in single}
    peer = {(r["config"], r["dtype"], r["batch"]): r for r in batched if r["impl"] == "llama.cpp"}

    def ratio(a, b):
        if not b:
            return ""
        return f"{a / b:.2f}" if idle else "n/a (busy)"

    print("\nThroughput under load: N prompts of 16 tokens, 128 new tokens each, greedy. anneal: one "
          "generate_batch of N (batch) or N threads calling generate on one Generator (concurrent); "
          "llama.cpp: N parallel sequences in one context. decode tok/s: aggregate over the N rows.")
    print("\n| config | dtype | N | impl | mode | TTFT ms | decode tok/s | end-to-end tok/s | peak RSS MiB "
          "| x batch 1 | row 0 = batch 1 | anneal / llama.cpp |")
    print("|---|---|---:|---|---|---:|---:|---:|---:|---:|---|---:|")
    order = {("anneal", "batch"): 0, ("anneal", "concurrent"): 1, ("llama.cpp", "batch"): 2}
    for r in sorted(batched, key=lambda r: (r["config"] != "tiny", r["dtype"], r["batch"],
                                            order.get((r["impl"], r["mode"]), 3))):
        key = (r["config"], r["dtype"], r["batch"])
        vs_one = ratio(r["decode_tokens_per_s"], one.get((r["impl"], r["config"], r["dtype"])))
        vs_peer = ""
        if r["impl"] == "anneal" and key in peer:
            vs_peer = ratio(r["decode_tokens_per_s"], peer[key]["decode_tokens_per_s"])
        same = {True: "yes", False: "NO"}.get(r.get("row0_matches_batch1"), "?")
        print(f"| {r['config']} | {r['dtype']} | {r['batch']} | {r['impl']} | {r['mode']} | {r['ttft_ms']:.1f} "
              f"| {r['decode_tokens_per_s']:.0f} | {r['tokens_per_s']:.0f} | {r['peak_rss_mib']:.0f} | {vs_one} "
              f"| {same} | {vs_peer} |")
    if any(r.get("row0_matches_batch1") is False for r in batched):
        print("\nwarning: a row 0 differs from its implementation's batch-1 tokens (see the error lines above)")


if __name__ == "__main__":
    main()
