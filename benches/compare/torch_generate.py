"""transformers peer of anneal's decode benchmark (`cargo run --release -p anneal-benches --bin generate`).

    python torch_generate.py --model DIR --config NAME [--prompt-tokens 16] [--new-tokens 128] [--runs 3]

Batch 1, greedy, exactly `new_tokens` new tokens (min_new_tokens forces past EOS), fp32,
2 threads, KV cache (transformers' default). Prompt ids (same for every peer):
[(i * 7919 + 13) % vocab for i in range(prompt_tokens)]. Time to first token = a
`generate` with max_new_tokens=1; decode tokens/s = (new_tokens - 1) / (total - ttft);
medians over runs after one warm-up. Prints one JSON line.
"""

import argparse
import json
import resource
import statistics
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    ids = torch.tensor([[(i * 7919 + 13) % vocab for i in range(a.prompt_tokens)]])
    mask = torch.ones_like(ids)

    def gen(n):
        with torch.inference_mode():
            return model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                  pad_token_id=0)

    gen(a.new_tokens)  # warm-up
    ttft, total, decode = [], [], []
    out = None
    for _ in range(a.runs):
        t = time.perf_counter()
        gen(1)
        first = time.perf_counter() - t
        t = time.perf_counter()
        out = gen(a.new_tokens)
        whole = time.perf_counter() - t
        assert out.shape[1] == a.prompt_tokens + a.new_tokens, out.shape
        ttft.append(first * 1e3)
        total.append(whole)
        decode.append((a.new_tokens - 1) / max(whole - first, 1e-9))
    print(json.dumps({
        "impl": "transformers", "config": a.config, "dtype": "f32", "prompt_tokens": a.prompt_tokens,
        "new_tokens": a.new_tokens, "ttft_ms": round(statistics.median(ttft), 2),
        "decode_tokens_per_s": round(statistics.median(decode), 1), "total_s": round(statistics.median(total), 4),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "tokens": out[0, a.prompt_tokens:a.prompt_tokens + 8].tolist(),
    }))


if __name__ == "__main__":
    main()
