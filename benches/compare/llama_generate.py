"""llama.cpp peer (through llama-cpp-python) of anneal's decode benchmark.

    python llama_generate.py --model DIR --config NAME --dtype f32|bf16|q8_0 [--prompt-tokens 16] [--new-tokens 128] [--runs 3]
    python llama_generate.py --gguf FILE --config NAME --dtype f32|bf16|q8_0 [...]
    python llama_generate.py ... --batch N

With --model, the HF dir made by gen_model.py is converted to DIR/model-<dtype>.gguf first
(cached; redone when DIR/bench.json is newer) by convert_gguf.py, run with the PyTorch
venv's python (the converter imports torch; --convert-python to change it).

Batch 1, greedy (argmax of the last logits), exactly `new_tokens` new tokens (EOS
ignored), 2 threads, n_ctx 256. The same prompt ids as every peer:
[(i * 7919 + 13) % vocab for i in range(prompt_tokens)]. Time to first token = prompt
evaluation + first pick; decode tokens/s = (new_tokens - 1) / (total - ttft); medians
over runs after one warm-up. Prints one JSON line.

--batch N (N > 1): N parallel sequences in one llama.cpp context, the way llama.cpp's
`batched` example runs them, through the low-level API: n_seq_max N, a KV cache of
prompt + new tokens per sequence (not unified: the rows share no prefix), n_batch and
n_ubatch N * prompt, so all N prompts go through one llama_decode, then one llama_decode
of N tokens (one per sequence) per step; greedy argmax per row. Row r's prompt is
[(i * 7919 + 13 + r) % vocab for i in range(prompt_tokens)] (row 0: the batch-1 prompt;
anneal's bench uses the same rows). Time to first token = all prompts evaluated and each
row's first pick; decode tokens/s = N * (new_tokens - 1) / (total - ttft), the aggregate
over rows; tokens_per_s = N * new_tokens / total. After the timed runs, row 0 is decoded
again alone in a context set up as the batch-1 mode's (n_ctx 256, n_batch 64): the JSON's
row0_matches_batch1 says whether its tokens equal the batched row 0's (an error line goes
to stderr otherwise).
"""

import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def cached_gguf(model, dtype, python):
    """DIR/model-<dtype>.gguf, converted from the HF dir if missing or older than the model."""
    out = os.path.join(model, f"model-{dtype}.gguf")
    stamp = os.path.join(model, "bench.json")
    if not os.path.exists(out) or (os.path.exists(stamp) and os.path.getmtime(stamp) > os.path.getmtime(out)):
        subprocess.run([python, os.path.join(HERE, "convert_gguf.py"), "--model", model, "--outtype", dtype,
                        "--out", out], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def main():
    ap = argparse.ArgumentParser()
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="HF dir from gen_model.py (converted and cached as DIR/model-<dtype>.gguf)")
    src.add_argument("--gguf", help="a GGUF file")
    ap.add_argument("--config", required=True)
    ap.add_argument("--dtype", choices=["f32", "bf16", "q8_0"], required=True)
    ap.add_argument("--convert-python", default=os.path.join(HERE, ".venv", "bin", "python"))
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1, help="parallel sequences in one context (1: the batch-1 bench)")
    a = ap.parse_args()
    if a.batch < 1 or a.runs < 1 or a.prompt_tokens < 1 or a.new_tokens < 1:
        ap.error("--batch, --runs, --prompt-tokens and --new-tokens must be at least 1")

    import numpy as np
    import llama_cpp

    gguf = a.gguf or cached_gguf(a.model, a.dtype, a.convert_python)
    if a.batch > 1:
        batched(a, gguf)
        return
    llm = llama_cpp.Llama(model_path=gguf, n_ctx=256, n_batch=64, n_threads=2, n_threads_batch=2, verbose=False)
    vocab = llm.n_vocab()
    ctx = llm._ctx.ctx
    prompt = [(i * 7919 + 13) % vocab for i in range(a.prompt_tokens)]

    def pick():
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(vocab,))
        return int(np.argmax(logits))

    def run():
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        out = [pick()]
        first = time.perf_counter() - t0
        while len(out) < a.new_tokens:
            llm.eval([out[-1]])
            out.append(pick())
        return first, time.perf_counter() - t0, out

    run()  # warm-up
    ttft, total, decode = [], [], []
    out = []
    for _ in range(a.runs):
        first, whole, out = run()
        ttft.append(first * 1e3)
        total.append(whole)
        decode.append((a.new_tokens - 1) / max(whole - first, 1e-9))
    print(json.dumps({
        "impl": "llama.cpp", "config": a.config, "dtype": a.dtype, "prompt_tokens": a.prompt_tokens,
        "new_tokens": a.new_tokens, "ttft_ms": round(statistics.median(ttft), 2),
        "decode_tokens_per_s": round(statistics.median(decode), 1), "total_s": round(statistics.median(total), 4),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "tokens": out[:8],
    }))


def row_prompt(row, prompt_tokens, vocab):
    """Row `row`'s prompt ids (row 0: the batch-1 prompt)."""
    return [(i * 7919 + 13 + row) % vocab for i in range(prompt_tokens)]


def batched(a, gguf):
    """--batch N: N sequences decoded together in one context (see the module doc)."""
    import numpy as np
    import llama_cpp

    # Errors only on stderr (the high-level Llama(verbose=False) does the same).
    @llama_cpp.llama_log_callback
    def log(level, text, _user):
        if level in (3, 4):  # GGML_LOG_LEVEL_WARN, GGML_LOG_LEVEL_ERROR
            sys.stderr.write(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(log, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    n, width, new = a.batch, a.prompt_tokens, a.new_tokens
    model = llama_cpp.llama_model_load_from_file(gguf.encode(), llama_cpp.llama_model_default_params())
    if not model:
        sys.exit(f"llama.cpp could not load {gguf}")
    vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))

    def context(n_seq, n_ctx, n_batch):
        p = llama_cpp.llama_context_default_params()
        p.n_ctx, p.n_batch, p.n_ubatch, p.n_seq_max = n_ctx, n_batch, n_batch, n_seq
        p.n_threads = p.n_threads_batch = 2
        p.kv_unified = False
        p.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as the batch-1 mode's Llama()
        ctx = llama_cpp.llama_init_from_model(model, p)
        if not ctx:
            sys.exit(f"llama.cpp could not create a context of {n_seq} sequences, n_ctx {n_ctx}, n_batch {n_batch}")
        if llama_cpp.llama_n_ctx_seq(ctx) < width + new:
            sys.exit(f"llama.cpp gave each sequence {llama_cpp.llama_n_ctx_seq(ctx)} cells, "
                     f"fewer than {width} + {new} tokens")
        return ctx

    def new_batch(rows, per_row, logits_at):
        """A batch of `rows` sequences, `per_row` tokens each, one seq_id per token,
        logits for token `logits_at` of each row."""
        b = llama_cpp.llama_batch_init(rows * per_row, 0, 1)
        b.n_tokens = rows * per_row
        for r in range(rows):
            for i in range(per_row):
                k = r * per_row + i
                b.n_seq_id[k] = 1
                b.seq_id[k][0] = r
                b.logits[k] = 1 if i == logits_at else 0
        return b

    def decode(ctx, b, rows):
        """Runs `b`; the argmax of each row's logits (outputs come in batch order)."""
        rc = llama_cpp.llama_decode(ctx, b)
        if rc != 0:
            sys.exit(f"llama_decode failed with {rc} (1: no KV slot, -1: invalid batch, < -1: fatal)")
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx), shape=(rows, vocab))
        return np.argmax(logits, axis=1).tolist()

    def run(ctx, rows, prompt_b, step_b):
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        t0 = time.perf_counter()
        for r in range(rows):
            for i, tok in enumerate(row_prompt(r, width, vocab)):
                prompt_b.token[r * width + i] = tok
                prompt_b.pos[r * width + i] = i
        out = [[t] for t in decode(ctx, prompt_b, rows)]
        first = time.perf_counter() - t0
        for step in range(1, new):
            for r in range(rows):
                step_b.token[r] = out[r][-1]
                step_b.pos[r] = width + step - 1
            for r, t in enumerate(decode(ctx, step_b, rows)):
                out[r].append(t)
        return first, time.perf_counter() - t0, out

    # llama.cpp pads each sequence's cells to a multiple of 256 (and rounds n_ctx down to
    # a multiple of n_seq_max, with a warning, otherwise): ask for that size up front.
    per_seq = -(-(width + new) // 256) * 256
    ctx = context(n, n * per_seq, n * width)
    prompt_b, step_b = new_batch(n, width, width - 1), new_batch(n, 1, 0)
    run(ctx, n, prompt_b, step_b)  # warm-up
    ttft, total, decode_rate, e2e = [], [], [], []
    out = []
    for _ in range(a.runs):
        first, whole, out = run(ctx, n, prompt_b, step_b)
        ttft.append(first * 1e3)
        total.append(whole)
        decode_rate.append(n * (new - 1) / max(whole - first, 1e-9))
        e2e.append(n * new / whole)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    llama_cpp.llama_batch_free(prompt_b)
    llama_cpp.llama_batch_free(step_b)
    llama_cpp.llama_free(ctx)

    # Row 0 alone, in a context like the batch-1 mode's Llama(n_ctx=256, n_batch=64).
    ctx = context(1, 256, 64)
    prompt_b, step_b = new_batch(1, width, width - 1), new_batch(1, 1, 0)
    alone = run(ctx, 1, prompt_b, step_b)[2][0]
    llama_cpp.llama_batch_free(prompt_b)
    llama_cpp.llama_batch_free(step_b)
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)
    same = alone == out[0]
    if not same:
        at = next(i for i, (x, y) in enumerate(zip(alone, out[0])) if x != y)
        print(f"error: llama.cpp batch {n} row 0 differs from its batch-1 tokens at new token {at}: "
              f"{out[0][at:at + 4]} vs {alone[at:at + 4]}", file=sys.stderr)
    print(json.dumps({
        "impl": "llama.cpp", "config": a.config, "dtype": a.dtype, "prompt_tokens": width, "new_tokens": new,
        "batch": n, "mode": "batch", "ttft_ms": round(statistics.median(ttft), 2),
        "decode_tokens_per_s": round(statistics.median(decode_rate), 1),
        "tokens_per_s": round(statistics.median(e2e), 1), "total_s": round(statistics.median(total), 4),
        "peak_rss_mib": round(peak, 1), "tokens": out[0][:8], "row0_matches_batch1": same,
    }))


if __name__ == "__main__":
    main()
