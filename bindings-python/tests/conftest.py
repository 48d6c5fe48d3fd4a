import json
import os
import threading
import time
from pathlib import Path

import pytest

import anneal

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"


@pytest.fixture
def home(tmp_path):
    return anneal.Home.open(tmp_path / "home")


@pytest.fixture
def ds(home):
    return home.datasets()


@pytest.fixture
def models(home):
    return home.models()


@pytest.fixture
def fixtures():
    assert FIXTURES.is_dir(), FIXTURES
    return FIXTURES


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def dataset_dirs(home):
    """Entries under <home>/datasets, ignoring interrupted-import leftovers (.tmp-*)."""
    root = Path(home.root) / "datasets"
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".tmp-"))


def all_dataset_entries(home):
    root = Path(home.root) / "datasets"
    return sorted(p.name for p in root.iterdir())


class Unchanged:
    """Asserts that a failed import left the catalog and datasets/ as they were."""

    def __init__(self, home):
        self.home = home
        self.before = [r.id for r in home.datasets().list()]
        self.dirs = dataset_dirs(home)

    def check(self):
        assert [r.id for r in self.home.datasets().list()] == self.before
        assert dataset_dirs(self.home) == self.dirs
        # Staging directories of failed imports are removed right away.
        assert not [n for n in all_dataset_entries(self.home) if n.startswith(".tmp-")]


@pytest.fixture
def unchanged(home):
    def make():
        return Unchanged(home)

    return make


def big_jsonl(path, megabytes=30):
    """A JSONL file of about `megabytes` MB of completion records."""
    line = json.dumps({"prompt": "p" * 200, "completion": "c" * 800}) + "\n"
    n = megabytes * 1024 * 1024 // len(line)
    with open(path, "w", encoding="utf-8") as f:
        chunk = line * 1000
        for _ in range(n // 1000):
            f.write(chunk)
    return path


@pytest.fixture(scope="session")
def big_file(tmp_path_factory):
    return big_jsonl(tmp_path_factory.mktemp("big") / "big.jsonl")


os.environ.setdefault("PYTHONHASHSEED", "0")


def ticks_during(fn, period=0.002):
    """Runs fn() while another thread ticks every `period` s; returns (seconds fn took,
    ticks counted meanwhile). With the GIL held during fn no tick can happen."""
    ticks, stop = [], threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(period)

    t = threading.Thread(target=ticker)
    t.start()
    # The ticker is running before fn starts (on a busy machine a new thread can
    # take longer to be scheduled than a short fn lasts).
    while not ticks:
        time.sleep(0.0005)
    t0 = time.monotonic()
    try:
        fn()
    finally:
        t1 = time.monotonic()
        stop.set()
        t.join()
    return t1 - t0, sum(t0 < x < t1 for x in ticks)
