"""Writes a bench config for the generation benchmark as an ordinary HF directory.

    python gen_model.py --config tiny|small --out DIR [--seed 0]

Random weights from transformers' own initialisation (torch.manual_seed), fp32
model.safetensors + config.json, and a byte-level BPE tokenizer (anneal's 260-token one,
plus one merge) so that llama.cpp's converter
accepts the directory (ids beyond the tokenizer become [PAD] tokens). Idempotent: does
nothing if DIR already holds the same config.

Configs (the model issue's bench configs, with 256 positions so 16 + 128 tokens fit):
  tiny : GPT-2, n_layer 4, n_head 4, n_embd 256, n_inner 1024, vocab 8192, tied head
  small: Llama, hidden 512, intermediate 1376, 8 layers, 8 heads (8 kv), vocab 32000, untied head
"""

import argparse
import json
import os

CONFIGS = {
    "tiny": dict(family="gpt2", layers=4, heads=4, hidden=256, intermediate=1024, vocab=8192),
    "small": dict(family="llama", layers=8, heads=8, kv_heads=8, hidden=512, intermediate=1376, vocab=32000),
}
POSITIONS = 256


def byte_level_tokenizer():
    """GPT-2's byte -> printable char map; one token per byte plus 4 specials (anneal's)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, n = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    vocab = {chars[b]: b for b in range(256)}
    # One merge: llama.cpp refuses a BPE vocabulary without merges.
    vocab["ab"] = 260
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
    added = [dict(id=256 + i, content=t, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
             for i, t in enumerate(specials)]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [["a", "b"]]},
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", choices=CONFIGS, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    c = CONFIGS[a.config]
    stamp = {"bench_config": a.config, "seed": a.seed, "layout": 2}
    marker = os.path.join(a.out, "bench.json")
    if os.path.exists(marker) and json.load(open(marker)) == stamp:
        return

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(a.seed)
    if c["family"] == "gpt2":
        cfg = GPT2Config(n_layer=c["layers"], n_head=c["heads"], n_embd=c["hidden"], n_inner=c["intermediate"],
                         vocab_size=c["vocab"], n_positions=POSITIONS, n_ctx=POSITIONS, bos_token_id=256,
                         eos_token_id=256)
        model = GPT2LMHeadModel(cfg)
    else:
        cfg = LlamaConfig(hidden_size=c["hidden"], intermediate_size=c["intermediate"], num_hidden_layers=c["layers"],
                          num_attention_heads=c["heads"], num_key_value_heads=c["kv_heads"], vocab_size=c["vocab"],
                          max_position_embeddings=POSITIONS, rms_norm_eps=1e-6, rope_theta=10000.0,
                          tie_word_embeddings=False, bos_token_id=256, eos_token_id=256)
        model = LlamaForCausalLM(cfg)
    os.makedirs(a.out, exist_ok=True)
    model.save_pretrained(a.out, safe_serialization=True)
    if c["family"] == "gpt2":
        # transformers 5 leaves n_ctx out; llama.cpp's converter reads it.
        p = os.path.join(a.out, "config.json")
        d = json.load(open(p))
        d["n_ctx"] = POSITIONS
        json.dump(d, open(p, "w"), indent=2)
    json.dump(byte_level_tokenizer(), open(os.path.join(a.out, "tokenizer.json"), "w"))
    json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>",
               "eos_token": "<|endoftext|>", "model_max_length": POSITIONS},
              open(os.path.join(a.out, "tokenizer_config.json"), "w"))
    json.dump(stamp, open(marker, "w"))


if __name__ == "__main__":
    main()
