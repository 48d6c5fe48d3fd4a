import struct
import sys

import anneal
import pytest


@pytest.fixture
def sd(home, fixtures):
    m = home.models()
    m.register_dir(fixtures / "tiny-sd", name="sd")
    m.register_dir(fixtures / "tiny-sd-lora" / "peft", name="style", parent="sd")
    return home


def as_bytes(img):
    if isinstance(img, bytes):
        return img
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def pixels(img):
    if isinstance(img, bytes):
        pytest.importorskip("PIL")
    return img.convert("RGB").tobytes()


def test_registered_pipeline_has_kind_and_family(sd):
    rec = sd.models().resolve("sd")
    assert (rec.kind, rec.family, rec.architecture) == ("base", "stable-diffusion", "StableDiffusionPipeline")
    lora = sd.models().resolve("style")
    assert (lora.kind, lora.parent_id) == ("lora", rec.id)


def test_generate_returns_images_with_settings_and_events(sd):
    gen = sd.image_generator("sd")
    events = []
    images = gen.generate(["a red circle", "a blue square"], steps=2, seed=3, on_event=events.append)
    assert len(images) == 2
    img = images[0]
    try:
        from PIL import Image

        assert isinstance(img, Image.Image)
        assert img.size == (16, 16)
        assert '"seed":3' in img.info["anneal"].replace(" ", "")
        assert "a red circle" in img.info["parameters"]
    except ImportError:
        assert isinstance(img, bytes) and img.startswith(b"\x89PNG")
    assert [e["done"] for e in events if e["type"] == "task_progress"] == [1, 2]
    assert events[0]["task"] == "txt2img"
    rows = sd.models().generations(kind="txt2img")
    assert len(rows) == 1 and rows[0].params["seed"] == 3


def test_generate_returns_png_bytes_when_pillow_is_absent(sd, monkeypatch):
    # What a user without Pillow gets (scripts/test-python.sh installs it): the import of
    # PIL.Image fails, so each image is the PNG with its settings in text chunks.
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    images = sd.image_generator("sd").generate(["a red circle", "a blue square"], steps=2, seed=3)
    assert len(images) == 2
    for img in images:
        assert isinstance(img, bytes) and img.startswith(b"\x89PNG\r\n\x1a\n")
        # IHDR: width and height, big-endian, right after the signature and chunk header.
        assert struct.unpack(">II", img[16:24]) == (16, 16)
    assert b"a red circle" in images[0] and b"seed" in images[0]
    assert images[0] != images[1]


def test_adapters_per_request_and_errors(sd):
    pytest.importorskip("PIL")
    gen = sd.image_generator("sd")
    base = pixels(gen.generate("x", steps=2, seed=1)[0])
    zero = pixels(gen.generate("x", steps=2, seed=1, adapters=[{"model": "style", "scale": 0.0}])[0])
    one = pixels(gen.generate("x", steps=2, seed=1, adapters=[{"model": "style"}])[0])
    assert zero == base and one != base
    with pytest.raises(anneal.InvalidConfigError) as e:
        gen.generate("x", steps=2, width=17)
    assert e.value.field == "width"
    with pytest.raises(anneal.InvalidConfigError) as e:
        gen.generate("x", steps=0)
    assert e.value.field == "steps"
    cancel = anneal.CancelToken()

    def stop(e):
        if e["type"] == "task_progress":
            cancel.cancel()

    with pytest.raises(anneal.CancelledError):
        gen.generate("x", steps=3, on_event=stop, cancel=cancel)
    with pytest.raises(anneal.InvalidConfigError):
        sd.image_generator("sd").generate("x", adapters=[{"model": "nope"}])
