"""anneal quickstart, Python twin of examples/rust/quickstart.rs.

Run:    python examples/python/quickstart.py [home dir] [--smoke]   (after `pip install ./bindings-python`)
Output: dataset splits, one progress line per ~50 steps for two training jobs (a full
        training of the nano preset on uppercase, then a LoRA adapter on letter doubling),
        their losses, the accuracy of greedy answers on 100 held-out words before and after
        each (generated in one batch), a streamed answer from the adapter, the adapter
        switched on and off per request on one loaded base, the usage the catalog
        recorded, and the registry with lineage. `--smoke` trains 10 steps each and scores
        16 words (for CI; accuracy is then printed but low).
Re-run: safe on the same home. The datasets are reused (`on_duplicate="reuse"`), and the
        preset and both trainings too (`if_exists="reuse"`): a second run trains nothing
        and prints the same results. The default home, ./anneal-home, is git-ignored.
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


SMOKE = "--smoke" in sys.argv
EVAL_N = 16 if SMOKE else 100


def accuracy(home, model_id, val):
    """Exact-match accuracy of greedy answers on held-out problems, in one batch."""
    gen = home.generator(model_id)  # an adapter is merged into its base at load
    records = home.datasets().preview(val.id, EVAL_N)
    outs = gen.generate_batch([r["prompt"] for r in records], max_new_tokens=16)
    right = sum(o.text.strip() == r["completion"] for r, o in zip(records, outs))
    samples = [f"{r['prompt']} {o.text.strip():<12} (want {r['completion']})" for r, o in zip(records[:4], outs)]
    return right / len(records), samples


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    # Smoke (CI): a few steps instead of epochs.
    short = {"max_steps": 10} if SMOKE else {}
    home = anneal.Home.open(args[0] if args else "anneal-home")
    datasets, models, engine = home.datasets(), home.models(), home.training()

    splits = {}
    for name in ["uppercase", "double"]:
        ds = datasets.import_file(os.path.join(DATA, f"{name}.jsonl"), name=name, on_duplicate="reuse")
        splits[name] = datasets.split(ds.id, 0.1, seed=0)
        print(f"dataset {name}: {ds.num_records} records -> {splits[name].train.num_records} train / {splits[name].val.num_records} held out")

    # if_exists="reuse": a second run gets the same model (same preset and seed), not @2.
    base = models.create_preset("nano", name="quickstart-nano", seed=0, if_exists="reuse")
    before, _ = accuracy(home, base.id, splits["uppercase"].val)
    print(f"base {base.name}@{base.version}: {base.params} parameters, uppercase accuracy {before:.0%}")

    upper = engine.train(
        base=base.id, dataset=splits["uppercase"].train.id, eval_dataset=splits["uppercase"].val.id,
        method="full", epochs=10, batch_size=32, seq_len=16, learning_rate=2e-3,
        warmup_steps=20, schedule="cosine", weight_decay=0.01, output_name="quickstart-upper",
        if_exists="reuse", on_event=progress, **short,  # a second run returns this job's report
    )
    print(f"full training: {upper.steps} steps, final loss {upper.final_loss:.3f}, eval loss {upper.eval_loss:.3f}")
    after, samples = accuracy(home, upper.model_id, splits["uppercase"].val)
    print(f"uppercase accuracy on {EVAL_N} held-out words: {before:.0%} -> {after:.0%}")
    for line in samples:
        print("  " + line)
    sub_before, _ = accuracy(home, upper.model_id, splits["double"].val)

    lora = engine.train(
        base=upper.model_id, dataset=splits["double"].train.id, eval_dataset=splits["double"].val.id,
        method={"lora": {"r": 16, "alpha": 32, "target_modules": ["all-linear"]}},
        epochs=8, batch_size=32, seq_len=24, learning_rate=5e-3, warmup_steps=10,
        schedule="cosine", output_name="quickstart-double-lora", if_exists="reuse", on_event=progress, **short,
    )
    print(f"LoRA training: {lora.steps} steps, final loss {lora.final_loss:.3f}, eval loss {lora.eval_loss:.3f}")
    sub_after, samples = accuracy(home, lora.model_id, splits["double"].val)
    print(f"double-letter accuracy: {sub_before:.0%} (trained base) -> {sub_after:.0%} (with the LoRA adapter)")
    for line in samples:
        print("  " + line)

    # Stream from the adapter kept unmerged; then one loaded base, adapter per request.
    word = datasets.preview(splits["double"].val.id, 1)[0]["prompt"]
    gen = home.generator(lora.model_id, merge_adapter=False)
    print(f"streaming {word!r} with the adapter: ", end="", flush=True)
    stream = gen.stream(word, max_new_tokens=16)
    for chunk in stream:
        print(chunk.text, end="", flush=True)
    g = stream.generation
    print(f"  ({g.generated_tokens} tokens, {g.finish_reason}, first token after {g.timings.ttft_ms:.1f} ms)")
    on_base = home.generator(upper.model_id, merge_adapter=False)
    on_base.add_adapter(lora.model_id)
    plain = on_base.generate(word, max_new_tokens=16).text.strip()
    with_adapter = on_base.generate(word, max_new_tokens=16, adapter=lora.model_id).text.strip()
    print(f"same base, per request: without adapter {plain!r}, with {with_adapter!r}")
    u = models.usage(lora.model_id)
    print(f"usage of the adapter (from the catalog): {u.calls} calls, {u.generations} prompts, {u.generated_tokens} tokens")

    for m in models.list():
        origin = f"job {m.lineage['job']}" if "job" in m.lineage else m.source
        print(f"  {m.name:<24} v{m.version} {m.kind:<5} {m.params:>8}  {origin}")


if __name__ == "__main__":
    main()
