"""anneal image quickstart, Python twin of examples/rust/image_quickstart.rs.

Run:    python examples/python/image_quickstart.py [home dir] [--smoke]   (after `pip install ./bindings-python`)
Output: training progress; before and after training, the share of generated images
        whose dominant colour, shape, and both match their prompt; and
        <home>/image_quickstart.png (top row: the untrained model, bottom row: trained;
        needs Pillow). `--smoke` trains 20 steps and scores 12 images (for CI).

It draws a toy dataset itself (480 16x16 pictures of a red, green, blue or yellow
circle, square or triangle on white, captioned "a red circle", ...), imports it as an
image dataset, creates the from-scratch `tiny-shapes` text-to-image preset, trains its
UNet with the preset's recommended settings (the text encoder keeps its random
weights), and scores both models: 4 images for each of the 12 prompts, each classified
from its pixels alone. Same settings and seeds as the Rust example, so the same numbers.
"""

import os
import sys
import time

import anneal
import anneal.shapes

# The tiny-shapes preset's recommended settings (anneal::diffusion::presets).
STEPS, BATCH, LR, WARMUP, SCHEDULE = 1200, 8, 3e-3, 20, "cosine"
TRAIN = {"snr_gamma": 5.0, "train_text_encoder": False, "caption_dropout": 0.1}
SAMPLING = {"steps": 25, "guidance_scale": 3.0, "scheduler": "ddpm"}
SIZE = 16  # the preset's resolution
IMAGES = 480
SCORE_SEED = 1234


def progress(event):
    if event["type"] == "step" and (event["step"] % 100 == 0 or event["step"] == event["total_steps"]):
        print(f"  step {event['step']}/{event['total_steps']} loss {event['loss']:.4f}")


def score(home, model_id, per_prompt):
    """`per_prompt` images of `model_id` for every prompt, and how well they match."""
    prompts = anneal.shapes.prompts()
    images = home.image_generator(model_id).generate(prompts, num_images=per_prompt, seed=SCORE_SEED, **SAMPLING)
    wanted = [p for p in prompts for _ in range(per_prompt)]
    return anneal.shapes.evaluate(images, wanted), images


def report(when, s):
    print(
        f"{when}: {s['both']:.0%} of {s['images']} generated images match their prompt "
        f"(colour {s['color']:.0%}, shape {s['shape']:.0%})"
    )


def main():
    started = time.monotonic()
    smoke = "--smoke" in sys.argv
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    steps, per_prompt = (20, 1) if smoke else (STEPS, 4)
    home = anneal.Home.open(args[0] if args else "anneal-home")

    # 1. The toy dataset, drawn and imported (reused when this runs again).
    name = f"shapes-{SIZE}px"
    folder = os.path.join(home.root, f"image-quickstart-{name}")
    if not os.path.exists(os.path.join(folder, "metadata.jsonl")):
        anneal.shapes.write_imagefolder(folder, n=IMAGES, size=SIZE, seed=0)
    data = home.datasets().import_images(folder, name=name, on_duplicate="reuse")
    print(f"dataset {name}: {data.num_records} images")

    # 2. The from-scratch base (a new version of `tiny-shapes` at each run).
    base = home.models().create_preset("tiny-shapes", seed=0)
    print(f"base {base.name}@{base.version} ({base.params} parameters)")
    before, before_images = score(home, base.id, per_prompt)
    report("before training", before)

    # 3. Training with the preset's recommended settings.
    report_ = home.training().train(
        base=base.id, dataset=data.id, method="full", max_steps=steps, batch_size=BATCH,
        learning_rate=LR, warmup_steps=WARMUP, schedule=SCHEDULE, seed=0, output_name="shapes-painter",
        image={
            **TRAIN,
            "validation_prompts": ["a red circle", "a blue square", "a yellow triangle"],
            "validation_every": max(steps // 2, 1), "validation_steps": SAMPLING["steps"],
            "validation_guidance_scale": SAMPLING["guidance_scale"], "validation_scheduler": SAMPLING["scheduler"],
        },
        on_event=progress,
    )
    print(f"trained in {report_.duration_s:.0f} s ({report_.steps} steps, final loss {report_.final_loss:.4f})")

    # 4. The numbers that show it learned, and the picture.
    after, after_images = score(home, report_.model_id, per_prompt)
    report("before training", before)
    report("after training ", after)
    chance = anneal.shapes.chance()
    print(
        f"chance (a painter that ignores the prompt): {chance['both']:.0%} "
        f"(colour {chance['color']:.0%}, shape {chance['shape']:.0%})"
    )
    try:
        from PIL import Image
    except ImportError:
        print("(install Pillow for image_quickstart.png)")
    else:
        # The first image of each prompt, enlarged 4 times (nearest neighbour: the pixels stay sharp).
        def big(im):
            return im.resize((im.width * 4, im.height * 4), Image.NEAREST)

        rows = [[big(im) for im in images[::per_prompt]] for images in (before_images, after_images)]
        w, h = rows[0][0].size
        grid = Image.new("RGB", (w * len(rows[0]), h * len(rows)), "white")
        for r, row in enumerate(rows):
            for c, im in enumerate(row):
                grid.paste(im, (c * w, r * h))
        path = os.path.join(home.root, "image_quickstart.png")
        grid.save(path)
        print(f"wrote {path} (top: untrained, bottom: trained)")
    print(f"done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
