"""Export (hf, peft, bundle) and import_bundle from Python: same names, errors and
records as the Rust API."""

import json
from pathlib import Path

import pytest

import anneal

TEXTS = ["the cat sat on the mat 3", "hello world"]


@pytest.fixture
def lora(home):
    base = home.models().create_preset("nano", seed=0)
    home.datasets().import_records([{"text": f"the cat sat on the mat {i}"} for i in range(16)], name="toy")
    report = home.training().train(
        base=base.id, dataset="toy", method={"lora": {}}, max_steps=3, seq_len=32, batch_size=4,
        learning_rate=1e-2, output_name="cat",
    )
    return base, home.models().get(report.model_id)


def losses(home, model):
    return [s["loss"] if isinstance(s, dict) else s.loss for s in home.generator(model).score(TEXTS)]


def test_hf_export_merges_and_reregisters(home, lora, tmp_path):
    base, adapter = lora
    events = []
    report = home.models().export(adapter.id, "hf", tmp_path / "merged", on_event=events.append)
    assert report["model"] == adapter.reference() and report["format"] == "hf"
    names = {f["path"] for f in report["files"]}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names
    assert all(len(f["sha256"]) == 64 for f in report["files"])
    assert [e["type"] for e in events][0] == "task_started" and events[-1]["type"] == "task_finished"
    merged = home.models().register_dir(tmp_path / "merged", name="merged")
    for a, b in zip(losses(home, merged.id), losses(home, adapter.id)):
        assert abs(a - b) < 1e-4

    with pytest.raises(anneal.AlreadyExistsError):
        home.models().export(adapter.id, "hf", tmp_path / "merged")
    home.models().export(base.id, "hf", tmp_path / "merged", overwrite=True)
    assert f"# {base.reference()}" in (tmp_path / "merged" / "README.md").read_text()
    with pytest.raises(anneal.InvalidConfigError, match="gguf2"):
        home.models().export(adapter.id, "gguf2", tmp_path / "x")
    with pytest.raises(anneal.InvalidConfigError, match="max_shard_bytes"):
        home.models().export(adapter.id, "hf", tmp_path / "x", max_shard_bytes="big")


def test_peft_export_sets_the_base(home, lora, tmp_path):
    _, adapter = lora
    home.models().export(adapter.id, "peft", tmp_path / "peft", base_model="org/nano")
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "org/nano"


def test_bundle_round_trip_and_tampering(home, lora, tmp_path):
    base, adapter = lora
    zip_path = tmp_path / "cat.zip"
    home.models().export(adapter.id, "bundle", zip_path)
    other = anneal.Home.open(tmp_path / "other")
    got = other.models().import_bundle(zip_path, name="kitty")
    assert (got.id, got.sha256, got.name, got.parent_id) == (adapter.id, adapter.sha256, "kitty", base.id)
    assert losses(other, got.id) == losses(home, adapter.id)

    data = bytearray(zip_path.read_bytes())
    entry = f"models/{adapter.id}/adapter_model.safetensors".encode()
    at = data.index(entry) + len(entry) + 300
    data[at] ^= 0x5A
    bad = tmp_path / "bad.zip"
    bad.write_bytes(bytes(data))
    third = anneal.Home.open(tmp_path / "third")
    with pytest.raises(anneal.InvalidDataError, match="adapter_model.safetensors"):
        third.models().import_bundle(bad)
    assert third.models().list() == []
    bad.write_bytes(zip_path.read_bytes()[:1000])
    with pytest.raises(anneal.InvalidDataError):
        third.models().import_bundle(bad)
    with pytest.raises(anneal.InvalidConfigError):
        third.models().import_bundle(tmp_path)


def test_register_file_runs_a_gguf_export(home, tmp_path):
    base = home.models().create_preset("nano", seed=0)
    gguf = tmp_path / "nano.gguf"
    home.models().export(base.id, "gguf", gguf, quantization="q8_0")
    events = []
    rec = home.models().register_file(gguf, name="nano-q8", on_event=events.append)
    assert (rec.dtype, rec.model_type, rec.name) == ("q8_0", "llama", "nano-q8")
    assert [f.name for f in rec.files] == ["config.json", "model.gguf", "tokenizer.json", "tokenizer_config.json"]
    assert events[0]["type"] == "task_started" and events[-1]["type"] == "task_finished"
    # The q8_0 blocks run as they are: the original's tokens with the generator's own q8_0.
    want = home.generator(base.id, quantize="q8_0").generate([3, 17, 42], max_new_tokens=8, ignore_eos=True)
    got = home.generator(rec.id).generate([3, 17, 42], max_new_tokens=8, ignore_eos=True)
    assert got.token_ids == want.token_ids
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(gguf.read_bytes()[:1000])
    with pytest.raises(anneal.InvalidDataError, match="cut.gguf"):
        home.models().register_file(cut)
    assert [m.name for m in home.models().list()] == ["nano", "nano-q8"]
