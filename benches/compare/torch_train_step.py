"""PyTorch + PEFT peer for anneal's training-step benchmark.

Builds the bench configs with random weights (fixed seed), runs AdamW training steps on
random token batches, and prints one JSON line: tokens/s, step time, peak RSS, MFU.

    python torch_train_step.py --config tiny --method lora --steps 10

Configs (the model issue's bench configs):
  tiny : GPT-2, n_layer 4, n_head 4, n_embd 256, vocab 8192, seq 128, batch 8
  small: Llama, hidden 512, intermediate 1376, 8 layers, 8 heads (8 kv), vocab 32000, seq 256, batch 4
Methods: full (all weights trainable) or lora (r=8, alpha=16, attention projections).
"""

import argparse
import json
import resource
import time

CONFIGS = {
    "tiny": dict(family="gpt2", layers=4, heads=4, hidden=256, vocab=8192, seq=128, batch=8),
    "small": dict(family="llama", layers=8, heads=8, kv_heads=8, hidden=512, intermediate=1376, vocab=32000, seq=256, batch=4),
}

# Peak fp32 matmul throughput of this CPU with two threads (CANDLE-NOTES.md).
PEAK_FLOPS = 185e9


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build(name):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    c = CONFIGS[name]
    torch.manual_seed(0)
    if c["family"] == "gpt2":
        cfg = GPT2Config(n_layer=c["layers"], n_head=c["heads"], n_embd=c["hidden"], vocab_size=c["vocab"],
                         n_positions=c["seq"], n_ctx=c["seq"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model = GPT2LMHeadModel(cfg)
        targets = ["c_attn", "c_proj"]
    else:
        cfg = LlamaConfig(hidden_size=c["hidden"], intermediate_size=c["intermediate"], num_hidden_layers=c["layers"],
                          num_attention_heads=c["heads"], num_key_value_heads=c["kv_heads"], vocab_size=c["vocab"],
                          max_position_embeddings=c["seq"], tie_word_embeddings=False)
        model = LlamaForCausalLM(cfg)
        targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    model.config._attn_implementation = "eager"
    return model, targets, c


def matmul_params(model):
    """Parameters that take part in matmuls (linear/conv1d weights + the LM head), not embeddings' lookups."""
    n = 0
    for name, p in model.named_parameters():
        if p.dim() == 2 and "wte" not in name and "wpe" not in name and "embed_tokens" not in name:
            n += p.numel()
    # A tied head still does a matmul with the embedding matrix.
    if getattr(model.config, "tie_word_embeddings", False):
        n += model.get_output_embeddings().weight.numel()
    return n


def flops_per_token(mm_params, method):
    """6 per matmul parameter for full training (forward 2, input grads 2, weight grads 2);
    4 for LoRA, whose frozen weights get no weight gradient (the adapters' own FLOPs are
    negligible at r=8)."""
    return (6 if method == "full" else 4) * mm_params


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", choices=CONFIGS, default="tiny")
    ap.add_argument("--method", choices=["full", "lora"], default="lora")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mixed-precision", choices=["no", "bf16"], default="no",
                    help="bf16: the forward under torch.autocast('cpu', dtype=torch.bfloat16)")
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    rss_after_import = peak_rss_mib()
    model, targets, c = build(a.config)
    mm_params = matmul_params(model)
    if a.method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets,
                                                 fan_in_fan_out=c["family"] == "gpt2", task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, c["vocab"], (c["batch"], c["seq"]), generator=g)

    import contextlib

    def autocast():
        if a.mixed_precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step():
        with autocast():
            out = model(input_ids=batch, labels=batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.item()

    for _ in range(a.warmup):
        step()
    t = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    dt = (time.perf_counter() - t) / a.steps
    tokens = c["batch"] * c["seq"]
    tps = tokens / dt
    print(json.dumps({
        "impl": "pytorch", "torch": torch.__version__, "config": a.config, "method": a.method,
        "mixed_precision": a.mixed_precision,
        "threads": a.threads, "tokens_per_step": tokens, "step_s": round(dt, 4), "tokens_per_s": round(tps, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1), "rss_after_import_mib": round(rss_after_import, 1),
        "trainable_params": sum(p.numel() for p in params), "matmul_params": mm_params,
        "mfu": round(flops_per_token(mm_params, a.method) * tps / PEAK_FLOPS, 4), "loss": round(loss, 4),
    }))


if __name__ == "__main__":
    main()
