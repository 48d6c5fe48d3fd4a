"""`anneal serve` called by the official `openai` client, unchanged.

Starts the `anneal` binary (``ANNEAL_BIN``, which scripts/test-python.sh sets after
building it with cargo; else the debug build under target/) on a fresh home on a
free loopback port, with a token made by ``anneal tokens create``, and a tiny random
model created over the REST API. Needs nothing from the `anneal` Python module.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")

ROOT = Path(__file__).resolve().parents[2]


def anneal_bin():
    env = os.environ.get("ANNEAL_BIN")
    if env:
        assert Path(env).is_file(), f"ANNEAL_BIN={env} does not exist"
        return env
    for target in ("x86_64-unknown-linux-gnu/debug", "debug"):
        p = ROOT / "target" / target / "anneal"
        if p.is_file():
            return str(p)
    pytest.skip("no anneal binary (cargo build -p anneal-cli, or set ANNEAL_BIN)")


@pytest.fixture
def server(tmp_path):
    exe = anneal_bin()
    env = dict(os.environ, ANNEAL_HOME=str(tmp_path / "home"))
    token = subprocess.run(
        [exe, "tokens", "create", "--scope", "write", "--name", "pytest"],
        env=env, check=True, capture_output=True, text=True,
    ).stdout.strip()
    proc = subprocess.Popen(
        [exe, "serve", "--port", "0", "--max-generations", "2", "--no-request-log"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline()
    assert "listening on http://" in line, line + proc.stderr.read()
    url = line.split("listening on ")[1].split()[0]
    req = urllib.request.Request(
        url + "/api/models",
        data=json.dumps({"preset": "nano", "name": "tiny"}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req) as r:
        assert r.status == 201
    yield url, token, proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def client(url, token):
    return openai.OpenAI(base_url=url + "/v1", api_key=token, max_retries=0, timeout=60)


def test_models_chat_and_completions_with_the_openai_client(server):
    url, token, _ = server
    c = client(url, token)
    assert [m.id for m in c.models.list()] == ["tiny@1"]

    chat = c.chat.completions.create(
        model="tiny@1",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
        max_tokens=6,
        temperature=0,
    )
    assert chat.object == "chat.completion"
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].finish_reason in ("stop", "length")
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens
    assert chat.usage.completion_tokens <= 6

    stream = c.chat.completions.create(
        model="tiny", messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
        max_tokens=6, temperature=0, stream=True, stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for ch in chunk.choices:
            pieces.append(ch.delta.content or "")
            finish = ch.finish_reason or finish
    assert "".join(pieces) == chat.choices[0].message.content  # greedy: the same text
    assert finish == chat.choices[0].finish_reason
    assert usage.completion_tokens == chat.usage.completion_tokens

    done = c.completions.create(model="tiny", prompt="once upon a time", max_tokens=5, temperature=0)
    assert done.object == "text_completion"
    streamed = "".join(
        ch.choices[0].text for ch in c.completions.create(
            model="tiny", prompt="once upon a time", max_tokens=5, temperature=0, stream=True)
        if ch.choices
    )
    assert streamed == done.choices[0].text

    # anneal's own settings pass through extra_body.
    seeded = [
        c.completions.create(model="tiny", prompt="abc", max_tokens=8, temperature=1.0, seed=3,
                             extra_body={"top_k": 20}).choices[0].text
        for _ in range(2)
    ]
    assert seeded[0] == seeded[1]


def test_errors_are_openai_errors(server):
    url, token, _ = server
    with pytest.raises(openai.NotFoundError) as e:
        client(url, token).chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert "no-such-model" in str(e.value)
    with pytest.raises(openai.AuthenticationError):
        client(url, "tok_0000000000000000." + "0" * 64).models.list()
    with pytest.raises(openai.BadRequestError) as e:
        client(url, token).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "x"}], n=3)
    assert "n" in str(e.value)


def test_sigterm_shuts_down_cleanly(server):
    url, token, proc = server
    c = client(url, token)
    results = []
    t = threading.Thread(target=lambda: results.append(
        c.completions.create(model="tiny", prompt="x", max_tokens=3).choices[0].text))
    t.start()
    t.join(60)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    assert len(results) == 1
    with pytest.raises(openai.APIConnectionError):
        c.models.list()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
