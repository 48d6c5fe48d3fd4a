"""Image datasets from Python: import_images (three layouts), stats, thumbnails, split,
events, cancel, and bad inputs as typed errors that leave the home unchanged. The PNGs
are written here (no Pillow needed); the Pillow branch of `thumbnails` is checked with a
stand-in `PIL.Image` module."""

import os
import struct
import sys
import types
import zlib

import pytest

import anneal


def png(w, h, rgb):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + bytes(rgb) * w for _ in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def png_size(data):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def put(folder, rel, data):
    p = folder / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return p


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "shapes"
    put(d, "red.png", png(16, 16, (255, 0, 0)))
    put(d, "red.txt", "a red square\n")
    put(d, "wide/blue.png", png(16, 8, (0, 0, 255)))
    put(d, "wide/blue.txt", "a blue band")
    put(d, "green.png", png(8, 16, (0, 255, 0)))
    put(d, "green.txt", "a green bar")
    return d


def test_import_captions_preview_stats(ds, folder):
    rec = ds.import_images(folder)
    assert (rec.name, rec.format, rec.source_format, rec.num_records) == ("shapes", "image", "images", 3)
    rows = ds.preview(rec.id, 10)
    assert [r["file_name"] for r in rows] == ["green.png", "red.png", "wide/blue.png"]
    assert [r["text"] for r in rows] == ["a green bar", "a red square", "a blue band"]
    assert rows[0]["image"] == "images/000001.png"
    assert (rows[2]["width"], rows[2]["height"], rows[2]["mode"]) == (16, 8, "RGB")
    images = ds.stats(rec.id).images
    assert images["count"] == 3
    assert images["width"] == {"min": 8, "max": 16, "mean": pytest.approx(40 / 3)}
    assert images["aspect_ratios"] == {"1:1": 1, "9:16": 1, "16:9": 1}
    assert images["formats"] == {"png": 3}
    assert images["modes"] == {"RGB": 3}
    # Text datasets have no image stats.
    assert ds.import_records([{"text": "x"}], name="t").format == "text"
    assert ds.stats("t").images is None


def test_imagefolder_and_instance_layouts(ds, tmp_path):
    d = tmp_path / "hf"
    put(d, "a.png", png(4, 4, (1, 2, 3)))
    put(d, "b.png", png(4, 4, (3, 2, 1)))
    put(d, "metadata.csv", "file_name,caption\nb.png,second\na.png,first\n")
    rec = ds.import_images(d, name="hf", caption_column="caption")
    assert rec.columns == {"image": "file_name", "text": "caption"}
    assert [r["text"] for r in ds.preview("hf", 5)] == ["first", "second"]

    inst = tmp_path / "sks"
    for i in range(3):
        put(inst, f"{i}.png", png(4, 4, (i * 50, 0, 0)))
    with pytest.raises(anneal.InvalidConfigError) as ei:
        ds.import_images(inst)
    assert ei.value.code == "invalid_config" and "instance_prompt" in str(ei.value)
    rec = ds.import_images(inst, instance_prompt="a photo of sks dog", layout="instance")
    assert {r["text"] for r in ds.preview(rec.id, 5)} == {"a photo of sks dog"}
    # The same content again.
    with pytest.raises(anneal.DuplicateContentError):
        ds.import_images(inst, name="again", instance_prompt="a photo of sks dog")
    assert ds.import_images(inst, name="again", instance_prompt="a photo of sks dog", on_duplicate="reuse").id == rec.id


def test_thumbnails_bytes_without_pillow_and_pil_with_it(ds, folder, monkeypatch):
    ds.import_images(folder, name="s")
    # No Pillow: PNG bytes.
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    thumbs = ds.thumbnails("s", 2, size=8)
    assert len(thumbs) == 2
    record, image = thumbs[0]
    assert record["file_name"] == "green.png"
    assert isinstance(image, bytes) and png_size(image) == (4, 8)
    assert png_size(ds.thumbnails("s", 3)[2][1]) == (16, 8), "never enlarged"
    # With Pillow (a stand-in module recording what it was given).
    opened = []

    class FakeImage:
        def __init__(self, f):
            self.data = f.read()
            self.loaded = False

        def load(self):
            self.loaded = True

    fake = types.ModuleType("PIL.Image")
    fake.open = lambda f: opened.append(FakeImage(f)) or opened[-1]
    pil = types.ModuleType("PIL")
    pil.Image = fake
    monkeypatch.setitem(sys.modules, "PIL", pil)
    monkeypatch.setitem(sys.modules, "PIL.Image", fake)
    (_, img), = ds.thumbnails("s", 1, size=8)
    assert isinstance(img, FakeImage) and img.loaded and png_size(img.data) == (4, 8)
    with pytest.raises(anneal.InvalidConfigError):
        ds.thumbnails("s", 1, size=0)


def test_split_and_delete(ds, home, folder):
    src = ds.import_images(folder, name="s")
    train, val = ds.split("s", 0.34, seed=1)
    assert train.num_records + val.num_records == 3
    for half in (train, val):
        assert len(ds.thumbnails(half.id, 10, size=4)) == half.num_records
    ds.delete(src.id)
    assert len(ds.thumbnails(train.id, 10, size=4)) == train.num_records


def test_events_and_cancel(ds, home, folder, unchanged):
    events = []
    rec = ds.import_images(folder, name="ev", on_event=events.append)
    assert events[0] == {"type": "task_started", "task": "import_dataset", "name": "ev", "total": 3, "unit": "images"}
    assert events[-1] == {"type": "task_finished", "task": "import_dataset", "status": "completed", "id": rec.id}
    assert [e["done"] for e in events if e["type"] == "task_progress"][-1] == 3

    token = anneal.CancelToken()
    token.cancel()
    u = unchanged()
    with pytest.raises(anneal.CancelledError):
        ds.import_images(folder, name="cancelled", cancel=token)
    u.check()


def test_bad_inputs_are_typed_and_leave_nothing(ds, tmp_path, unchanged):
    def case(name, files, **opts):
        d = tmp_path / name
        d.mkdir()
        for rel, data in files.items():
            put(d, rel, data)
        return d

    good = png(4, 4, (9, 9, 9))
    huge = bytearray(png(1, 1, (0, 0, 0)))
    huge[16:24] = struct.pack(">II", 10_000, 10_000)
    huge[29:33] = struct.pack(">I", zlib.crc32(bytes(huge[12:29])))
    cases = [
        ("corrupt", {"a.png": good[:30] + b"\x00" * 20 + good[50:]}, {"instance_prompt": "x"}, ["a.png"]),
        ("gif", {"g.png": b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"}, {"instance_prompt": "x"}, ["g.png", "GIF"]),
        ("orphan", {"a.png": good, "a.txt": "ok", "b.txt": "alone"}, {}, ["b.txt", "without its image"]),
        ("missing", {"a.png": good, "metadata.jsonl": '{"file_name": "nope.png", "text": "x"}\n'}, {}, ["metadata.jsonl", "record 1", "nope.png"]),
        ("huge", {"h.png": bytes(huge)}, {"instance_prompt": "x"}, ["h.png", "max_pixels"]),
        ("empty", {"notes.md": "nothing"}, {"instance_prompt": "x"}, ["no images"]),
    ]
    for name, files, opts, must in cases:
        d = case(name, files)
        u = unchanged()
        with pytest.raises(anneal.InvalidDataError) as ei:
            ds.import_images(d, **opts)
        assert ei.value.code == "invalid_data", name
        for s in must:
            assert s in str(ei.value), (name, s, str(ei.value))
        u.check()
    fifo_dir = case("fifo", {"a.png": good})
    os.mkfifo(fifo_dir / "x.png")
    with pytest.raises(anneal.InvalidDataError, match="x.png"):
        ds.import_images(fifo_dir, instance_prompt="x")
    with pytest.raises(anneal.InvalidConfigError):
        ds.import_images(fifo_dir, instance_prompt="x", layout="nope")
    with pytest.raises(anneal.InvalidConfigError):
        ds.import_images(fifo_dir, instance_prompt="x", max_pixels=0)
