"""The `anneal` console script: the command line of the core, run in this process."""

import json
import sys

import pytest

import anneal
from anneal import _cli


def run(monkeypatch, argv):
    monkeypatch.setattr(sys, "argv", ["anneal", *argv])
    with pytest.raises(SystemExit) as exit:
        _cli.main()
    return exit.value.code


def test_help_exits_0_with_examples(monkeypatch, capfd):
    assert run(monkeypatch, ["--help"]) == 0
    out = capfd.readouterr().out
    assert "Examples:" in out and "anneal train" in out


def test_datasets_ls_json_sees_what_python_imported(monkeypatch, capfd, tmp_path):
    home_dir = tmp_path / "home"
    assert run(monkeypatch, ["--home", str(home_dir), "datasets", "ls", "--json"]) == 0
    assert json.loads(capfd.readouterr().out) == []
    data = tmp_path / "t.jsonl"
    data.write_text('{"text": "hello"}\n{"text": "world"}\n')
    anneal.Home.open(home_dir).datasets().import_file(data, name="greetings")
    monkeypatch.setenv("ANNEAL_HOME", str(home_dir))
    assert run(monkeypatch, ["datasets", "ls", "--json"]) == 0
    listed = json.loads(capfd.readouterr().out)
    assert [(d["name"], d["num_records"]) for d in listed] == [("greetings", 2)]


def test_errors_exit_with_their_code(monkeypatch, capfd, tmp_path):
    code = anneal._anneal.cli_main(["--home", str(tmp_path / "home"), "models", "show", "nope"])
    assert code == 5
    assert "error[not_found]" in capfd.readouterr().err
