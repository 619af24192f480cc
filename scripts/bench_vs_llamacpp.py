"""llamakit's engine against llama.cpp (llama-cpp-python) on the same GGUFs, threads and tests, interleaved.

    python scripts/bench_vs_llamacpp.py MODEL.gguf [MODEL.gguf ...] [-t 1 -t 2] [--test pp128 --test tg64]
        [-r 3] [--n-ctx N] [--json OUT.json] [--llamakit-only]

Defaults: threads 1 and 2, tests pp128, pp512, tg64, 3 repetitions. Random-weight models of real shapes come
from scripts/make_shape_model.py (/tmp/lkbench/tinyllama-1.1b-q4_0.gguf, ...).

Every measurement runs in a fresh subprocess (`--worker`), so the two engines never share threads, caches or
allocator state: it loads the model, runs the test once untimed (warmup; tg: 8 tokens), clears the cache and
times one run. The sides alternate (llamakit, llama.cpp, llamakit, llama.cpp, ...) so that a change in the
machine's load hits both. Tests follow llama-bench: ppN decodes N random tokens (BOS first) from an empty
cache in n_batch pieces; tgN decodes N single tokens (BOS first) from an empty cache. Both sides get the same
tokens, n_ctx (default: the test's tokens rounded up to 256), n_batch 2048, n_ubatch 512 and thread count;
llama.cpp keeps its default KV type (f16) and llama-cpp-python's default flash_attn=False; llamakit keeps its
Context defaults (whatever the engine does today: this script measures Context.decode, so it needs no change
when the engine gets faster). Printed: median t/s with min-max over the repetitions, and
ratio = llamakit median / llama.cpp median.

llama-cpp-python is a benchmark-only dependency: it is imported only inside the llama.cpp worker; when it is
missing, llamakit's numbers are printed alone. Numbers from a shared machine are noisy: compare runs taken
together, never across days.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import inspect
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
N_BATCH, N_UBATCH = 2048, 512
DEFAULT_TESTS = ["pp128", "pp512", "tg64"]
WARMUP_TG = 8


# -- the workers (one measurement per process) -------------------------------------------------------------

def parse_test(test: str) -> tuple[str, int]:
    m = re.fullmatch(r"(pp|tg)(\d+)", test)
    if not m or int(m.group(2)) < 1:
        raise SystemExit(f"bad test {test!r}: use ppN (prompt processing) or tgN (generation), e.g. pp512, tg64")
    return m.group(1), int(m.group(2))


def test_tokens(kind: str, n: int, n_vocab: int, bos: int | None, seed: int) -> list[int]:
    rng = random.Random(seed)
    toks = [rng.randrange(n_vocab) for _ in range(n)]
    if bos is not None:
        toks[0] = bos
    return toks


def run_test(decode: Any, clear: Any, kind: str, toks: list[int]) -> float:
    """Warm up untimed, clear, then one timed run; returns seconds. decode(list) appends tokens to the cache."""
    def once(tokens: list[int]) -> float:
        clear()
        t0 = time.perf_counter()
        if kind == "pp":
            for s in range(0, len(tokens), N_BATCH):
                decode(tokens[s:s + N_BATCH])
        else:
            for t in tokens:
                decode([t])
        return time.perf_counter() - t0

    once(toks if kind == "pp" else toks[:WARMUP_TG])
    return once(toks)


def llamakit_context(path: str, n_ctx: int, threads: int) -> tuple[Any, Any, dict[str, Any]]:
    """Load the model and make a Context with `threads` threads: the one place that knows how llamakit takes a
    thread count. A `threads=`/`n_threads=` argument of Context or load_model wins when the runtime has one;
    otherwise torch's intra-op pool and, when present, the native kernel library's pool are set."""
    import torch

    from llamakit.runtime.generate import Context
    from llamakit.runtime.loader import load_model

    try:
        from llamakit.runtime.memory import tune_malloc
        tune_malloc()
    except ImportError:
        pass
    how = []
    torch.set_num_threads(threads)
    how.append("torch.set_num_threads")
    for module in ("llamakit.kernels.native", "llamakit.kernels"):  # the native library's pool, if it has a setter
        try:
            mod = importlib.import_module(module)
            fn = next(f for f in (getattr(mod, n, None) for n in ("set_threads", "set_num_threads")) if callable(f))
        except (ImportError, AttributeError, StopIteration):
            continue
        fn(threads)
        how.append(f"{module}.{fn.__name__}")
        break

    def thread_kw(fn: Any) -> dict[str, int]:
        params = inspect.signature(fn).parameters
        for name in ("n_threads", "threads"):
            if name in params:
                how.append(f"{fn.__qualname__}({name}=)")
                return {name: threads}
        return {}

    lm = load_model(path, **thread_kw(load_model))
    ctx = Context(lm, n_ctx, n_batch=N_BATCH, n_ubatch=N_UBATCH, **thread_kw(Context))
    cache = getattr(ctx, "cache", None)
    info = {"threads_via": how, "kv_dtype": str(getattr(cache, "dtype", "?")).replace("torch.", "")}
    return lm, ctx, info


def worker_llamakit(job: dict[str, Any]) -> dict[str, Any]:
    lm, ctx, info = llamakit_context(job["model"], job["n_ctx"], job["threads"])
    with lm:
        md = lm.metadata
        bos = md.get("tokenizer.ggml.bos_token_id")
        toks = test_tokens(job["kind"], job["n"], lm.config.n_vocab, bos, job["seed"])

        def clear() -> None:
            ctx.clear()

        secs = run_test(lambda t: ctx.decode(t), clear, job["kind"], toks)
    return {"seconds": secs, **info}


def worker_llamacpp(job: dict[str, Any]) -> dict[str, Any]:
    import llama_cpp
    from llama_cpp import Llama

    t = job["threads"]
    llm = Llama(job["model"], n_ctx=job["n_ctx"], n_batch=N_BATCH, n_ubatch=N_UBATCH, n_threads=t,
                n_threads_batch=t, verbose=False)
    toks = test_tokens(job["kind"], job["n"], llm.n_vocab(), llm.token_bos(), job["seed"])
    # Llama.eval drops the cache from n_tokens on before decoding, so reset() empties it
    secs = run_test(llm.eval, llm.reset, job["kind"], toks)
    return {"seconds": secs, "version": llama_cpp.__version__}


def worker_main(side: str) -> None:
    job = json.loads(sys.stdin.read())
    out = worker_llamakit(job) if side == "llamakit" else worker_llamacpp(job)
    print("RESULT " + json.dumps(out), flush=True)


# -- the driver ---------------------------------------------------------------------------------------------

def llama_cpp_available() -> str | None:
    """llama-cpp-python's version when importable (checked in a subprocess: its import loads libllama)."""
    p = subprocess.run([sys.executable, "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                       capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else None


def measure(side: str, job: dict[str, Any], timeout: float) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    try:
        p = subprocess.run([sys.executable, __file__, "--worker", side], input=json.dumps(job), env=env,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[7:])
            res["tps"] = job["n"] / res["seconds"]
            return res
    tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {p.returncode}: {tail}"}


def model_label(path: Path) -> tuple[str, str]:
    """(model, type) for the table: from general.name / file type when the file is readable, else the file name."""
    sys.path.insert(0, str(ROOT))
    try:
        from llamakit.gguf import GGUFReader
        from llamakit.gguf.constants import file_type_name
        with GGUFReader(path) as r:
            ft = r.metadata.get("general.file_type")
            ftype = file_type_name(ft) if ft is not None else "?"
    except Exception:  # the label is cosmetic; a broken file shows up as a worker error
        ftype = "?"
    stem = path.name.removesuffix(".gguf")
    return stem, ftype


def summary(rates: list[float]) -> dict[str, float] | None:
    if not rates:
        return None
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}


def fmt(s: dict[str, float] | None) -> str:
    if s is None:
        return "-"
    return f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})"


def table(rows: list[dict[str, Any]], with_cpp: bool) -> list[str]:
    cols = ["model", "type", "threads", "test", "llamakit t/s"] + (["llama.cpp t/s", "ratio"] if with_cpp else [])
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---:" if c not in ("model", "type") else "---"
                                                           for c in cols) + "|"]
    for r in rows:
        cells = [r["model"], r["type"], str(r["threads"]), r["test"], fmt(r["llamakit"])]
        if with_cpp:
            lk, lc = r["llamakit"], r["llama.cpp"]
            ratio = f"{lk['median'] / lc['median']:.2f}" if lk and lc else "-"
            cells += [fmt(lc), ratio]
        out.append("| " + " | ".join(cells) + " |")
    return out


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("-t", "--threads", type=int, action="append", help="repeatable; default 1 and 2")
    ap.add_argument("--test", action="append", help=f"repeatable: ppN or tgN; default {' '.join(DEFAULT_TESTS)}")
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("--n-ctx", type=int, default=0, help="context size for both (default: test tokens rounded up "
                                                         "to 256)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per measurement")
    ap.add_argument("--json", type=Path, metavar="OUT", help="also write every measurement here")
    ap.add_argument("--llamakit-only", action="store_true")
    a = ap.parse_args()
    threads = a.threads or [1, 2]
    tests = [parse_test(t) for t in (a.test or DEFAULT_TESTS)]
    for m in a.models:
        if not m.is_file():
            raise SystemExit(f"{m}: no such file (make shape models with scripts/make_shape_model.py)")

    cpp_version = None if a.llamakit_only else llama_cpp_available()
    if not a.llamakit_only and cpp_version is None:
        print("llama-cpp-python is not importable (pip install llama-cpp-python): llamakit's numbers alone")
    sides = ["llamakit"] + (["llama.cpp"] if cpp_version else [])
    started = datetime.datetime.now(datetime.timezone.utc)
    rows: list[dict[str, Any]] = []
    try:
        for path in a.models:
            name, ftype = model_label(path)
            for t in threads:
                for kind, n in tests:
                    n_ctx = a.n_ctx or -(-n // 256) * 256
                    job = {"model": str(path), "threads": t, "kind": kind, "n": n, "n_ctx": n_ctx, "seed": a.seed}
                    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
                    rows.append({"model": name, "type": ftype, "threads": t, "test": f"{kind}{n}", "n_ctx": n_ctx,
                                 "runs": runs})
                    for rep in range(a.reps):
                        for side in sides:  # interleaved: A B A B ...
                            res = measure(side if side == "llamakit" else "llamacpp", job, a.timeout)
                            runs[side].append(res)
                            msg = f"{res['tps']:.2f} t/s" if "tps" in res else res["error"]
                            print(f"  {name} t={t} {kind}{n} rep {rep + 1}/{a.reps} {side}: {msg}",
                                  file=sys.stderr, flush=True)
    except KeyboardInterrupt:  # Ctrl-C: report what was measured so far
        print("interrupted: the table holds the measurements finished so far", file=sys.stderr)
    for row in rows:
        row.update({s: summary([r["tps"] for r in row["runs"][s] if "tps" in r]) for s in sides})
    print(f"\n{started:%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs, "
          f"llama-cpp-python {cpp_version or 'not measured'}; t/s median (min-max) of {a.reps}, "
          "ratio = llamakit / llama.cpp\n")
    print("\n".join(table(rows, cpp_version is not None)))
    errors = [(r["model"], r["test"], s, x["error"]) for r in rows for s in sides for x in r["runs"][s] if "error" in x]
    for e in errors:
        print(f"failed: {e[0]} {e[1]} {e[2]}: {e[3]}")
    if a.json:
        a.json.write_text(json.dumps({"date": started.isoformat(), "host": platform.node(), "cpus": os.cpu_count(),
                                      "llama_cpp_python": cpp_version, "reps": a.reps, "n_batch": N_BATCH,
                                      "n_ubatch": N_UBATCH, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
