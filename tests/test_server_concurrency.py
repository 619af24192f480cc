"""Continuous batching: 8 clients x 5 requests against -np 4 all succeed, every answer at temperature 0 equals
the same request's answer when it runs alone, and /metrics shows fewer forward passes than generated tokens
(several slots decoded by one decode_batch call). The tiny reference llama: the text itself does not matter."""

from __future__ import annotations

import json
import threading
import urllib.request

import pytest

from .conftest import TINY_GGUF
from .server_proc import Server, running_server

MODEL = TINY_GGUF / "convert-q8_0.gguf"
NO_EOS = {"2": -100.0}  # the tiny model's EOS id: keep answers at max_tokens so they are worth comparing


def _stream(server: Server, i: int, j: int) -> tuple[str, str]:
    """Client i's request j, streamed; returns (text, finish_reason)."""
    if (i + j) % 2:
        path, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": f"question {i} {j}"}]}
    else:
        path, body = "/v1/completions", {"prompt": f"Once upon a time {i} and {j} said"}
    body.update(temperature=0, max_tokens=10 + (i * 5 + j) % 7, stream=True, logit_bias=NO_EOS)
    req = urllib.request.Request(server.url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    text, finish, done = [], None, False
    with urllib.request.urlopen(req, timeout=300) as r:
        for line in r:
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            data = line[6:]
            if data == b"[DONE]":
                done = True
                break
            c = json.loads(data)["choices"][0]
            text.append(c["delta"].get("content") or "" if "delta" in c else c["text"])
            finish = c["finish_reason"] or finish
    assert done, "the stream did not end with data: [DONE]"
    return "".join(text), finish


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Server:
    with running_server(MODEL, "-np", "4", "-c", "4096", "-t", "1", log_dir=tmp_path_factory.mktemp("srv")) as s:
        yield s


def test_eight_clients_four_slots(server: Server) -> None:
    alone = {(i, j): _stream(server, i, j) for i in range(8) for j in range(5)}  # one at a time
    before = server.metrics()
    results: dict[tuple[int, int], tuple[str, str]] = {}
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            for j in range(5):
                results[i, j] = _stream(server, i, j)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, errors
    assert results == alone
    assert all(f == "length" for _, f in results.values())
    after = server.metrics()
    generated = after["tokens_generated_total"] - before["tokens_generated_total"]
    passes = after["forward_passes_total"] - before["forward_passes_total"]
    assert generated == sum(10 + (i * 5 + j) % 7 for i in range(8) for j in range(5))
    assert passes < generated  # several slots per decode_batch call
    assert after["max_batch_sequences"] >= 2
    assert after["requests_rejected_total"] == 0  # 8 clients fit in 4 slots + a queue of 16
    assert after["queue_depth"] == 0 and after["requests_processing"] == 0


def test_long_prompt_is_chunked_between_decode_steps(server: Server) -> None:
    """A prompt of several hundred tokens is read 128 tokens per step while another stream keeps decoding."""
    long_prompt = " ".join(["word"] * 300)
    out: dict[str, tuple[str, str]] = {}

    def long() -> None:
        status, body, _ = server.post("/v1/completions", {"prompt": long_prompt, "temperature": 0,
                                                           "max_tokens": 2})
        out["long"] = (str(status), body["choices"][0]["finish_reason"])
        out["n"] = body["usage"]["prompt_tokens"]

    before = server.metrics()
    t = threading.Thread(target=long)
    t.start()
    out["short"] = _stream(server, 99, 0)
    t.join(300)
    after = server.metrics()
    assert out["long"] == ("200", "length")
    assert out["short"][1] == "length"
    assert 128 * 3 < out["n"] < 1000
    assert after["forward_passes_total"] - before["forward_passes_total"] >= out["n"] // 128


def test_chat_logprobs_and_seed(server: Server) -> None:
    body = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": [
        {"type": "text", "text": "hi"}]}], "max_tokens": 5, "temperature": 0, "logprobs": True, "top_logprobs": 2,
        "logit_bias": NO_EOS}
    status, r, _ = server.post("/v1/chat/completions", body)
    assert status == 200
    content = r["choices"][0]["logprobs"]["content"]
    assert len(content) == r["usage"]["completion_tokens"] == 5
    for entry in content:
        top = entry["top_logprobs"]
        assert len(top) == 2 and top[0]["logprob"] >= top[1]["logprob"]
        assert (top[0]["token"], top[0]["logprob"]) == (entry["token"], entry["logprob"])  # greedy: the best
        assert all(isinstance(b, int) and 0 <= b < 256 for b in entry["bytes"])
    seeded = {"prompt": [1, 50, 60], "max_tokens": 8, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0,
              "logit_bias": NO_EOS}
    texts = [server.post("/v1/completions", {**seeded, "seed": s})[1]["choices"][0]["text"] for s in (42, 42, 7)]
    assert texts[0] == texts[1]
    assert texts[0] != texts[2]  # 8 draws from the full distribution of a random model: different seeds differ
