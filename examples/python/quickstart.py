"""anneal quickstart, Python twin of examples/rust/quickstart.rs.

Run:    python examples/python/quickstart.py [home dir] [--smoke]   (after `pip install ./bindings-python`)
Output: dataset splits, one progress line per ~50 steps for two training jobs (a full
        training of the nano preset on uppercase, then a LoRA adapter on letter doubling),
        their final and eval losses, and the registry with lineage. `--smoke` trains one
        epoch each (for CI).

Python has no generation API yet (the Generator comes next), so this twin reports losses;
the Rust quickstart also decodes held-out words and prints their accuracy.
"""

import os
import sys

import anneal

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data")


def progress(event):
    if event["type"] == "step" and (event["step"] % 50 == 0 or event["step"] == event["total_steps"]):
        print(f"  step {event['step']}/{event['total_steps']} loss {event['loss']:.4f} lr {event['lr']:.2e}")
    elif event["type"] == "eval":
        print(f"  eval @ step {event['step']}: {event['metrics']}")
    elif event["type"] == "job_finished":
        print(f"  job {event['job_id']} {event['status']} -> model {event.get('model_id')}")


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    epochs = 1 if "--smoke" in sys.argv else None
    home = anneal.Home.open(args[0] if args else "anneal-home")
    datasets, models, engine = home.datasets(), home.models(), home.training()

    splits = {}
    for name in ["uppercase", "double"]:
        ds = datasets.import_file(os.path.join(DATA, f"{name}.jsonl"), name=name, on_duplicate="reuse")
        splits[name] = datasets.split(ds.id, 0.1, seed=0)
        print(f"dataset {name}: {ds.num_records} records -> {splits[name].train.num_records} train / {splits[name].val.num_records} held out")

    base = models.create_preset("nano", name="quickstart-nano", seed=0)
    print(f"base {base.name}@{base.version}: {base.params} parameters")

    upper = engine.train(
        base=base.id, dataset=splits["uppercase"].train.id, eval_dataset=splits["uppercase"].val.id,
        method="full", epochs=epochs or 10, batch_size=32, seq_len=16, learning_rate=2e-3,
        warmup_steps=20, schedule="cosine", weight_decay=0.01, output_name="quickstart-upper",
        on_event=progress,
    )
    print(f"full training: {upper.steps} steps, final loss {upper.final_loss:.3f}, eval loss {upper.eval_loss:.3f}")

    lora = engine.train(
        base=upper.model_id, dataset=splits["double"].train.id, eval_dataset=splits["double"].val.id,
        method={"lora": {"r": 16, "alpha": 32, "target_modules": ["all-linear"]}},
        epochs=epochs or 8, batch_size=32, seq_len=24, learning_rate=5e-3, warmup_steps=10,
        schedule="cosine", output_name="quickstart-double-lora", on_event=progress,
    )
    print(f"LoRA training: {lora.steps} steps, final loss {lora.final_loss:.3f}, eval loss {lora.eval_loss:.3f}")

    for m in models.list():
        origin = f"job {m.lineage['job']}" if "job" in m.lineage else m.source
        print(f"  {m.name:<24} v{m.version} {m.kind:<5} {m.params:>8}  {origin}")


if __name__ == "__main__":
    main()
