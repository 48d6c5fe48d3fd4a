"""The first hour of a new user: re-running steps on one home, the method given as a
name, messages that say what to do (issue 15, items 2-4)."""

import _thread
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import anneal
from conftest import write_jsonl

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "python" / "quickstart.py"


@pytest.fixture
def env(home):
    records = [{"prompt": f"{i} plus one is", "completion": f" {i + 1}"} for i in range(40)]
    home.datasets().import_records(records, name="qa")
    base = home.models().create_preset("nano", name="base", seed=0)
    spec = {"base": base.id, "dataset": "qa", "method": "full", "max_steps": 3, "seq_len": 16, "batch_size": 4}
    return home, base, spec


def test_the_quickstart_runs_twice_on_one_home(tmp_path):
    home_dir = tmp_path / "home"
    outputs = []
    for _ in range(2):
        run = subprocess.run(
            [sys.executable, str(QUICKSTART), str(home_dir), "--smoke"], capture_output=True, text=True, timeout=300
        )
        assert run.returncode == 0, run.stderr
        outputs.append(run.stdout)
    # The second run reused everything: one version of each model, the same jobs.
    home = anneal.Home.open(home_dir)
    assert sorted((m.name, m.version) for m in home.models().list()) == [
        ("quickstart-double-lora", 1),
        ("quickstart-nano", 1),
        ("quickstart-upper", 1),
    ]
    assert len(home.training().jobs()) == 2
    assert len(home.datasets().list()) == 6  # two imports, two splits of two halves
    registry = [line for line in outputs[0].splitlines() if line.startswith("  quickstart-")]
    assert registry and registry == [line for line in outputs[1].splitlines() if line.startswith("  quickstart-")]


def test_same_file_same_name_is_reused(home, tmp_path):
    path = write_jsonl(tmp_path / "words.jsonl", [{"text": "a"}, {"text": "b"}])
    first = home.datasets().import_file(path, name="words", on_duplicate="reuse")
    again = home.datasets().import_file(path, name="words", on_duplicate="reuse")
    assert again.id == first.id and len(home.datasets().list()) == 1
    with pytest.raises(anneal.DuplicateContentError):
        home.datasets().import_file(path, name="words")


def test_create_preset_if_exists(home):
    models = home.models()
    v1 = models.create_preset("nano", name="m", seed=0, if_exists="reuse")
    assert models.create_preset("nano", name="m", seed=0, if_exists="reuse").id == v1.id
    assert models.create_preset("nano", name="m", seed=1, if_exists="reuse").version == 2
    assert models.create_preset("nano", name="m", seed=0).version == 3  # the default: a new version
    with pytest.raises(anneal.AlreadyExistsError, match="if_exists"):
        models.create_preset("nano", name="m", seed=0, if_exists="error")
    with pytest.raises(anneal.InvalidConfigError, match="new_version"):
        models.create_preset("nano", name="m", if_exists="get")


def test_register_dir_if_exists(home, tmp_path):
    models = home.models()
    source = models.create_preset("nano", name="src", seed=0)
    first = models.register_dir(source.path, name="hf", storage="reference", if_exists="reuse")
    assert models.register_dir(source.path, name="hf", storage="reference", if_exists="reuse").id == first.id
    with pytest.raises(anneal.AlreadyExistsError):
        models.register_dir(source.path, name="hf", storage="reference", if_exists="error")
    assert models.register_dir(source.path, name="hf", storage="reference").version == 2


def test_train_twice_with_reuse_trains_once(env):
    home, _, spec = env
    engine = home.training()
    first = engine.train(spec, if_exists="reuse")
    events = []
    again = engine.train(spec, if_exists="reuse", on_event=events.append)
    assert (again.job_id, again.model_id, again.steps) == (first.job_id, first.model_id, first.steps)
    assert again.final_loss == first.final_loss and events == []
    assert len(engine.jobs()) == 1
    assert engine.create_job(spec, if_exists="reuse").id == first.job_id
    with pytest.raises(anneal.AlreadyExistsError, match=first.job_id):
        engine.create_job(spec, if_exists="error")
    # The default trains again and adds a version.
    other = engine.train(spec)
    assert other.job_id != first.job_id
    assert engine.job(first.job_id).spec["if_exists"] == "reuse"


@pytest.mark.parametrize("method, kind", [("lora", "lora"), ("full", "full")])
def test_method_as_a_plain_name(env, method, kind):
    home, _, spec = env
    report = home.training().train({**spec, "method": method})
    assert home.models().get(report.model_id).kind == kind
    if method == "lora":
        assert home.training().job(report.job_id).spec["method"] == {"lora": anneal_lora_defaults()}


def anneal_lora_defaults():
    return {"r": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": [], "fan_in_fan_out": None, "use_rslora": False}


def test_messages_use_words_not_rust_types(env):
    home, _, spec = env
    for bad, words in [
        ({"epochs": -1}, "expected a whole number from 0 to 4294967295, got -1"),
        ({"epochs": "x"}, 'expected a whole number from 0 to 4294967295, got the string "x"'),
        ({"batch_size": 2.5}, "expected a whole number from 0 to 18446744073709551615, got 2.5"),
        ({"learning_rate": "fast"}, 'expected a number, got the string "fast"'),
    ]:
        with pytest.raises(anneal.InvalidConfigError) as e:
            home.training().create_job({**spec, **bad})
        assert words in str(e.value)
        assert not any(t in str(e.value) for t in ("u32", "u64", "usize", "f64", "variant"))
    with pytest.raises(anneal.InvalidConfigError, match=r"did you mean `seq_len`"):
        home.training().create_job({**spec, "seqLen": 8})


def test_os_errors_name_the_file_and_the_reason(home, tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        home.datasets().import_file(tmp_path / "nope.jsonl")
    assert str(e.value) == f"[Errno 2] No such file or directory: '{tmp_path / 'nope.jsonl'}'"
    assert e.value.strerror == "No such file or directory" and e.value.errno == 2
    with pytest.raises(OSError) as e:
        anneal.Home.open("/dev/null/home")
    assert str(e.value) == "[Errno 20] Not a directory: '/dev/null/home'"
    assert "None" not in str(e.value) and "os error" not in str(e.value)


def test_home_constructor_points_to_open():
    with pytest.raises(TypeError, match=r"anneal\.Home\.open\(path\)"):
        anneal.Home()
    with pytest.raises(TypeError, match=r"Home\.open"):
        anneal.Home("./somewhere")  # type: ignore[call-arg]


def test_ctrl_c_names_the_job_and_how_to_resume(env):
    home, _, spec = env
    engine = home.training()

    def on_event(e):
        if e["type"] == "step" and e["step"] == 1:
            _thread.interrupt_main()

    with pytest.raises(KeyboardInterrupt) as e:
        engine.train({**spec, "max_steps": 30}, on_event=on_event)
    (job,) = engine.jobs()
    message = str(e.value)
    assert job.id in message and f"home.training().resume('{job.id}')" in message, message
    assert "with a checkpoint" in message and "of 30" in message, message
    assert engine.resume(job.id).steps == 30


def test_ctrl_c_while_waiting_stops_the_job_and_names_it(env):
    home, _, spec = env
    engine = home.training()
    job = engine.create_job({**spec, "max_steps": 100000})
    handle = engine.spawn(job.id)
    for event in handle:  # wait until it trains
        if event["type"] == "step":
            break
    timer = threading.Timer(0.2, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt) as e:
            handle.wait()
    finally:
        timer.cancel()
    assert f"home.training().resume('{job.id}')" in str(e.value), str(e.value)
    assert engine.job(job.id).status == "cancelled"


def test_a_cancel_token_names_the_job(env):
    home, _, spec = env
    token = anneal.CancelToken()

    def on_event(e):
        if e["type"] == "step":
            token.cancel()

    with pytest.raises(anneal.CancelledError) as e:
        home.training().train({**spec, "max_steps": 30}, on_event=on_event, cancel=token)
    (job,) = home.training().jobs()
    assert e.value.code == "cancelled" and e.value.job_id == job.id
    assert f"home.training().resume('{job.id}')" in str(e.value)
