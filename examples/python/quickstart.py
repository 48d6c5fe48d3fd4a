"""anneal quickstart (Python twin of examples/rust/quickstart.rs).

Run:    python examples/python/quickstart.py [home dir]      (after `pip install ./bindings-python`)
Output: import progress, dataset stats and split, the created preset model, the registry.

Foundation release: training and generation are not built yet; this stops at the registry.
"""

import os
import sys

import anneal

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data", "addition.jsonl")


def show(event):
    if event["type"] == "task_finished":
        print(f"{event['task']} {event['status']}: {event.get('id')}")


def main():
    home = anneal.Home.open(sys.argv[1] if len(sys.argv) > 1 else "anneal-home")
    print(f"home: {home.root} (catalog schema v{home.schema_version()})")

    datasets = home.datasets()
    ds = datasets.import_file(DATA, name="addition", on_duplicate="reuse", on_event=show)
    stats = datasets.stats(ds.id)
    print(f"dataset {ds.name} ({ds.id}): {ds.num_records} {ds.format} records, {stats.bytes} bytes")
    split = datasets.split(ds.id, 0.1, seed=42)
    print(f"split (seed 42): {split.train.num_records} train / {split.val.num_records} val")
    for r in datasets.preview(split.val.id, 3):
        print("  val example:", r)

    models = home.models()
    try:
        base = models.resolve("quickstart-base")
    except anneal.NotFoundError:
        base = models.create_preset("micro", name="quickstart-base", seed=42)
    models.set_alias(base.id, "production")
    print(f"model {base.name}@{base.version} = {base.id} ({base.params} parameters)")
    for m in models.list():
        print(f"  {m.name:<22} v{m.version} {m.kind:<5} {m.family:<6} {m.params:>9} {m.source} {','.join(m.aliases)}")
    print("quickstart-base@production ->", models.resolve("quickstart-base@production").id)


if __name__ == "__main__":
    main()
