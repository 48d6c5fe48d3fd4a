"""anneal image quickstart, Python twin of examples/rust/image_quickstart.rs.

Run:    python examples/python/image_quickstart.py [home dir] [--smoke]   (after `pip install ./bindings-python`)
Output: training progress, the share of generated images whose colour and shape match
        their prompt before and after training, and image_quickstart.png (top row: the
        untrained model, bottom row: trained; needs Pillow). `--smoke` trains 20 steps
        (for CI; the score is then printed but low).

It draws a toy dataset itself (32x32 pictures of a red, green, blue or yellow circle,
square or triangle, captioned "a red circle", ...), imports it as an image dataset,
creates the from-scratch `tiny-shapes` text-to-image preset, trains it (UNet and text
encoder) with the preset's recommended settings, and scores both models.
"""

import os
import sys

import anneal
import anneal.shapes

# The tiny-shapes preset's recommended settings (anneal::diffusion::presets).
STEPS, BATCH, LR, WARMUP, SCHEDULE = 800, 16, 2e-3, 20, "cosine"
SAMPLING = dict(steps=25, guidance_scale=3.0, scheduler="euler_ancestral")
PER_PROMPT = 4  # 48 generated images per score
SIZE = 16


def progress(event):
    if event["type"] == "step" and (event["step"] % 50 == 0 or event["step"] == event["total_steps"]):
        image = f", validation grid {event['image']}" if "image" in event else ""
        print(f"  step {event['step']}/{event['total_steps']} loss {event['loss']:.4f}{image}")


def score(home, model_id):
    """Images of `model_id` for every colour x shape prompt, and the share that match."""
    prompts = anneal.shapes.prompts()
    images = home.image_generator(model_id).generate(prompts, num_images=PER_PROMPT, seed=1234, **SAMPLING)
    wanted = [p for p in prompts for _ in range(PER_PROMPT)]
    return anneal.shapes.score(images, wanted), images


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    steps = 20 if "--smoke" in sys.argv else STEPS
    home = anneal.Home.open(args[0] if args else "anneal-home")

    folder = os.path.join(home.root, "image-quickstart-shapes-16px")
    if not os.path.exists(os.path.join(folder, "metadata.jsonl")):
        anneal.shapes.write_imagefolder(folder, n=480, size=SIZE, seed=0)
    data = home.datasets().import_images(folder, name="shapes-16px", on_duplicate="reuse")
    print(f"dataset shapes-16px: {data.num_records} images")

    base = home.models().create_preset("tiny-shapes", name="tiny-shapes", seed=0)
    before, before_images = score(home, base.id)
    print(f"base {base.name}@{base.version} ({base.params} parameters): {before:.0%} of generated images match their prompt")

    report = home.training().train(
        base=base.id, dataset=data.id, method="full", max_steps=steps, batch_size=BATCH,
        learning_rate=LR, warmup_steps=WARMUP, schedule=SCHEDULE, output_name="shapes-painter",
        image={
            "snr_gamma": 5.0, "train_text_encoder": True, "caption_dropout": 0.1,
            "validation_prompts": ["a red circle", "a blue square", "a yellow triangle"],
            "validation_every": max(steps // 4, 1), "validation_steps": SAMPLING["steps"],
            "validation_guidance_scale": SAMPLING["guidance_scale"], "validation_scheduler": SAMPLING["scheduler"],
        },
        on_event=progress,
    )
    print(f"trained in {report.duration_s:.0f} s, final loss {report.final_loss:.4f}")
    after, after_images = score(home, report.model_id)
    print(f"after training: {after:.0%} of generated images match their prompt (was {before:.0%})")

    try:
        from PIL import Image
    except ImportError:
        return
    # The first image of each prompt, enlarged 4 times (nearest neighbour: 16x16 pixels stay sharp).
    big = lambda im: im.resize((im.width * 4, im.height * 4), Image.NEAREST)
    rows = [[big(im) for im in images[::PER_PROMPT]] for images in (before_images, after_images)]
    w, h = rows[0][0].size
    grid = Image.new("RGB", (w * len(rows[0]), h * len(rows)), "white")
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            grid.paste(im, (c * w, r * h))
    grid.save("image_quickstart.png")
    print("wrote image_quickstart.png (top: untrained, bottom: trained)")


if __name__ == "__main__":
    main()
