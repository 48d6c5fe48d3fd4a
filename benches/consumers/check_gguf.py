"""Consumer check of anneal's GGUF exports with the `gguf` package (PyPI, llama.cpp's own
Python reader): every file written by `gguf_check` (benches/src/bin/gguf_check.rs) opens
with GGUFReader, has the metadata llama.cpp needs, and every tensor dequantized by the
gguf package is near the f32 export's; q8_0 / q4_0 / q5_0 / f16 / bf16 tensors are
byte-identical to what gguf's own quantizers (ports of llama.cpp's reference ones) make
from the f32 values.

Run: benches/consumers/run.sh gguf   (PYTHON must have `gguf` and numpy), or
     python check_gguf.py <out dir of gguf_check>
"""

import json
import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from gguf.quants import dequantize, quantize

# Largest relative rms error (vs the f32 export) accepted per tensor type.
BOUND = {T.F32: 0.0, T.F16: 1e-3, T.BF16: 5e-3, T.Q8_0: 1.5e-2, T.Q6_K: 4e-2, T.Q5_0: 8e-2, T.Q4_K: 0.12, T.Q4_0: 0.16}
REQUANT = {T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q5_0}
NEEDED = ["general.architecture", "general.name", "general.file_type", "tokenizer.ggml.model", "tokenizer.ggml.tokens"]


def field(r: GGUFReader, key: str):
    f = r.fields.get(key)
    if f is None:
        return None
    return f.contents()


def tensors(r: GGUFReader) -> dict:
    out = {}
    for t in r.tensors:
        vals = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        out[t.name] = (t, vals)
    return out


def main(root: Path) -> int:
    entries = json.loads((root / "anneal.json").read_text())
    failures = 0
    ref = {}
    files = []
    for e in entries:
        for key in ("model", "lora"):
            if e.get(key) and e[key] not in files:
                files.append(e[key])
    f32_of = {}
    for p in files:
        if p.endswith("-f32.gguf"):
            f32_of[p.split("/")[-1][: -len("-f32.gguf")]] = p
    for p in files:
        r = GGUFReader(p)
        name = Path(p).name
        kind = field(r, "general.type")
        need = ["general.architecture", "adapter.type", "adapter.lora.alpha"] if kind == "adapter" else NEEDED
        missing = [k for k in need if field(r, k) is None]
        arch = field(r, "general.architecture")
        if kind != "adapter":
            for k in ("context_length", "embedding_length", "block_count", "feed_forward_length", "attention.head_count"):
                if field(r, f"{arch}.{k}") is None:
                    missing.append(f"{arch}.{k}")
        if missing:
            print(f"{name}: missing metadata {missing}")
            failures += 1
        ts = tensors(r)
        prefix = name.split("-f16")[0].split("-bf16")[0].split("-q")[0].split("-f32")[0]
        base = f32_of.get(prefix)
        if base is None or base == p or kind == "adapter":
            types = sorted({t.tensor_type.name for t, _ in ts.values()})
            print(f"{name}: {arch} {kind}, {len(ts)} tensors ({', '.join(types)}), {len(field(r, 'tokenizer.ggml.tokens') or [])} tokens: read")
            continue
        if base not in ref:
            ref[base] = tensors(GGUFReader(base))
        worst = {}
        requant_bad = []
        for tname, (t, vals) in ts.items():
            want = ref[base][tname][1]
            err = float(np.sqrt(np.mean((vals - want) ** 2)) / max(np.sqrt(np.mean(want**2)), 1e-12))
            ty = t.tensor_type
            worst[ty.name] = max(worst.get(ty.name, 0.0), err)
            if err > BOUND.get(ty, 0.2):
                print(f"{name}: {tname} ({ty.name}) relative rms error {err:.2e} > {BOUND.get(ty)}")
                failures += 1
            if ty in REQUANT:
                rows = want.reshape(int(t.shape[::-1].prod() // t.shape[0]), int(t.shape[0])) if len(t.shape) > 1 else want
                mine = np.asarray(t.data).reshape(-1).view(np.uint8)
                theirs = quantize(rows, ty).reshape(-1).view(np.uint8)
                if not np.array_equal(mine, theirs):
                    requant_bad.append(f"{tname} ({ty.name}: {int(np.sum(mine != theirs))} bytes differ)")
        if requant_bad:
            print(f"{name}: not byte-identical to gguf's quantizers: {requant_bad}")
            failures += 1
        errs = ", ".join(f"{k} {v:.1e}" for k, v in sorted(worst.items()))
        print(f"{name}: {arch}, {len(ts)} tensors; worst relative rms error vs f32 per type: {errs}; "
              f"q8_0/q4_0/q5_0/f16/bf16 bytes equal to gguf's: {'yes' if not requant_bad else 'NO'}")
    print(f"{len(files) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
