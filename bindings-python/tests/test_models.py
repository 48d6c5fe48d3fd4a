import json
import shutil
from pathlib import Path

import pytest

import anneal


def test_register_hf_dirs(models, fixtures):
    llama = models.register_dir(fixtures / "tiny-llama")
    assert isinstance(llama, anneal.ModelRecord)
    assert (llama.name, llama.version, llama.kind, llama.family) == ("tiny-llama", 1, "base", "llama")
    assert llama.architecture == "LlamaForCausalLM" and llama.model_type == "llama"
    assert llama.storage == "copy" and llama.params > 0 and llama.bytes > 0
    assert Path(llama.path).is_dir() and Path(llama.path).parent.name == "models"
    names = {f.name for f in llama.files}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert all(isinstance(f, anneal.ModelFile) and len(f.sha256) == 64 for f in llama.files)
    assert llama.tokenizer == "tokenizer.json"
    assert isinstance(llama.config, dict) and llama.config["model_type"] == "llama"
    assert llama.lineage == {} and llama.aliases == [] and llama.tags == []
    assert llama.reference() == "tiny-llama@1"
    d = llama.to_dict()
    assert d["kind"] == "base" and d["storage"] == "copy" and d["files"][0]["name"]
    assert json.dumps(d)  # plain JSON types only

    gpt2 = models.register_dir(str(fixtures / "tiny-gpt2"), task="text-generation", tags=["tiny", "test"])
    assert (gpt2.family, gpt2.task, gpt2.tags) == ("gpt2", "text-generation", ["tiny", "test"])
    qwen = models.register_dir(fixtures / "tiny-qwen2", name="qwen")
    assert (qwen.name, qwen.family, qwen.model_type) == ("qwen", "llama", "qwen2")


def test_register_lora_adapter_with_parent(models, fixtures):
    base = models.register_dir(fixtures / "tiny-llama")
    lora = models.register_dir(fixtures / "tiny-llama-lora", parent="tiny-llama@1")
    assert (lora.kind, lora.parent_id, lora.family) == ("lora", base.id, "llama")
    assert lora.config["r"] == 4
    assert [m.id for m in models.list(parent=base.id)] == [lora.id]
    # The adapter's base_model_name_or_path ("tiny-llama") is found without `parent`.
    again = models.register_dir(fixtures / "tiny-llama-lora")
    assert (again.parent_id, again.version) == (base.id, 2)


def test_adapter_without_registered_parent(models, fixtures):
    with pytest.raises(anneal.InvalidConfigError) as ei:
        models.register_dir(fixtures / "tiny-llama-lora")
    assert ei.value.field == "parent"
    assert models.list() == []


def test_copy_vs_reference(models, fixtures, tmp_path):
    src = tmp_path / "mine"
    shutil.copytree(fixtures / "tiny-gpt2", src)
    copied = models.register_dir(src, name="copied")
    ref = models.register_dir(src, name="referenced", storage="reference")
    assert copied.storage == "copy" and Path(copied.path) != src.resolve()
    assert ref.storage == "reference" and Path(ref.path) == src.resolve()
    assert ref.sha256 == copied.sha256
    models.delete("referenced")
    assert src.is_dir(), "deleting a referenced model never deletes the user's directory"
    models.delete("copied")
    assert not Path(copied.path).exists()
    with pytest.raises(anneal.InvalidConfigError) as ei:
        models.register_dir(src, storage="symlink")
    assert ei.value.field == "storage"


def test_register_missing_and_bad_dirs(models, tmp_path):
    with pytest.raises(FileNotFoundError) as ei:
        models.register_dir(tmp_path / "nope")
    assert ei.value.code == "file_not_found" and "nope" in str(ei.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(anneal.AnnealError) as ei:
        models.register_dir(empty)
    assert ei.value.code in {"invalid_data", "file_not_found", "invalid_config"}
    assert "config.json" in str(ei.value) or "empty" in str(ei.value)
    assert models.list() == []


def test_versions_and_resolve(models):
    v1 = models.create_preset("nano", name="toy", seed=1)
    v2 = models.create_preset("nano", name="toy", seed=2)
    v3 = models.create_preset("nano", name="toy", seed=3)
    assert [v1.version, v2.version, v3.version] == [1, 2, 3]
    assert v1.sha256 != v2.sha256
    assert models.resolve(v2.id) == v2
    assert models.resolve("toy") == v3
    assert models.resolve("toy@latest") == v3
    assert models.resolve("toy@1") == v1
    assert models.get(v1.id) == v1
    with pytest.raises(anneal.NotFoundError):
        models.resolve("toy@4")
    with pytest.raises(anneal.NotFoundError):
        models.get("toy")  # get takes an id


def test_aliases_set_move_remove(models):
    v1 = models.create_preset("nano", name="toy", seed=1)
    v2 = models.create_preset("nano", name="toy", seed=2)
    rec = models.set_alias("toy@1", "production")
    assert rec.id == v1.id and rec.aliases == ["production"]
    assert models.resolve("toy@production").id == v1.id
    moved = models.set_alias(v2.id, "production")
    assert moved.aliases == ["production"]
    assert models.resolve("toy@production").id == v2.id
    assert models.get(v1.id).aliases == []
    models.set_alias("toy@1", "candidate")
    assert models.resolve("toy@candidate").id == v1.id
    models.remove_alias("toy", "production")
    with pytest.raises(anneal.NotFoundError):
        models.resolve("toy@production")
    with pytest.raises(anneal.NotFoundError):
        models.remove_alias("toy", "production")
    for bad in ["3", "latest", "bad alias"]:
        with pytest.raises(anneal.InvalidConfigError) as ei:
            models.set_alias("toy", bad)
        assert ei.value.field == "alias"


def test_list_filters(models, fixtures):
    llama = models.register_dir(fixtures / "tiny-llama", tags=["hf"], task="chat")
    gpt2 = models.register_dir(fixtures / "tiny-gpt2", tags=["hf"])
    nano = models.create_preset("nano", tags=["scratch"])
    lora = models.register_dir(fixtures / "tiny-llama-lora", parent=llama.id)

    def ids(**kw):
        return {m.id for m in models.list(**kw)}

    assert ids() == {llama.id, gpt2.id, nano.id, lora.id}
    assert ids(kind="base") == {llama.id, gpt2.id, nano.id}
    assert ids(kind="lora") == {lora.id}
    assert ids(family="gpt2") == {gpt2.id}
    assert ids(family="llama", kind="base") == {llama.id, nano.id}
    assert ids(tag="hf") == {llama.id, gpt2.id}
    assert ids(task="chat") == {llama.id}
    assert ids(name="nano") == {nano.id}
    assert ids(parent=llama.id) == {lora.id}
    assert ids(name="nobody") == set()


def test_delete_refuses_while_adapter_exists(models, fixtures):
    base = models.register_dir(fixtures / "tiny-llama")
    lora = models.register_dir(fixtures / "tiny-llama-lora", parent=base.id)
    with pytest.raises(anneal.InUseError) as ei:
        models.delete("tiny-llama")
    assert ei.value.code == "in_use"
    assert "tiny-llama-lora@1" in str(ei.value)
    assert {m.id for m in models.list()} == {base.id, lora.id}
    models.delete("tiny-llama", force=True)
    assert models.list() == []
    assert not Path(base.path).exists() and not Path(lora.path).exists()


def test_delete_adapter_then_base(models, fixtures):
    base = models.register_dir(fixtures / "tiny-llama")
    models.register_dir(fixtures / "tiny-llama-lora", parent=base.id)
    models.delete("tiny-llama-lora")
    models.delete(base.id)
    assert models.list() == []


def test_presets(models):
    presets = anneal.ModelRegistry.presets()
    assert [p.name for p in presets][:1] == ["nano"]
    nano = presets[0]
    assert isinstance(nano, anneal.Preset)
    assert nano.hidden_size == 64 and nano.num_hidden_layers == 2 and nano.description
    assert nano.to_dict()["name"] == "nano"
    assert models.presets()[0].name == "nano"


def test_create_preset_is_seeded(models):
    a = models.create_preset("nano", name="a", seed=42)
    b = models.create_preset("nano", name="b", seed=42)
    c = models.create_preset("nano", name="c")
    assert a.sha256 == b.sha256 != c.sha256
    assert a.lineage == {"preset": "nano", "seed": 42}
    assert c.lineage["seed"] == 0
    assert a.source == "preset:nano" and a.kind == "base" and a.family == "llama"
    assert a.tokenizer is not None
    assert models.create_preset("nano").name == "nano"


def test_register_refuses_what_could_not_load(models, fixtures, tmp_path):
    kept = models.register_dir(fixtures / "tiny-gpt2")
    models_dir = Path(kept.path).parent
    before = sorted(p.name for p in models_dir.iterdir())

    def bad_copy(fixture, name, config=None):
        d = tmp_path / name
        shutil.copytree(fixtures / fixture, d)
        if config:
            cfg_file = d / ("adapter_config.json" if fixture.endswith("-lora") else "config.json")
            cfg = json.loads(cfg_file.read_text())
            cfg.update(config)
            cfg_file.write_text(json.dumps(cfg))
        return d

    def refused(d, **kw):
        with pytest.raises(anneal.InvalidDataError) as ei:
            models.register_dir(d, **kw)
        return ei.value

    e = refused(bad_copy("tiny-llama", "negative", {"hidden_size": -64}))
    assert (Path(e.file).name, e.field, e.code) == ("config.json", "hidden_size", "invalid_data")
    assert "-64" in e.reason
    e = refused(bad_copy("tiny-llama", "huge", {"max_position_embeddings": 2**40}))
    assert (Path(e.file).name, e.field) == ("config.json", "max_position_embeddings")
    # The config parses but the embedding has 512 rows, not 500.
    e = refused(bad_copy("tiny-llama", "vocab", {"vocab_size": 500}))
    assert (Path(e.file).name, e.field) == ("model.safetensors", "model.embed_tokens.weight")
    assert "vocab_size" in e.reason
    d = bad_copy("tiny-llama", "tokenizer")
    (d / "tokenizer.json").write_text("{")
    e = refused(d)
    assert Path(e.file).name == "tokenizer.json"
    # An adapter whose r disagrees with its tensors.
    base = models.register_dir(fixtures / "tiny-llama")
    e = refused(bad_copy("tiny-llama-lora", "rank", {"r": 8}), parent=base.id)
    assert Path(e.file).name == "adapter_model.safetensors" and e.field.endswith("lora_A.weight")
    assert "r = 8" in e.reason

    assert {m.id for m in models.list()} == {kept.id, base.id}
    assert sorted(p.name for p in models_dir.iterdir()) == sorted(before + [base.id])
