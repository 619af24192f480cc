"""Generation speed of the decode paths, torch.compile included: does compiling the torch code buy what the
native fused blocks do?

    python scripts/bench_compile.py [MODEL.gguf ...] [-t 1 -t 2] [-p 8] [-n 32] [-r 3]
                                    [--mode default --mode max-autotune-no-cudagraphs] [--whole]

Configurations, all on `Context.decode` of one token at a time (tg) after a p-token prompt:
    torch eager           backend "torch" (int4pack / dequantizing torch kernels), fused=False
    torch compile <mode>  the same model with every Block.forward wrapped in torch.compile(mode=<mode>) for
                          single-token steps (the prompt stays eager: a T=4 then T=1 pair of calls would make
                          the token count symbolic, and then SDPA's `is_causal` is a SymBool and dynamo gives
                          up on the whole block). The growing KV length becomes dynamic on the second step
                          (automatic dynamic shapes): one static graph, one dynamic one, shared by all blocks.
    torch compile(model)  --whole: Llama.forward compiled as one graph (all blocks unrolled; slow to compile)
    native                backend "auto" (native matmuls per linear), fused=False
    native fused          the default Context: one native call per block

The engine is not changed: the wrapping is done here on the loaded instances. Each (model, thread count) runs
in a fresh subprocess (inductor bakes the thread count into the code it generates); inside it, the
configurations alternate within every repetition. Printed: a markdown table (median t/s, min-max over -r),
per compile mode the compile time (wall time of the first compiled steps minus the steady-state steps), the
number of graphs, graph breaks and recompiles (dynamo's counters), and the max abs difference of the compiled
logits to the eager ones over N_CHECK tokens (eager torch's greedy choices, fed to every path), next to each
path's difference to the exact dequantizing kernels for scale. Compiles are cold: every child gets a fresh
TORCHINDUCTOR_CACHE_DIR (a warm cache makes a second run's compile several times shorter).
Timing: run under `flock /tmp/bench.lock`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

DEFAULT = Path("~/.cache/llamakit/SmolLM2-135M-Instruct.Q4_1.gguf").expanduser()
N_CHECK = 4  # tokens whose logits are compared between the paths


def _counters() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {"graphs": counters["stats"]["unique_graphs"],
            "breaks": sum(counters["graph_break"].values()),
            "frames": counters["frames"]["ok"]}  # compiled frames: 1 + recompiles per compiled function


def _wrap_blocks(model: Any, state: dict[str, Any], modes: list[str]) -> None:
    """Per Block: one compiled forward per mode, picked by state["mode"] for single-token steps."""
    import torch

    for blk in model.blk:
        eager = blk.forward
        comp = {m: torch.compile(eager, mode=None if m == "default" else m) for m in modes}

        def fwd(x: Any, rot: Any, kv: Any, batch: Any, _e: Callable = eager, _c: dict = comp) -> Any:
            m = state["mode"]
            return _c[m](x, rot, kv, batch) if (m is not None and x.shape[0] == 1) else _e(x, rot, kv, batch)

        blk.forward = fwd


def _wrap_model(model: Any, state: dict[str, Any]) -> None:
    import torch

    eager = model.forward
    comp = torch.compile(eager)

    def fwd(tokens: Any, batch: Any, kv: Any, rope: Any, logits: Any = "last", fused: Any = None) -> Any:
        f = comp if state["whole"] and tokens.shape[0] == 1 else eager
        return f(tokens, batch, kv, rope, logits, fused)

    model.forward = fwd


def child(path: str, threads: int, a: argparse.Namespace) -> None:
    import torch

    from llamakit.runtime.generate import Context
    from llamakit.runtime.loader import load_model
    from llamakit.runtime.memory import tune_malloc

    tune_malloc()
    torch.set_num_threads(threads)
    n_ctx = a.p + a.n + N_CHECK + 8
    lm_t = load_model(path, backend="torch")
    lm_n = load_model(path)
    rng = random.Random(0)
    bos = lm_t.metadata.get("tokenizer.ggml.bos_token_id")
    prompt = [bos if bos is not None else 1] + [rng.randrange(lm_t.config.n_vocab) for _ in range(a.p - 1)]
    gen = [rng.randrange(lm_t.config.n_vocab) for _ in range(a.n)]
    state: dict[str, Any] = {"mode": None, "whole": False}
    _wrap_blocks(lm_t.model, state, a.mode)
    if a.whole:
        _wrap_model(lm_t.model, state)
    ctx_t = Context(lm_t, n_ctx, fused=False, n_threads=threads)
    ctx_u = Context(lm_n, n_ctx, fused=False, n_threads=threads)
    ctx_f = Context(lm_n, n_ctx, n_threads=threads)
    emit = lambda **kw: print(json.dumps({"model": Path(path).stem, "threads": threads, **kw}), flush=True)
    emit(kind="kernels", torch=lm_t.kernel_summary(), native=lm_n.kernel_summary(),
         fused_blocks=sum(f is not None for f in ctx_f.fused or []))

    def forced(ctx: Context, toks: list[int]) -> torch.Tensor:
        """Logits (rows stacked) of single-token steps over `toks` after the prompt: every path is fed the
        same tokens, so a near-tie argmax cannot make the compared sequences diverge."""
        ctx.clear()
        ctx.decode(prompt)
        return torch.cat([ctx.decode([t]) for t in toks])

    ctx_t.clear()  # the tokens: eager torch's greedy choices
    toks = [int(ctx_t.decode(prompt)[-1].argmax())]
    for _ in range(N_CHECK - 1):
        toks.append(int(ctx_t.decode([toks[-1]])[-1].argmax()))
    with load_model(path, backend="exact") as lm_e:  # the dequantizing reference: the kernels' own error
        exact = forced(Context(lm_e, n_ctx, fused=False, n_threads=threads), toks)

    def set_torch(mode: str | None, whole: bool = False) -> None:
        state["mode"], state["whole"] = mode, whole

    configs: list[tuple[str, Any, Callable[[], None]]] = [("torch eager", ctx_t, lambda: set_torch(None))]
    ref = forced(ctx_t, toks)
    emit(kind="check", what="torch eager vs exact", max_abs_diff=(ref - exact).abs().max().item())
    for mode in a.mode + (["model"] if a.whole else []):
        name = "torch compile(model)" if mode == "model" else f"torch compile {mode}"
        setter = (lambda: set_torch(None, True)) if mode == "model" else (lambda m=mode: set_torch(m))
        setter()
        c0 = _counters()
        ctx_t.clear()
        ctx_t.decode(prompt)
        t0 = time.perf_counter()
        ctx_t.decode([gen[0]])  # static graph
        ctx_t.decode([gen[1]])  # recompile: KV length dynamic
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for tok in gen[2:6]:
            ctx_t.decode([tok])
        steady = (time.perf_counter() - t0) / 4
        c1 = _counters()
        diff = (forced(ctx_t, toks) - ref).abs().max().item()
        emit(kind="compile", config=name, compile_s=t_first - 2 * steady, max_abs_diff=diff,
             max_abs_logit=ref.abs().max().item(), **{k: c1[k] - c0[k] for k in c0})
        configs.append((name, ctx_t, setter))
    configs += [("native", ctx_u, lambda: None), ("native fused", ctx_f, lambda: None)]
    for what, ctx in (("native", ctx_u), ("native fused", ctx_f)):
        emit(kind="check", what=f"{what} vs exact", max_abs_diff=(forced(ctx, toks) - exact).abs().max().item())

    def tg(ctx: Context) -> float:
        ctx.clear()
        ctx.decode(prompt)
        t0 = time.perf_counter()
        for tok in gen:
            ctx.decode([tok])
        return a.n / (time.perf_counter() - t0)

    for _, ctx, setter in configs:  # untimed warmup of every path
        setter()
        tg(ctx)
    for rep in range(a.r):
        for name, ctx, setter in (configs if rep % 2 == 0 else configs[::-1]):
            setter()
            emit(kind="tg", config=name, rep=rep, tps=tg(ctx))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*")
    ap.add_argument("-t", type=int, action="append", help="thread counts (default 1 and 2)")
    ap.add_argument("-p", type=int, default=8, help="prompt tokens before the timed steps")
    ap.add_argument("-n", type=int, default=32, help="timed single-token decodes per run")
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("--mode", action="append", help="torch.compile modes (default: default)")
    ap.add_argument("--whole", action="store_true", help="also compile Llama.forward as one graph")
    ap.add_argument("--json", help="write every record here")
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "THREADS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.mode = a.mode or ["default"]
    if a.child:
        child(a.child[0], int(a.child[1]), a)
        return
    models = a.models or [str(DEFAULT)]
    recs: list[dict[str, Any]] = []
    for path in models:
        for t in a.t or [1, 2]:
            cmd = [sys.executable, __file__, "--child", path, str(t), "-p", str(a.p), "-n", str(a.n),
                   "-r", str(a.r)] + [x for m in a.mode for x in ("--mode", m)] + (["--whole"] if a.whole else [])
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="lk-inductor-") as cache:  # cold compiles
                out = subprocess.run(cmd, capture_output=True, text=True,
                                     env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache})
            if out.returncode:
                print(f"{Path(path).name} -t {t}: failed (rc {out.returncode}):\n{out.stderr[-3000:]}")
                continue
            got = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
            recs += got
            print(f"# {Path(path).name} -t {t}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if a.json:
        Path(a.json).write_text(json.dumps(recs, indent=1))
    for r in recs:
        if r["kind"] == "kernels":
            print(f"{r['model']} -t {r['threads']}: torch kernels {r['torch']}, native {r['native']}, "
                  f"{r['fused_blocks']} fused blocks")
        elif r["kind"] == "compile":
            print(f"{r['model']} -t {r['threads']} {r['config']}: compile {r['compile_s']:.1f} s, "
                  f"{r['graphs']} graphs, {r['breaks']} graph breaks, {r['frames']} frames compiled (1 + recompiles), "
                  f"max |logit diff| {r['max_abs_diff']:.3g} (max |logit| {r['max_abs_logit']:.3g})")
        elif r["kind"] == "check":
            print(f"{r['model']} -t {r['threads']} {r['what']}: max |logit diff| {r['max_abs_diff']:.3g}")
    print()
    print("| model | threads | path | tg t/s median (min-max) | vs torch eager |")
    print("|---|---:|---|---:|---:|")
    groups: dict[tuple[str, int, str], list[float]] = {}
    for r in recs:
        if r["kind"] == "tg":
            groups.setdefault((r["model"], r["threads"], r["config"]), []).append(r["tps"])
    for (model, t, cfg), v in groups.items():
        base = statistics.median(groups[(model, t, "torch eager")])
        med = statistics.median(v)
        print(f"| {model} | {t} | {cfg} | {med:.2f} ({min(v):.2f}-{max(v):.2f}) | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
