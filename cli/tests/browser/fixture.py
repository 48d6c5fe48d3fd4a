"""The Python side of the dashboard's browser test (dashboard.test.mjs).

    python fixture.py setup HOME
        A nano base model, a completion dataset, a short full fine-tune of the base and a
        LoRA adapter on the fine-tune (lineage base -> job -> model -> adapter); and a
        two-step LoRA job on the tiny Stable Diffusion fixture, with validation images.
        Prints one JSON object: {"base", "trained", "adapter", "dataset", "image_job"}.

    python fixture.py train HOME BASE STEPS PACE
        Trains BASE for STEPS steps, sleeping PACE seconds in the callback of each step
        so the run lasts long enough to be watched. Prints JSON lines: {"job_id"} once the
        job started, then {"end": "completed" | "cancelled" | <error code>}. A cancel
        from anywhere (the dashboard) ends it with {"end": "cancelled"} and exit code 0.
"""

import json
import sys
import tempfile
import time
from pathlib import Path

import anneal
import anneal.shapes

FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures"

RECORDS = [{"prompt": f"{i} plus one is", "completion": f" {i + 1}"} for i in range(60)]
SPEC = {"seq_len": 32, "batch_size": 4, "learning_rate": 3e-3}


def say(obj):
    print(json.dumps(obj), flush=True)


def setup(home_dir):
    home = anneal.Home.open(home_dir)
    base = home.models().create_preset("nano", name="tiny", seed=0)
    ds = home.datasets().import_records(RECORDS, name="arithmetic")
    engine = home.training()
    trained = engine.train({**SPEC, "base": base.id, "dataset": ds.id, "method": "full", "max_steps": 6,
                            "output_name": "tiny-arith"})
    adapter = engine.train({**SPEC, "base": trained.model_id, "dataset": ds.id, "method": {"lora": {"r": 4}},
                            "max_steps": 3, "output_name": "tiny-arith-lora"})
    home.models().set_alias(trained.model_id, "production")
    with tempfile.TemporaryDirectory() as tmp:
        anneal.shapes.write_imagefolder(Path(tmp) / "shapes", n=4, size=32, seed=0)
        home.datasets().import_images(str(Path(tmp) / "shapes"), name="shapes")
    home.models().register_dir(FIXTURES / "tiny-sd", name="sd")
    image = engine.train(base="sd", dataset="shapes", method={"lora": {"r": 4}}, max_steps=2, batch_size=2,
                         image={"resolution": 16, "validation_prompts": ["a red circle"], "validation_every": 1,
                                "validation_steps": 2})
    say({"base": base.id, "trained": trained.model_id, "adapter": adapter.model_id, "dataset": ds.id,
         "image_job": image.job_id})


def train(home_dir, base, steps, pace):
    home = anneal.Home.open(home_dir)
    started = False

    def on_event(ev):
        nonlocal started
        if ev["type"] == "job_started" and not started:
            started = True
            say({"job_id": ev["job_id"]})
        elif ev["type"] == "step":
            time.sleep(pace)

    spec = {**SPEC, "base": base, "dataset": "arithmetic", "method": "full", "max_steps": steps,
            "eval_every": 25, "eval_fraction": 0.2, "checkpoint_every": 50, "output_name": "tiny-live"}
    try:
        home.training().train(spec, on_event=on_event)
        say({"end": "completed"})
    except anneal.CancelledError:
        say({"end": "cancelled"})
    except anneal.AnnealError as e:
        say({"end": e.code, "message": str(e)})
        sys.exit(1)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "setup":
        setup(sys.argv[2])
    elif cmd == "train":
        train(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
    else:
        sys.exit(f"unknown command {cmd!r}")
