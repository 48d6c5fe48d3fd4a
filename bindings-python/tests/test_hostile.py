"""The shared bad-input corpus (tests/fixtures/hostile/cases.json) through the Python binding.

Each case: a fresh home, its setup, one call with hostile input; the exception must be
the class of the expected code, name the field / file / record (as attributes and in
its message), and leave the home as it was. The format is in the corpus's README.md;
`ANNEAL_HOSTILE_PENDING=1` runs the cases marked pending as expected failures.
"""

import json
import os
import shutil
import struct
from pathlib import Path

import pytest

import anneal

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
CORPUS = FIXTURES / "hostile"
CASES = json.loads((CORPUS / "cases.json").read_text(encoding="utf-8"))["cases"]
LANG = "python"
RUN_PENDING = os.environ.get("ANNEAL_HOSTILE_PENDING") == "1"

CLASSES = {
    "invalid_config": anneal.InvalidConfigError,
    "invalid_data": anneal.InvalidDataError,
    "not_found": anneal.NotFoundError,
    "already_exists": anneal.AlreadyExistsError,
    "duplicate_content": anneal.DuplicateContentError,
    "in_use": anneal.InUseError,
    "file_not_found": anneal.AnnealFileNotFoundError,
    "io": anneal.AnnealIOError,
    "cancelled": anneal.CancelledError,
    "storage": anneal.StorageError,
    "compute": anneal.ComputeError,
    "internal": anneal.InternalError,
}


def pending_reason(case):
    p = case.get("pending")
    return p.get(LANG) if isinstance(p, dict) else p


def params():
    out = []
    for case in CASES:
        marks = []
        only = case.get("only")
        if only and LANG not in only:
            marks.append(pytest.mark.skip(reason=f"only for {only}"))
        reason = pending_reason(case)
        if reason:
            if RUN_PENDING:
                marks.append(pytest.mark.xfail(reason=f"pending: {reason}", strict=False))
            else:
                marks.append(pytest.mark.skip(reason=f"pending: {reason}"))
        out.append(pytest.param(case, id=case["id"], marks=marks))
    return out


def native(v):
    """The manifest's JSON with its `$special` values made real Python values."""
    if isinstance(v, dict):
        special = v.get("$special")
        if special == "nan":
            return float("nan")
        if special == "inf":
            return float("inf")
        if special == "lone_surrogate":
            return "\ud800"
        if special == "bigint":
            return int(v["value"])
        if special == "nested":
            x = []
            for _ in range(v["depth"] - 1):
                x = [x]
            return x
        if special == "repeat":
            return v["text"] * (v["bytes"] // len(v["text"]))
        assert special is None, special
        out = {k: native(x) for k, x in v.items() if k != "$key_special"}
        if v.get("$key_special") == "lone_surrogate":
            out["\ud800"] = "x"
        return out
    if isinstance(v, list):
        return [native(x) for x in v]
    return v


def setup(home, steps):
    for step in steps or []:
        name = step.get("name")
        if "preset" in step:
            home.models().create_preset(step["preset"], name=name, seed=0)
        elif "register" in step:
            home.models().register_dir(FIXTURES / step["register"], name=name, parent=step.get("parent"))
        elif "records" in step:
            home.datasets().import_records(step["records"], name=name)
        elif "import" in step:
            home.datasets().import_file(CORPUS / step["import"], name=name)
        else:
            raise AssertionError(f"unknown setup step {step}")


def input_path(work, spec):
    if isinstance(spec, str):
        return str(CORPUS / spec)
    kind, name = spec["generate"], spec["name"]
    p = os.path.join(str(work), name)
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "directory":
        os.mkdir(p)
    elif kind == "nested":
        nest = "[" * spec["depth"] + "]" * spec["depth"]
        text = f"[{nest}]" if name.endswith(".json") else '{"text": "a", "x": ' + nest + "}\n"
        Path(p).write_text(text)
    elif kind == "big_line":
        n = spec["bytes"]
        text = "a" * n + "\n" if name.endswith(".txt") else '{"text": "' + "a" * n + '"}\n'
        Path(p).write_text(text)
    else:
        assert kind in ("missing", "nul_path"), kind
    return p


def mutate_safetensors(path, op):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header, body = data[8 : 8 + n], data[8 + n :]

    def with_header(h):
        return struct.pack("<Q", len(h)) + h + body

    if "truncate" in op:
        out = data[: op["truncate"]]
    elif "header_len" in op:
        out = struct.pack("<Q", op["header_len"]) + data[8:]
    elif "header_text" in op:
        out = with_header(op["header_text"].encode())
    elif "edit" in op:
        h = json.loads(header)
        entry = h[op["edit"]["tensor"]]
        entry.update({k: v for k, v in op["edit"].items() if k != "tensor"})
        out = with_header(json.dumps(h).encode())
    else:
        raise AssertionError(f"unknown safetensors op {op}")
    path.write_bytes(out)


def input_dir(work, spec):
    kind = spec.get("generate")
    if kind:
        p = work / "model"
        if kind == "file":
            p.write_text("not a directory")
        elif kind == "empty_dir":
            p.mkdir()
        elif kind == "nul_path":
            return str(work) + "/mo\0del"
        return str(p)
    d = work / spec["from"]
    shutil.copytree(FIXTURES / spec["from"], d)
    for file, fields in spec.get("set", {}).items():
        v = json.loads((d / file).read_text())
        v.update(fields)
        (d / file).write_text(json.dumps(v, indent=2))
    for file, text in spec.get("write", {}).items():
        (d / file).write_text(text)
    for file, op in spec.get("safetensors", {}).items():
        mutate_safetensors(d / file, op)
    for file, src in spec.get("copy", {}).items():
        shutil.copy(CORPUS / src, d / file)
    for file in spec.get("delete", []):
        (d / file).unlink()
    return str(d)


def call(home, work, case):
    """Runs the case's call; returns what the `ok` expectations look at."""
    opts = native(case.get("options") or {})
    kind = case["call"]
    if kind == "import_file":
        rec = home.datasets().import_file(input_path(work, case["path"]), **opts)
        return {"num_records": rec.num_records, "format": rec.format}
    if kind == "import_records":
        rec = home.datasets().import_records(native(case["records"]), **opts)
        return {"num_records": rec.num_records, "format": rec.format}
    if kind == "register_dir":
        rec = home.models().register_dir(input_dir(work, case["dir"]), **opts)
        return {"kind": rec.kind}
    if kind == "create_job":
        job = home.training().create_job(native(case["spec"]))
        return {"status": job.status}
    if kind in ("generator", "generate"):
        gen = home.generator(case["model"], **opts)
        if kind == "generator":
            return {}
        out = gen.generate(native(case["prompt"]), **native(case.get("config") or {}))
        return {"generated_tokens": out.generated_tokens, "finish_reason": out.finish_reason}
    raise AssertionError(f"unknown call {kind}")


def entries(p):
    return sorted(os.listdir(p)) if os.path.isdir(p) else []


def snapshot(home):
    m = home.models()
    return {
        "datasets": [d.id for d in home.datasets().list()],
        "models": [r.id for r in m.list()],
        "jobs": [j.id for j in home.training().jobs()],
        "generations": len(m.generations()),
        "dataset_dirs": entries(os.path.join(home.root, "datasets")),
        "model_dirs": entries(os.path.join(home.root, "models")),
    }


def check_error(e, expect):
    msg = str(e)
    code = expect["code"]
    assert isinstance(e, anneal.AnnealError), f"not an AnnealError: {type(e).__name__}: {msg}"
    assert e.code == code, f"expected {code}, got {e.code}: {msg}"
    assert isinstance(e, CLASSES[code]), type(e)
    if "field" in expect:
        assert getattr(e, "field", None) == expect["field"], f"field {getattr(e, 'field', None)!r}: {msg}"
        assert f"`{expect['field']}`" in msg, msg
    if "file" in expect:
        named = getattr(e, "file", None) if code == "invalid_data" else getattr(e, "filename", None)
        assert named and os.path.basename(named) == expect["file"], f"file {named!r}: {msg}"
        assert expect["file"] in msg, msg
    if "record" in expect:
        assert e.record == expect["record"], f"record {e.record!r}: {msg}"
        assert f"record {expect['record']}" in msg, msg
    for part in expect.get("message", []):
        assert part in msg, f"{part!r} not in: {msg}"


@pytest.mark.parametrize("case", params())
def test_hostile(case, tmp_path):
    home = anneal.Home.open(tmp_path / "home")
    work = tmp_path / "work"
    work.mkdir()
    setup(home, case.get("setup"))
    before = snapshot(home)
    expect = case.get("expect_python", case["expect"])
    if "ok" in expect:
        got = call(home, work, case)
        for k, want in expect["ok"].items():
            if k == "max_generated_tokens":
                assert got["generated_tokens"] <= want, got
            else:
                assert got[k] == want, (k, got)
        return
    with pytest.raises(Exception) as ei:
        call(home, work, case)
    if "exception" in expect:
        # Python's own exception (a misspelt keyword argument is a TypeError naming it).
        assert type(ei.value).__name__ == expect["exception"], repr(ei.value)
        for part in expect.get("message", []):
            assert part in str(ei.value), str(ei.value)
    else:
        check_error(ei.value, expect)
    assert snapshot(home) == before, "a refused call changed the home"


def test_every_code_has_a_class():
    codes = {c["expect"]["code"] for c in CASES if "code" in c["expect"]}
    assert codes <= set(CLASSES), codes - set(CLASSES)

