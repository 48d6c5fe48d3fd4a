"""llama.cpp peer (through llama-cpp-python) of anneal's decode benchmark.

    python llama_generate.py --model DIR --config NAME --dtype f32|q8_0 [--prompt-tokens 16] [--new-tokens 128] [--runs 3]
    python llama_generate.py --gguf FILE --config NAME --dtype f32|q8_0 [...]

With --model, the HF dir made by gen_model.py is converted to DIR/model-<dtype>.gguf first
(cached; redone when DIR/bench.json is newer) by convert_gguf.py, run with the PyTorch
venv's python (the converter imports torch; --convert-python to change it).

Batch 1, greedy (argmax of the last logits), exactly `new_tokens` new tokens (EOS
ignored), 2 threads, n_ctx 256. The same prompt ids as every peer:
[(i * 7919 + 13) % vocab for i in range(prompt_tokens)]. Time to first token = prompt
evaluation + first pick; decode tokens/s = (new_tokens - 1) / (total - ttft); medians
over runs after one warm-up. Prints one JSON line.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
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
    ap.add_argument("--dtype", choices=["f32", "q8_0"], required=True)
    ap.add_argument("--convert-python", default=os.path.join(HERE, ".venv", "bin", "python"))
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()

    import numpy as np
    import llama_cpp

    gguf = a.gguf or cached_gguf(a.model, a.dtype, a.convert_python)
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


if __name__ == "__main__":
    main()
