import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import anneal


def test_open_creates_and_reopens(tmp_path):
    home = anneal.Home.open(tmp_path / "h")
    root = Path(home.root)
    assert root.is_absolute() and (root / "anneal.db").exists()
    for sub in ["datasets", "models", "jobs"]:
        assert (root / sub).is_dir()
    assert home.schema_version() == anneal.Home.supported_schema_version() >= 1
    assert repr(home).startswith("Home(")
    home.datasets().import_records([{"text": "a"}], name="kept")
    again = anneal.Home.open(str(tmp_path / "h"))
    assert [d.name for d in again.datasets().list()] == ["kept"]
    assert isinstance(home.datasets(), anneal.DatasetStore)
    assert isinstance(home.models(), anneal.ModelRegistry)


def test_open_migrates_an_empty_catalog(tmp_path):
    d = tmp_path / "old"
    d.mkdir()
    sqlite3.connect(d / "anneal.db").close()  # version 0: an empty catalog
    home = anneal.Home.open(d)
    assert home.schema_version() == anneal.Home.supported_schema_version()
    home.models().create_preset("nano")


def test_newer_schema_is_refused_and_left_untouched(tmp_path):
    d = tmp_path / "h"
    anneal.Home.open(d).datasets().import_records([{"text": "a"}], name="x")
    con = sqlite3.connect(d / "anneal.db")
    con.execute("PRAGMA user_version = 99")
    con.commit()
    con.close()
    with pytest.raises(anneal.IncompatibleHomeError) as ei:
        anneal.Home.open(d)
    e = ei.value
    assert e.code == "incompatible_home"
    assert (e.found, e.supported) == (99, anneal.Home.supported_schema_version())
    assert "99" in str(e) and str(d.name) in str(e)
    con = sqlite3.connect(d / "anneal.db")
    assert con.execute("PRAGMA user_version").fetchone()[0] == 99
    con.close()


def test_home_path_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(anneal.InvalidConfigError) as ei:
        anneal.Home.open(f)
    assert ei.value.field == "home"


CHILD = textwrap.dedent(
    """
    import sys, time, anneal
    home = anneal.Home.open(sys.argv[1])
    ds, models = home.datasets(), home.models()
    print("ready", flush=True)
    sys.stdin.readline()  # go
    t0 = time.time()
    for i in range(N):
        ds.import_records([{"text": f"child {i}"}], name=f"child-{i}")
        if i % 10 == 0:
            models.create_preset("nano", name="child-model", seed=i)
            models.create_preset("nano", name="shared-model", seed=i)
    print(t0, time.time(), flush=True)
    """
)

N = 30


def test_two_processes_share_one_home(tmp_path):
    d = tmp_path / "shared"
    anneal.Home.open(d)
    child = subprocess.Popen(
        [sys.executable, "-c", f"N = {N}\n" + CHILD, str(d)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    home = anneal.Home.open(d)
    ds, models = home.datasets(), home.models()
    assert child.stdout.readline().strip() == "ready", child.stderr.read()
    child.stdin.write("go\n")
    child.stdin.flush()
    t0 = time.time()
    for i in range(N):
        ds.import_records([{"text": f"parent {i}"}], name=f"parent-{i}")
        if i % 10 == 0:
            models.create_preset("nano", name="parent-model", seed=i)
            models.create_preset("nano", name="shared-model", seed=i)
    t1 = time.time()
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    c0, c1 = map(float, out.split())
    assert c0 < t1 and t0 < c1, "the two processes did not overlap"
    names = {r.name for r in ds.list()}
    assert names == {f"parent-{i}" for i in range(N)} | {f"child-{i}" for i in range(N)}
    assert [m.version for m in models.list(name="child-model")] == [1, 2, 3]
    assert [m.version for m in models.list(name="parent-model")] == [1, 2, 3]
    # Versions of one name written from both processes at once stay unique.
    assert [m.version for m in models.list(name="shared-model")] == [1, 2, 3, 4, 5, 6]
    # The other process's data is readable here.
    assert ds.preview("child-7") == [{"text": "child 7"}]


def test_os_errors_read_like_pythons(tmp_path):
    with pytest.raises(anneal.AnnealError) as ei:
        anneal.Home.open(str(tmp_path / "x\0y"))
    assert "Errno None" not in str(ei.value) and "None:" not in str(ei.value), str(ei.value)
    assert ei.value.code in ("io", "invalid_config"), ei.value.code


def test_memory_limit_is_an_option_and_refuses_requests_above_it(tmp_path):
    home = anneal.Home.open(tmp_path / "a")
    assert home.memory_limit > 0
    assert anneal.Home.open(tmp_path / "b", memory_limit=1 << 30).memory_limit == 1 << 30
    with pytest.raises(anneal.InvalidConfigError) as e:
        anneal.Home.open(tmp_path / "c", memory_limit=0)
    assert e.value.field == "memory_limit"
    with pytest.raises(anneal.InvalidConfigError) as e:
        anneal.Home.open(tmp_path / "d", memory_limit=-1)
    assert e.value.field == "memory_limit"
    small = anneal.Home.open(tmp_path / "e", memory_limit=1000)
    m = small.models().create_preset("nano")
    with pytest.raises(anneal.InvalidConfigError) as e:
        small.generator(m.id)
    assert e.value.field == "model" and "memory limit of 1000 B" in str(e.value)
