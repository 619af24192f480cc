"""Bad input and stress against a real server (tiny llama, -np 1): every refusal is a 4xx in OpenAI's error shape,
never a 500; a client that disconnects frees its slot; a full queue gets 503 + Retry-After; an API key is
enforced; SIGTERM lets a running stream finish and the process exits 0."""

from __future__ import annotations

import http.client
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import TINY_GGUF
from .server_proc import Server, running_server

MODEL = TINY_GGUF / "convert-q8_0.gguf"
KEY = {"Authorization": "Bearer s3cret"}
N_CTX = 2048  # -np 1: the one slot has all of it
NO_EOS = {"2": -100.0}
VALID: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
    "/v1/completions": {"prompt": "hi", "max_tokens": 1},
    "/v1/embeddings": {"input": "hi"},
    "/tokenize": {"content": "hi"},
    "/detokenize": {"tokens": [1, 300]},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Server:
    with running_server(MODEL, "-np", "1", "-c", str(N_CTX), "-t", "1", "--api-key", "s3cret", "--max-queue", "1",
                        log_dir=tmp_path_factory.mktemp("srv")) as s:
        yield s


def assert_error(status: int, body: dict, expected: int) -> None:
    assert status == expected, body
    err = body["error"]
    assert set(err) == {"message", "type", "code"} and err["code"] == expected and err["message"]


def test_api_key(server: Server) -> None:
    status, body, _ = server.post("/v1/completions", VALID["/v1/completions"])
    assert_error(status, body, 401)
    status, body, _ = server.post("/v1/completions", VALID["/v1/completions"], {"Authorization": "Bearer nope"})
    assert_error(status, body, 401)
    assert server.get("/health")[0] == 200  # public, like llama-server's
    assert server.get("/")[0] == 200  # the chat page asks for the key itself
    status, body, _ = server.post("/v1/completions", VALID["/v1/completions"], KEY)
    assert status == 200 and body["usage"]["completion_tokens"] == 1


@pytest.mark.parametrize("raw", [b"{", b"", b"null", b"[1, 2]", b'"text"', b"\xff\xfe", b'{"prompt": "a"]'])
def test_malformed_json_is_400(server: Server, raw: bytes) -> None:
    for path in VALID:
        status, body, _ = server.post(path, raw, KEY)
        assert_error(status, body, 400)


def _wrong_values(schema: dict) -> list[Any]:
    """Values of the wrong JSON type for a property schema (anyOf: wrong for every branch)."""
    types = {s.get("type") for s in schema.get("anyOf", [schema])}
    candidates = {"string": 12345, "integer": "7", "number": "0.5", "boolean": "yes", "array": "x", "object": 5}
    out = [v for t, v in candidates.items() if t in types]
    if "null" not in types:
        out.append(None)
    if not types & {"object", None}:  # None: a $ref (a nested model), which a dict may well satisfy
        out.append({"nested": [1]})
    return [v for v in out if not any(_accepts(t, v) for t in types)]


def _accepts(json_type: str | None, v: Any) -> bool:
    return {"string": isinstance(v, str), "integer": isinstance(v, int) and not isinstance(v, bool),
            "number": isinstance(v, (int, float)) and not isinstance(v, bool), "boolean": isinstance(v, bool),
            "array": isinstance(v, list), "object": isinstance(v, dict), "null": v is None}.get(json_type or "", False)


def test_wrong_types_from_the_openapi_schema_are_400(server: Server) -> None:
    status, raw = server.get("/openapi.json", KEY)
    assert status == 200
    spec = json.loads(raw)
    schemas = spec["components"]["schemas"]
    checked = 0
    for path, body in VALID.items():
        ref = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        props = schemas[ref.rsplit("/", 1)[1]]["properties"]
        assert set(body) <= set(props)
        for name, prop in props.items():
            for value in _wrong_values(prop):
                status, resp, _ = server.post(path, {**body, name: value}, KEY)
                assert status == 400, (path, name, value, resp)
                assert_error(status, resp, 400)
                checked += 1
    assert checked > 60
    assert server.alive()


def test_unknown_fields_are_ignored(server: Server) -> None:
    status, body, _ = server.post("/v1/completions", {**VALID["/v1/completions"], "frobnicate": {"x": 1},
                                                       "best_of": 3}, KEY)
    assert status == 200 and body["object"] == "text_completion"


@pytest.mark.parametrize("path,body,words", [
    ("/v1/completions", {"prompt": "word " * 3000}, "context"),
    ("/v1/completions", {"prompt": [5, 99999]}, "outside the vocabulary"),
    ("/v1/completions", {"prompt": "hi", "n": 2}, "n"),
    ("/v1/completions", {"prompt": "hi", "temperature": -1}, "temperature"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": -5}, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "logit_bias": {"abc": 1}}, "logit_bias"),
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"messages": [{"content": "no role"}]}, "role"),
    ("/detokenize", {"tokens": [-1]}, "out of range"),
    ("/v1/embeddings", {"input": []}, "empty"),
])
def test_bad_values_are_400_saying_why(server: Server, path: str, body: dict, words: str) -> None:
    status, resp, _ = server.post(path, body, KEY)
    assert_error(status, resp, 400)
    assert words in resp["error"]["message"]


def test_unknown_route_and_method(server: Server) -> None:
    status, raw = server.get("/v1/nothing", KEY)
    assert_error(status, json.loads(raw), 404)
    status, raw = server.get("/v1/completions", KEY)
    assert_error(status, json.loads(raw), 405)


def test_max_tokens_beyond_the_context_is_clipped(server: Server) -> None:
    status, body, _ = server.post("/v1/completions", {"prompt": "word " * 200, "max_tokens": 100000,
                                                       "temperature": 0, "logit_bias": NO_EOS}, KEY)
    assert status == 200
    u = body["usage"]
    assert body["choices"][0]["finish_reason"] == "length"
    assert u["prompt_tokens"] + u["completion_tokens"] == N_CTX


def _open_stream(server: Server, max_tokens: int) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    body = {"prompt": "tell me", "max_tokens": max_tokens, "stream": True, "temperature": 0, "logit_bias": NO_EOS}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json", **KEY})
    return conn, conn.getresponse()


def _wait(server: Server, cond: Any, what: str, timeout: float = 60.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        m = server.metrics(KEY)
        if cond(m):
            return m
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {m}"
        time.sleep(0.1)


def test_queue_overflow_503_and_disconnect_frees_the_slot(server: Server) -> None:
    base = server.metrics(KEY)
    a_conn, a = _open_stream(server, N_CTX)  # runs in the slot
    assert a.status == 200 and a.readline().startswith(b"data: ")
    host, port = server.url.removeprefix("http://").split(":")
    b_conn = http.client.HTTPConnection(host, int(port), timeout=120)
    b_conn.request("POST", "/v1/completions", json.dumps({"prompt": "queued", "max_tokens": N_CTX, "stream": True,
                                                          "logit_bias": NO_EOS}),
                   {"Content-Type": "application/json", **KEY})
    _wait(server, lambda m: m["queue_depth"] == 1, "the second request to queue")
    status, body, headers = server.post("/v1/completions", {"prompt": "one too many", "max_tokens": 4}, KEY)
    assert_error(status, body, 503)
    assert headers.get("retry-after") == "1"
    a_conn.close()  # the first client goes away: its slot goes to the queued request
    _wait(server, lambda m: m["requests_cancelled_total"] >= base["requests_cancelled_total"] + 1
          and m["queue_depth"] == 0, "the first stream to be cancelled")
    b = b_conn.getresponse()
    assert b.status == 200 and b.readline().startswith(b"data: ")
    b_conn.close()
    m = _wait(server, lambda m: m["requests_processing"] == 0, "the second stream to be cancelled")
    assert m["requests_rejected_total"] == base["requests_rejected_total"] + 1
    generated = m["tokens_generated_total"]
    time.sleep(1.0)
    assert server.metrics(KEY)["tokens_generated_total"] == generated  # nothing generates for the gone clients
    status, body, _ = server.post("/v1/completions", {"prompt": "still alive", "max_tokens": 2}, KEY)
    assert status == 200


def test_sigterm_finishes_the_running_stream(tmp_path: Path) -> None:
    with running_server(MODEL, "-np", "1", "-c", "512", "-t", "1", log_dir=tmp_path) as server:
        host, port = server.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        conn.request("POST", "/v1/completions", json.dumps({"prompt": "go", "max_tokens": 60, "stream": True,
                                                            "temperature": 0, "logit_bias": NO_EOS}),
                     {"Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.readline().startswith(b"data: ")
        server.proc.send_signal(signal.SIGTERM)
        rest = r.read().decode()
        assert rest.rstrip().endswith("data: [DONE]")
        assert '"finish_reason": "length"' in rest
        assert server.proc.wait(60) == 0
        assert "stopped" in server.log.read_text()


def test_disconnect_without_streaming_frees_the_slot(server: Server) -> None:
    base = server.metrics(KEY)
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    conn.request("POST", "/v1/completions", json.dumps({"prompt": "long answer", "max_tokens": N_CTX,
                                                        "logit_bias": NO_EOS}), {"Content-Type": "application/json",
                                                                                 **KEY})
    _wait(server, lambda m: m["requests_processing"] == 1, "the request to start")
    conn.close()
    m = _wait(server, lambda m: m["requests_processing"] == 0, "the abandoned request to be cancelled")
    assert m["requests_cancelled_total"] == base["requests_cancelled_total"] + 1
    assert m["tokens_generated_total"] - base["tokens_generated_total"] < N_CTX - 10
