"""Image (Stable Diffusion) training from Python: the same TrainSpec with `image`
options, validation images in step events and the job row, the trained adapter usable
by the image generator; and the shapes toy data of the image quickstart."""

import json

import anneal
import anneal.shapes
import pytest


@pytest.fixture
def shapes_home(home, fixtures, tmp_path):
    anneal.shapes.write_imagefolder(tmp_path / "shapes", n=4, size=32, seed=0)
    home.datasets().import_images(str(tmp_path / "shapes"), name="shapes")
    home.models().register_dir(fixtures / "tiny-sd", name="sd")
    return home


def test_lora_training_points_events_and_the_job_at_validation_images(shapes_home):
    home = shapes_home
    events = []
    report = home.training().train(
        base="sd", dataset="shapes", method={"lora": {"r": 4}}, max_steps=2, batch_size=2,
        image={"resolution": 16, "validation_prompts": ["a red circle"], "validation_every": 1,
               "validation_steps": 2, "snr_gamma": 5.0},
        on_event=events.append,
    )
    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == [1, 2]
    assert steps[0]["image"].endswith("step-000001.png") and steps[1]["image"].endswith("step-000002.png")
    job = home.training().job(report.job_id)
    assert job.image.endswith("step-000002.png")
    assert job.spec["image"]["snr_gamma"] == 5.0
    model = home.models().get(report.model_id)
    assert (model.kind, model.family, model.parent_id) == ("lora", "stable-diffusion", home.models().resolve("sd").id)
    images = home.image_generator(report.model_id).generate("a red circle", steps=2, seed=1)
    assert len(images) == 1


def test_image_options_are_checked_naming_the_field(shapes_home):
    engine = shapes_home.training()
    for image, field in [
        ({"resolution": 10}, "image.resolution"),
        ({"caption_dropout": 1.5}, "image.caption_dropout"),
        ({"validation_every": 2}, "image.validation_every"),
    ]:
        with pytest.raises(anneal.InvalidConfigError) as e:
            engine.create_job(base="sd", dataset="shapes", method={"lora": {"r": 4}}, image=image)
        assert field in str(e.value), (image, str(e.value))
    with pytest.raises(anneal.InvalidConfigError, match="image.resolutoin"):
        engine.create_job(base="sd", dataset="shapes", image={"resolutoin": 16})


def test_shapes_score_recognises_the_drawn_pictures(tmp_path):
    anneal.shapes.write_imagefolder(tmp_path / "s", n=12, size=32, seed=3)
    rows = [json.loads(line) for line in (tmp_path / "s" / "metadata.jsonl").read_text().splitlines()]
    pngs = [(tmp_path / "s" / r["file_name"]).read_bytes() for r in rows]
    captions = [r["text"] for r in rows]
    assert sorted(set(captions)) == sorted(anneal.shapes.prompts())
    assert anneal.shapes.score(pngs, captions) == 1.0
    assert anneal.shapes.score(pngs, captions[1:] + captions[:1]) == 0.0
    with pytest.raises(anneal.InvalidDataError, match=r"images\[0\]"):
        anneal.shapes.score([b"not a png"], ["a red circle"])
