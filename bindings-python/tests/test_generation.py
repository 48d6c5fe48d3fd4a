"""Generator from Python: parity with transformers' greedy tokens, streaming, seeds, stop
strings, batches, scoring, typed errors, usage records, adapters, and the GIL."""

import _thread
import json
import math
import threading
import time

import pytest

import anneal
from conftest import ticks_during


def reference(fixtures, name):
    return json.loads((fixtures / name / "reference.json").read_text())


@pytest.fixture
def nano(home):
    rec = home.models().create_preset("nano", seed=0)
    return home.generator(rec.id)


@pytest.fixture
def llama_and_lora(models, fixtures):
    base = models.register_dir(fixtures / "tiny-llama")
    lora = models.register_dir(fixtures / "tiny-llama-lora", parent=base.id)
    return base, lora


def check_parity(gen, fixtures, name, **kw):
    r = reference(fixtures, name)
    want = r["greedy_new_tokens"]
    out = gen.generate(r["input_ids"], max_new_tokens=len(want), ignore_eos=True, **kw)
    assert out.token_ids == want, name
    assert (out.generated_tokens, out.finish_reason) == (len(want), "length")
    assert out.prompt_tokens == len(r["input_ids"])


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-qwen2"])
def test_greedy_matches_transformers(home, models, fixtures, name):
    rec = models.register_dir(fixtures / name)
    gen = home.generator(rec.id)
    check_parity(gen, fixtures, name)
    assert gen.model == rec and gen.base_model == rec
    assert isinstance(gen, anneal.Generator)


def test_adapter_merged_unmerged_and_per_request(home, models, fixtures, llama_and_lora):
    base, lora = llama_and_lora
    check_parity(home.generator(lora.id), fixtures, "tiny-llama-lora")
    separate = anneal.Generator.load(models, lora.id, merge_adapter=False)
    check_parity(separate, fixtures, "tiny-llama-lora")
    assert [a.id for a in separate.adapters()] == [lora.id]
    assert separate.base_model.id == base.id

    on_base = home.generator(base.id)
    assert on_base.add_adapter(lora.id).id == lora.id
    check_parity(on_base, fixtures, "tiny-llama-lora", adapter=lora.reference())
    check_parity(on_base, fixtures, "tiny-llama")
    with pytest.raises(anneal.InvalidConfigError) as ei:
        home.generator(lora.id).add_adapter(lora.id)
    assert ei.value.code == "invalid_config"


def test_stream_chunks_add_up_to_generate(nano):
    whole = nano.generate("hello world", max_new_tokens=40, ignore_eos=True)
    stream = nano.stream("hello world", max_new_tokens=40, ignore_eos=True)
    assert isinstance(stream, anneal.TokenStream) and stream.generation is None
    chunks = list(stream)
    assert all(isinstance(c, anneal.StreamChunk) and c.token_ids for c in chunks)
    assert "".join(c.text for c in chunks) == whole.text
    assert [t for c in chunks for t in c.token_ids] == whole.token_ids
    g = stream.generation
    assert g.text == whole.text and g.token_ids == whole.token_ids and len(g.token_ids) == 40
    with pytest.raises(StopIteration):
        next(stream)


def test_stream_can_be_consumed_from_another_thread(nano):
    stream = nano.stream("abc", max_new_tokens=10, ignore_eos=True)
    out = []
    t = threading.Thread(target=lambda: out.extend(c.text for c in stream))
    t.start()
    t.join()
    assert "".join(out) == stream.generation.text


def test_seeds_repeat_and_filters_apply(nano):
    def sampled(seed, **kw):
        return nano.generate("abc", temperature=1.0, seed=seed, max_new_tokens=30, ignore_eos=True, **kw)

    a = sampled(1)
    assert a.seed == 1 and a.token_ids == sampled(1).token_ids
    assert a.token_ids != sampled(2).token_ids
    greedy = nano.generate("abc", max_new_tokens=30, ignore_eos=True)
    assert greedy.seed is None
    assert sampled(3, top_k=1).token_ids == greedy.token_ids
    assert sampled(4, top_p=1e-9).token_ids == greedy.token_ids
    assert sampled(5, min_p=0.999999).token_ids == greedy.token_ids
    r = nano.generate("abc", temperature=1.0, max_new_tokens=30, ignore_eos=True)
    assert sampled(r.seed).token_ids == r.token_ids


def test_stop_strings_end_the_text(nano):
    full = nano.generate("the cat", max_new_tokens=60, ignore_eos=True)
    assert len(full.text) > 12
    stop = full.text[8:11]
    out = nano.generate("the cat", max_new_tokens=60, ignore_eos=True, stop=stop)  # a str is one stop
    assert (out.finish_reason, out.stop_sequence) == ("stop", stop)
    assert out.text == full.text[: full.text.find(stop)]
    streamed = "".join(c.text for c in nano.stream("the cat", max_new_tokens=60, ignore_eos=True, stop=[stop]))
    assert streamed == out.text


def test_batch_rows_equal_single_generations(nano):
    prompts = ["a", "the quick brown fox", [104, 105], [{"role": "user", "content": "hi"}]]
    batch = nano.generate_batch(prompts, max_new_tokens=16, ignore_eos=True)
    assert len(batch) == len(prompts)
    for p, b in zip(prompts, batch):
        one = nano.generate(p, max_new_tokens=16, ignore_eos=True)
        assert (b.token_ids, b.text) == (one.token_ids, one.text)


def test_score(nano):
    s = nano.score(["hello world", "abc"])
    assert len(s) == 2 and all(isinstance(x, anneal.Score) for x in s)
    assert all(math.isfinite(x.loss) and abs(x.perplexity - math.exp(x.loss)) < 1e-9 for x in s)
    assert s[1].tokens == 2  # byte tokens: 3 bytes, 2 predicted


def test_errors_are_typed_and_raised_before_any_work(home, models, nano):
    with pytest.raises(anneal.NotFoundError):
        home.generator("no-such-model")
    with pytest.raises(anneal.InvalidConfigError, match="prompt"):
        nano.generate([65] * (nano.context_length + 1))
    bad = [
        dict(temperature=-1.0),
        dict(top_p=0.0),
        dict(min_p=1.0),
        dict(repetition_penalty=0.0),
        dict(max_new_tokens=0),
        dict(stop=[""]),
    ]
    for kw in bad:
        with pytest.raises(anneal.InvalidConfigError) as ei:
            nano.generate("hi", **kw)
        assert ei.value.code == "invalid_config"
        assert next(iter(kw)) in str(ei.value)
    with pytest.raises(anneal.InvalidConfigError, match="prompt"):
        nano.generate(3.5)
    with pytest.raises(anneal.InvalidConfigError, match="prompts\\[1\\]"):
        nano.generate_batch(["ok", ""])
    with pytest.raises(TypeError):
        nano.generate("hi", temprature=1.0)
    with pytest.raises(anneal.InvalidConfigError, match="quantize"):
        home.generator(nano.model.id, quantize="q4")
    assert models.generations() == []


def test_every_call_is_recorded(models, nano):
    ref = nano.model.id
    g = nano.generate("a", max_new_tokens=5, ignore_eos=True, temperature=0.7, seed=9)
    list(nano.stream("b", max_new_tokens=4, ignore_eos=True))
    nano.generate_batch(["c", "dd"], max_new_tokens=3, ignore_eos=True)
    nano.score(["some text"])
    rows = models.generations(model=ref)
    assert [r.kind for r in rows] == ["score", "batch", "stream", "generate"]
    assert rows[3].id == g.id and rows[3].params["seed"] == 9 and rows[3].finish_reason == "length"
    assert isinstance(rows[3], anneal.GenerationRecord)
    u = models.usage(ref)
    assert isinstance(u, anneal.ModelUsage)
    assert (u.calls, u.generations, u.generated_tokens) == (4, 4, 5 + 4 + 6)
    assert len(models.generations(kind="batch", limit=5)) == 1
    assert g.timings.ttft_ms > 0 and g.timings.total_ms >= g.timings.ttft_ms
    assert g.to_dict()["timings"]["ttft_ms"] == g.timings.ttft_ms


def test_defaults_and_quantized_weights(home, fixtures, models):
    rec = models.register_dir(fixtures / "tiny-llama")
    gen = home.generator(rec.id, quantize="q8_0", record=False)
    d = gen.defaults()
    assert d["temperature"] == 0.0 and d["max_new_tokens"] == 256
    assert gen.generate([5, 6, 7], max_new_tokens=4, ignore_eos=True).id is None
    f32 = home.generator(rec.id).score(["the cat sat on the mat"])[0].loss
    q8 = gen.score(["the cat sat on the mat"])[0].loss
    assert abs(f32 - q8) < 0.02 * f32


def test_generate_releases_the_gil(home):
    rec = home.models().create_preset("mini", seed=0)
    gen = home.generator(rec.id, record=False)
    took, ticks = ticks_during(lambda: gen.generate_batch(["abc"] * 8, max_new_tokens=200, ignore_eos=True))
    assert took > 0.05, "the generation must take a while for this test to mean anything"
    assert ticks >= 5


def test_generate_reports_a_task_and_stops_on_cancel_or_ctrl_c(home):
    rec = home.models().create_preset("mini", seed=0)
    gen = home.generator(rec.id)
    events = []
    out = gen.generate("abc", max_new_tokens=5, ignore_eos=True, on_event=events.append)
    assert events[0]["type"] == "task_started" and events[0]["task"] == "generate"
    assert events[0]["total"] == 5 and events[0]["unit"] == "tokens"
    assert events[-1] == {"type": "task_finished", "task": "generate", "status": "completed", "id": out.id}

    token = anneal.CancelToken()
    token.cancel()
    with pytest.raises(anneal.CancelledError):
        gen.generate("abc", max_new_tokens=50, cancel=token)
    with pytest.raises(anneal.CancelledError):
        gen.generate_batch(["a", "b"], max_new_tokens=50, cancel=token)

    # Ctrl-C during a long batch: KeyboardInterrupt soon after, not at the end.
    timer = threading.Timer(0.2, _thread.interrupt_main)
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        gen.generate_batch(["abc"] * 8, max_new_tokens=5000, ignore_eos=True)
    assert time.monotonic() - t0 < 5
    # And during one long call without on_event (it asks for no progress events, so the
    # signals are checked while it runs instead).
    timer = threading.Timer(0.2, _thread.interrupt_main)
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        gen.generate("abc", max_new_tokens=5000, ignore_eos=True)
    assert time.monotonic() - t0 < 5
    calls = home.models().usage(rec.id).calls
    assert calls == 1, "cancelled generations are not recorded"
