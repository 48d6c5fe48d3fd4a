"""Consumer check for anneal's exports: transformers loads the merged HF directory and
PEFT loads the adapter directory, and both give anneal's logits (max |diff| <= 1e-4).

Run: PYTHON=/path/to/python-with-torch-transformers-peft benches/consumers/run.sh
(makes tiny random GPT-2 and Llama models with transformers, has anneal train a LoRA
adapter on each and export it, then loads the exports here.)
"""

import json
import sys
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM


WORDS = "the a cat dog sat ran on to mat park hello world big small red blue one two three".split()


def tokenizer_json() -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok.to_str()


def make_models(root: Path) -> list[Path]:
    torch.manual_seed(0)
    out = []
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=64, n_embd=32, n_layer=2, n_head=4))
    llama = LlamaForCausalLM(
        LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    )
    for name, m in (("tiny-gpt2", gpt2), ("tiny-llama", llama)):
        d = root / name
        m.config.eos_token_id = 1
        m.config.bos_token_id = 1
        m.save_pretrained(d, safe_serialization=True)
        (d / "tokenizer.json").write_text(tokenizer_json())
        (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "unk_token": "<unk>"}))
        out.append(d)
    return out


def tokens_dataset(root: Path) -> Path:
    p = root / "data.jsonl"
    with p.open("w") as f:
        for i in range(16):
            f.write(json.dumps({"text": " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(20))}) + "\n")
    return p


def compare(results: dict) -> float:
    worst = 0.0
    for name, r in results.items():
        ids = torch.tensor([r["ids"]])
        merged = AutoModelForCausalLM.from_pretrained(r["merged_dir"], torch_dtype=torch.float32).eval()
        base = AutoModelForCausalLM.from_pretrained(r["base_dir"], torch_dtype=torch.float32).eval()
        with torch.no_grad():
            base_logits = base(ids).logits[0]
            peft = PeftModel.from_pretrained(base, r["peft_dir"]).eval()
            peft_logits = peft(ids).logits[0]
            merged_logits = merged(ids).logits[0]
        for what, theirs, ours in (
            ("transformers(merged export)", merged_logits, r["merged"]),
            ("peft(base + adapter export)", peft_logits, r["adapter"]),
            ("transformers(base)", base_logits, r["base"]),
        ):
            d = (theirs - torch.tensor(ours)).abs().max().item()
            moved = (peft_logits - base_logits).abs().max().item()
            print(f"{name:11s} {what:30s} max|diff| = {d:.2e}   (the adapter moves logits by {moved:.2e})")
            worst = max(worst, d)
    return worst


if __name__ == "__main__":
    stage, root = sys.argv[1], Path(sys.argv[2])
    if stage == "make":
        root.mkdir(parents=True, exist_ok=True)
        dirs = make_models(root)
        print(tokens_dataset(root), *dirs)
    else:
        worst = compare(json.loads((root / "anneal.json").read_text()))
        print(f"worst max|diff| = {worst:.2e}")
        sys.exit(0 if worst <= 1e-4 else 1)
