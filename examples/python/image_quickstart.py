"""anneal image quickstart, Python twin of examples/rust/image_quickstart.rs.

Run:    python examples/python/image_quickstart.py [home dir] [--smoke]   (after `pip install ./bindings-python`)
Output: training progress; before and after training, the share of generated images
        whose dominant colour, shape, and both match their prompt; and
        <home>/image_quickstart.png (top row: the untrained model, bottom row: trained).
        `--smoke` runs the same loop in a few seconds (48 pictures, 4 training steps,
        12 images of 4 denoising steps): it shows that everything runs, not that
        anything is learned.

It draws a toy dataset itself (480 pictures of a red, green, blue or yellow circle,
square or triangle on white, captioned "a red circle", ...), imports it as an image
dataset, creates the from-scratch `tiny-shapes` text-to-image preset, trains it with the
preset's recommended settings (`anneal.shapes.recommended()`), and scores both models:
4 images for each of the 12 prompts, each classified from its pixels alone. Same
settings and seeds as the Rust example, so the same lines.
"""

import os
import sys
import time

import anneal
import anneal.shapes

SCORE_SEED = 1234  # seed of the scored images (the same for both models)


def progress(event):
    if event["type"] == "step" and (event["step"] % 100 == 0 or event["step"] == event["total_steps"]):
        print(f"  step {event['step']}/{event['total_steps']} loss {event['loss']:.4f}")


def score(home, model_id, rec, per_prompt, sampling_steps):
    """`per_prompt` images of `model_id` for every prompt, and how well they match."""
    prompts = anneal.shapes.prompts()
    images = home.image_generator(model_id).generate(
        prompts, num_images=per_prompt, seed=SCORE_SEED, steps=sampling_steps,
        guidance_scale=rec["guidance_scale"], scheduler=rec["scheduler"],
    )
    wanted = [p for p in prompts for _ in range(per_prompt)]
    return anneal.shapes.evaluate(images, wanted), images


def pct(x):
    return f"{x * 100:.0f}%"


def report(when, s):
    print(
        f"{when}: {pct(s['both'])} of {s['images']} generated images match their prompt "
        f"(colour {pct(s['color'])}, shape {pct(s['shape'])})"
    )


def main():
    started = time.monotonic()
    smoke = "--smoke" in sys.argv
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    home = anneal.Home.open(args[0] if args else "anneal-home")
    rec = anneal.shapes.recommended()
    if smoke:
        images, steps, per_prompt, sampling_steps = 48, 4, 1, 4
    else:
        images, steps, per_prompt, sampling_steps = 480, rec["steps"], 4, rec["inference_steps"]

    # 1. The toy dataset, drawn at the preset's size and imported (reused when this runs again).
    size = rec["resolution"]
    name = f"shapes-{size}px-{images}"
    folder = os.path.join(home.root, f"image-quickstart-{name}")
    if not os.path.exists(os.path.join(folder, "metadata.jsonl")):
        anneal.shapes.write_imagefolder(folder, n=images, size=size, seed=0)
    data = home.datasets().import_images(folder, name=name, on_duplicate="reuse")
    print(f"dataset {name}: {data.num_records} images")

    # 2. The from-scratch base (a new version of `tiny-shapes` at each run).
    base = home.models().create_preset("tiny-shapes", seed=0)
    print(f"base {base.name}@{base.version} ({base.params} parameters)")
    before, before_images = score(home, base.id, rec, per_prompt, sampling_steps)
    report("before training", before)

    # 3. Training with the preset's recommended settings.
    trained = home.training().train(
        base=base.id, dataset=data.id, method="full", max_steps=steps, batch_size=rec["batch_size"],
        learning_rate=rec["learning_rate"], warmup_steps=min(rec["warmup_steps"], steps),
        schedule=rec["schedule"], seed=0, output_name="shapes-painter",
        image={
            "snr_gamma": rec["snr_gamma"],
            "train_text_encoder": rec["train_text_encoder"],
            "caption_dropout": rec["caption_dropout"],
            "validation_prompts": ["a red circle", "a blue square", "a yellow triangle"],
            "validation_every": max(steps // 2, 1),
            "validation_steps": sampling_steps,
            "validation_guidance_scale": rec["guidance_scale"],
            "validation_scheduler": rec["scheduler"],
        },
        on_event=progress,
    )
    model = home.models().get(trained.model_id)
    print(
        f"trained {model.name}@{model.version} in {trained.duration_s:.0f} s "
        f"({trained.steps} steps, final loss {trained.final_loss:.4f})"
    )

    # 4. The numbers that show it learned, and the picture.
    after, after_images = score(home, model.id, rec, per_prompt, sampling_steps)
    report("before training", before)
    report("after training ", after)
    chance = anneal.shapes.chance()
    print(
        f"chance (a painter that ignores the prompt): {pct(chance['both'])} "
        f"(colour {pct(chance['color'])}, shape {pct(chance['shape'])})"
    )
    if smoke:
        print(f"smoke run: {steps} steps, too few to learn anything; the numbers above are not a result")
    # The first image of each prompt, one row per model, enlarged 4 times.
    rows = [images_[::per_prompt] for images_ in (before_images, after_images)]
    path = os.path.join(home.root, "image_quickstart.png")
    with open(path, "wb") as f:
        f.write(anneal.shapes.grid(rows, scale=4))
    print(f"wrote {path} (top: untrained, bottom: trained)")
    print(f"done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
