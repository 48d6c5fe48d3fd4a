"""Curves where people look: TensorBoard event files and MLflow runs read back with
tensorboard's and mlflow's own readers, `plot()` PNGs, and the `progress=True` display
(plain lines without a TTY, one bar on a terminal, one text output in Jupyter)."""

import io
import struct
import sys
import types
import zlib

import pytest

import anneal
from anneal import _progress


@pytest.fixture
def env(home):
    """A nano base model and a 40-record completion dataset; 8 steps with 2 evals."""
    base = home.models().create_preset("nano", seed=0)
    records = [{"prompt": f"{i} plus one is", "completion": f" {i + 1}"} for i in range(40)]
    home.datasets().import_records(records, name="qa")

    class Env:
        pass

    e = Env()
    e.home, e.base, e.engine = home, base, home.training()
    e.spec = {"base": base.id, "dataset": "qa", "method": "full", "max_steps": 8, "seq_len": 32, "batch_size": 4,
              "learning_rate": 3e-3, "eval_fraction": 0.2, "eval_every": 4}
    return e


def train_losses(engine, job_id):
    return [(m.step, m.loss) for m in engine.metrics(job_id) if m.kind == "train"]


# ---------------------------------------------------------------- TensorBoard


def test_tensorboard_event_files_read_back_with_tensorboard(env, tmp_path):
    ea_mod = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    runs = tmp_path / "runs"
    report = env.engine.train(env.spec, tensorboard=runs)
    run_dir = runs / report.job_id
    files = list(run_dir.iterdir())
    assert len(files) == 1 and files[0].name.startswith("events.out.tfevents.")
    acc = ea_mod.EventAccumulator(str(run_dir))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/learning_rate", "train/tokens_per_s", "eval/loss", "eval/perplexity"} <= tags
    loss = acc.Scalars("train/loss")
    expected = train_losses(env.engine, report.job_id)
    assert [s.step for s in loss] == [step for step, _ in expected] == list(range(1, 9))
    assert [s.value for s in loss] == pytest.approx([v for _, v in expected], rel=1e-6)
    assert [s.step for s in acc.Scalars("eval/loss")] == [4, 8]
    assert acc.Scalars("eval/loss")[-1].value == pytest.approx(report.eval_loss, rel=1e-6)
    # A second job is a second run beside the first.
    second = env.engine.train({**env.spec, "max_steps": 2}, tensorboard=str(runs))
    assert sorted(p.name for p in runs.iterdir()) == sorted([report.job_id, second.job_id])


# ---------------------------------------------------------------- MLflow


@pytest.fixture
def mlflow_client(monkeypatch):
    pytest.importorskip("mlflow")
    # MLflow 3 keeps the file store behind this switch (it is in maintenance mode).
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    return lambda root: MlflowClient(tracking_uri=root.as_uri())


def test_mlflow_file_store_read_back_with_mlflow(env, tmp_path, mlflow_client):
    mlruns = tmp_path / "mlruns"
    report = env.engine.train(env.spec, mlflow=str(mlruns))
    client = mlflow_client(mlruns)
    runs = client.search_runs(["0"])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == report.job_id
    assert run.info.end_time >= run.info.start_time
    assert run.data.params["max_steps"] == "8" and run.data.params["method"] == "full"
    assert run.data.params["learning_rate"] == "0.003" and run.data.params["base"] == env.base.id
    assert run.data.tags["anneal.job_id"] == report.job_id and run.data.tags["anneal.model_id"] == report.model_id
    history = client.get_metric_history(run.info.run_id, "train/loss")
    expected = train_losses(env.engine, report.job_id)
    # Rust writes the shortest text that reads back as the same double.
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == expected
    assert run.data.metrics["train/loss"] == pytest.approx(report.final_loss)
    assert run.data.metrics["eval/loss"] == pytest.approx(report.eval_loss)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/loss")] == [4, 8]


def test_mlflow_named_experiment_and_a_cancelled_run_is_killed(env, tmp_path, mlflow_client):
    mlruns = tmp_path / "mlruns"
    token = anneal.CancelToken()

    def stop_after_two(event):
        if event["type"] == "step" and event["step"] >= 2:
            token.cancel()

    with pytest.raises(anneal.CancelledError):
        env.engine.train(env.spec, mlflow=mlruns, mlflow_experiment="adder", cancel=token, on_event=stop_after_two)
    client = mlflow_client(mlruns)
    exp = client.get_experiment_by_name("adder")
    assert exp is not None
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "KILLED"
    # Resuming logs a second run of the same job, which finishes.
    job_id = run.data.tags["anneal.job_id"]
    env.engine.resume(job_id, mlflow=mlruns, mlflow_experiment="adder")
    statuses = sorted(r.info.status for r in client.search_runs([exp.experiment_id]))
    assert statuses == ["FINISHED", "KILLED"]


def test_bad_curve_options_fail_before_a_job_is_created(env):
    with pytest.raises(anneal.InvalidConfigError, match="`mlflow`"):
        env.engine.train(env.spec, mlflow="s3://bucket/runs")
    with pytest.raises(anneal.InvalidConfigError, match="`tensorboard`"):
        env.engine.train(env.spec, tensorboard=3)
    with pytest.raises(anneal.InvalidConfigError, match="`mlflow_experiment`"):
        env.engine.train(env.spec, mlflow_experiment="x")
    assert env.engine.jobs() == []
    job = env.engine.create_job(env.spec)
    with pytest.raises(anneal.InvalidConfigError, match="`tensorboard`"):
        env.engine.run(job.id, tensorboard="")
    assert env.engine.job(job.id).status == "pending"


# ---------------------------------------------------------------- plot


def decode_png(data):
    """(width, height, rows of RGB triples) of an 8-bit RGB, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color, _, _, interlace = header
    assert (depth, color, interlace) == (8, 2, 0), header
    raw, stride, rows, prev = zlib.decompress(idat), width * 3, [], bytearray(width * 3)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - 3] if i >= 3 else 0
            b, c = prev[i], prev[i - 3] if i >= 3 else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append([tuple(line[x * 3:x * 3 + 3]) for x in range(width)])
        prev = line
    return width, height, rows


BLUE, ORANGE, WHITE = (31, 119, 180), (255, 127, 14), (255, 255, 255)


def test_plot_is_a_png_of_the_loss_curves(env, tmp_path):
    report = env.engine.train(env.spec)
    png = env.engine.plot(report.job_id, width=480, height=320)
    assert isinstance(png, anneal.PngBytes) and isinstance(png, bytes)
    assert png._repr_png_() == bytes(png)  # what Jupyter displays
    width, height, rows = decode_png(png)
    assert (width, height) == (480, 320)
    pixels = [p for row in rows for p in row]
    assert pixels.count(BLUE) > 100, "the train loss line"
    assert pixels.count(ORANGE) > 20, "the eval loss points"
    assert pixels.count(WHITE) < len(pixels) * 0.97, "not blank"
    out = tmp_path / "loss.png"
    written = env.engine.plot(report.job_id, out)
    assert out.read_bytes() == written and decode_png(written)[:2] == (1200, 700)
    with pytest.raises(anneal.InvalidConfigError, match="`width`"):
        env.engine.plot(report.job_id, width=5)
    with pytest.raises(anneal.NotFoundError):
        env.engine.plot("job_nope")


def test_job_handle_plot(env):
    job = env.engine.create_job(env.spec)
    handle = env.engine.spawn(job.id)
    handle.wait()
    width, height, rows = decode_png(handle.plot(width=320, height=240, title="adder"))
    assert (width, height) == (320, 240)
    assert sum(row.count(BLUE) for row in rows) > 50


# ---------------------------------------------------------------- progress


def test_progress_without_a_tty_prints_plain_lines(env, capsys, monkeypatch):
    monkeypatch.setattr(_progress, "LINE_INTERVAL", 3600.0)
    report = env.engine.train(env.spec, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    # The start, the two evals, the end: no step lines within the interval.
    assert len(lines) == 4, lines
    assert lines[0] == f"{report.job_id}: started, 8 steps"
    assert "eval @ step 4" in lines[1] and "eval @ step 8" in lines[2]
    assert lines[-1].startswith(f"{report.job_id} completed: 8/8 steps, loss {report.final_loss:.4f}")
    assert f"eval loss {report.eval_loss:.4f}" in lines[-1] and report.model_id in lines[-1]


def test_progress_lines_come_every_interval(env, capsys, monkeypatch):
    monkeypatch.setattr(_progress, "LINE_INTERVAL", 0.0)
    events = []
    env.engine.train(env.spec, progress=True, on_event=events.append)
    lines = capsys.readouterr().err.splitlines()
    steps = [e for e in events if e["type"] == "step"]
    step_lines = [ln for ln in lines if ": step " in ln]
    assert len(step_lines) == len(steps) and step_lines[-1].split(": step ")[1].startswith("8/8, loss ")


class FakeTty(io.StringIO):
    def isatty(self):
        return True


def test_progress_on_a_terminal_is_one_bar_ending_with_the_loss(env, monkeypatch):
    pytest.importorskip("tqdm")
    tty = FakeTty()
    monkeypatch.setattr(sys, "stderr", tty)
    report = env.engine.train(env.spec, progress=True)
    out = tty.getvalue()
    final = out.split("\r")[-1]
    assert "8/8" in final and f"loss {report.final_loss:.4f}" in final and "completed]" in final
    assert out.count(report.job_id) >= 1 and "\n" not in out.rstrip("\n")  # one bar, one line


def test_progress_without_tqdm_falls_back_to_lines(env, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    tty = FakeTty()
    monkeypatch.setattr(sys, "stderr", tty)
    report = env.engine.train(env.spec, progress=True)
    assert tty.getvalue().splitlines()[-1].startswith(f"{report.job_id} completed")


def test_progress_in_jupyter_without_ipywidgets_is_one_output_updated_in_place(env, monkeypatch):
    shown = []

    class Handle:
        def __init__(self):
            self.updates = []

        def update(self, obj):
            self.updates.append(obj.data)

    class Pretty:
        def __init__(self, data):
            self.data = data

    def display(obj, display_id=False):
        assert display_id is True
        shown.append(Handle())
        return shown[-1]

    ipython = types.ModuleType("IPython")
    ipython.display = types.ModuleType("IPython.display")
    ipython.display.Pretty, ipython.display.display = Pretty, display
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", ipython.display)
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    monkeypatch.setattr(_progress, "_in_notebook", lambda: True)
    report = env.engine.train(env.spec, progress=True)
    assert len(shown) == 1, "one output per job"
    updates = shown[0].updates
    assert len(updates) <= 5, updates  # start, evals, end (steps at most every 2 s)
    assert updates[-1].startswith(f"{report.job_id} completed: 8/8 steps, loss {report.final_loss:.4f}")
