"""Server throughput: one stream vs 4 concurrent streams against `llamakit serve -np 4` (loopback only), and the
same against llama-cpp-python's server (`python -m llama_cpp.server --interrupt_requests False`: one request
at a time; by default a new request cuts the running stream short) in the same run.

    python scripts/bench_server.py [-m MODEL ...] [-n 32] [--streams 4] [--rounds 1] [-t THREADS]

Default models: SmolLM2-135M-Instruct Q4_1 and, if present, /tmp/lkbench/tinyllama-1.1b-q4_0.gguf (a
TinyLlama-1.1B-shaped random model: `python scripts/make_shape_model.py --shape tinyllama-1.1b --type q4_0`, from
branch `bench`). Each stream generates exactly -n tokens (EOS banned with logit_bias, temperature 0). Prints per
model and server: one stream's tokens/s, the aggregate tokens/s of the concurrent streams, their ratio, and the
median time to first token under load. Requests are bounded: (1 + streams) x rounds per server. Never asserts.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eos_id(model: Path) -> int:
    from llamakit.gguf import GGUFReader

    r = GGUFReader(model)
    try:
        return int(r.metadata.get("tokenizer.ggml.eos_token_id", 2))
    finally:
        r.close()


def wait_up(port: int, proc: subprocess.Popen, path: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server did not start")


def one_stream(port: int, n: int, eos: int, prompt: str) -> tuple[float, float, int]:
    """(seconds to the first event, total seconds, tokens generated) of one streamed completion. A stream counts
    its n tokens only when it ends with finish_reason "length" (EOS is banned, so it ran to max_tokens); one that a
    server cut short counts its events, so a refused or interrupted request cannot inflate the aggregate. No
    logprobs are asked for: llama-cpp-python computes them in Python and runs 6x slower with them."""
    body = {"prompt": prompt, "max_tokens": n, "temperature": 0, "stream": True, "logit_bias": {str(eos): -100}}
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=1800)
    c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:200]!r}")
    ttft, events, finish = None, 0, None
    for line in r:
        if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
            continue
        if ttft is None:
            ttft = time.perf_counter() - t0
        for ch in json.loads(line[6:]).get("choices", []):
            finish = ch.get("finish_reason") or finish
            events += ch.get("finish_reason") is None  # the closing event carries no token
    return ttft or float("nan"), time.perf_counter() - t0, n if finish == "length" else events


def measure(port: int, n: int, streams: int, rounds: int, eos: int) -> dict[str, float]:
    one_stream(port, 4, eos, "warm up")
    single, agg, ttfts = [], [], []
    for r in range(rounds):
        _, dt, k = one_stream(port, n, eos, f"Round {r}: once upon a time")
        single.append(k / dt)
        if k != n:
            print(f"  warning: round {r}: the single stream got {k} tokens, expected {n}")
        results: list[tuple[float, float, int]] = []
        threads = [threading.Thread(target=lambda i=i: results.append(
            one_stream(port, n, eos, f"Stream {i} of round {r}: once upon a time"))) for i in range(streams)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        agg.append(sum(k for _, _, k in results) / (time.perf_counter() - t0))
        if len(results) != streams or any(k != n for _, _, k in results):
            print(f"  warning: round {r}: tokens per stream {[k for _, _, k in results]}, expected {n}")
        ttfts += [t for t, _, _ in results]
    s, a = statistics.median(single), statistics.median(agg)
    return {"single": s, "aggregate": a, "ratio": a / s, "ttft": statistics.median(ttfts)}


def run_server(cmd: list[str], port: int, health: str, args: argparse.Namespace, eos: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        wait_up(port, proc, health)
        return measure(port, args.n, args.streams, args.rounds, eos)
    except Exception:
        log.seek(0)
        print(f"server {cmd[2]} failed; the last of its output:\n{log.read()[-3000:].decode(errors='replace')}")
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", type=Path, action="append", default=[])
    ap.add_argument("-n", type=int, default=32, help="tokens per stream")
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("-t", "--threads", type=int, default=None)
    args = ap.parse_args()
    models = args.model
    if not models:
        from llamakit.runtime.default_model import default_model_path

        models = [default_model_path()]
        shaped = Path("/tmp/lkbench/tinyllama-1.1b-q4_0.gguf")
        if shaped.exists():
            models.append(shaped)
        else:
            print(f"(no {shaped}: make it with scripts/make_shape_model.py --shape tinyllama-1.1b --type q4_0)")
    have_lcpp = all(importlib.util.find_spec(m) for m in ("llama_cpp", "sse_starlette", "starlette_context",
                                                          "pydantic_settings"))
    if not have_lcpp:
        print("llama-cpp-python's server: skipped (pip install 'llama-cpp-python[server]' to compare)")
    threads = [] if args.threads is None else ["-t", str(args.threads)]
    print(f"{args.streams} streams x {args.n} tokens, {args.rounds} round(s); timings on a shared machine are noisy")
    print("| model | server | 1 stream t/s | aggregate t/s | ratio | TTFT under load (s) |")
    print("|---|---|---:|---:|---:|---:|")
    for model in models:
        eos = eos_id(model)
        port = free_port()
        cmd = [sys.executable, "-m", "llamakit.cli", "serve", "-m", str(model), "--port", str(port),
               "-np", str(args.streams), "-c", str(args.streams * 512), *threads]
        rows = [("llamakit -np %d" % args.streams, run_server(cmd, port, "/health", args, eos))]
        if have_lcpp:
            port = free_port()
            cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--port", str(port),
                   "--n_ctx", "512", "--interrupt_requests", "False",
                   *(["--n_threads", str(args.threads)] if args.threads else [])]
            rows.append(("llama-cpp-python", run_server(cmd, port, "/v1/models", args, eos)))
        for name, r in rows:
            print(f"| {model.name} | {name} | {r['single']:.2f} | {r['aggregate']:.2f} | {r['ratio']:.2f}x | "
                  f"{r['ttft']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
