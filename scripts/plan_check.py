"""The planner's prediction against measured runs: `llamakit plan`'s cost model (probing this machine's
CPU) vs `llamakit bench` (pp512, tg128) at -ngl 0 on the same machine, for SmolLM2 and the tiny model.
Prints predicted, measured and the relative error. Timings on a shared machine are noisy: the probe and
the runs see different loads; run it on an idle machine for numbers worth quoting.

    PYTHONPATH=$PWD python scripts/plan_check.py [--reps 2] [-m MODEL ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from llamakit.runtime.bench import bench_gen, bench_prompt
from llamakit.runtime.default_model import default_model_path
from llamakit.runtime.generate import Context
from llamakit.runtime.loader import load_model
from llamakit.runtime.memory import tune_malloc
from llamakit.runtime.placement import PlacementOptions

TINY = Path(__file__).resolve().parents[1].parent / "shared/reference/tiny-llama/llama.cpp/quantize-Q4_0.gguf"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", action="append", type=Path)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    a = ap.parse_args()
    tune_malloc()
    models = a.model or [default_model_path(), TINY]
    print("| model | test | predicted t/s | measured t/s | error |")
    print("| --- | --- | ---: | ---: | ---: |")
    for path in models:
        # the prediction in a fresh process, as `llamakit plan` runs: its probe must not follow native
        # kernel runs in the same process (their pool's waiting threads slow the per-layer probe 10-100x)
        t0 = time.perf_counter()
        n_ctx = max(a.p, a.n)
        out = subprocess.run([sys.executable, "-c", "import sys; from llamakit.cli import app; sys.argv[0] = 'llamakit'; app()",
                              "plan", "-m", str(path), "-c", str(n_ctx), "-ub", str(min(512, a.p)), "--json"],
                             check=True, capture_output=True, text=True).stdout
        t_probe = time.perf_counter() - t0
        d = json.loads(out)
        row = d["rows"][0]
        with load_model(path, options=PlacementOptions(gpu_layers=0), n_ctx=n_ctx) as lm:
            ctx = Context(lm, n_ctx)
            bos = lm.metadata.get("tokenizer.ggml.bos_token_id")
            pp = bench_prompt(ctx, a.p, bos, a.reps).mean
            tg = bench_gen(ctx, a.n, bos, a.reps).mean
        for test, p, m in ((f"pp{a.p}", row["pp_tps"], pp), (f"tg{a.n}", row["tg_tps"], tg)):
            print(f"| {path.name} | {test} | {p:.1f} | {m:.1f} | {100 * (p - m) / m:+.0f}% |")
        sp = d["speeds"]
        per = ", ".join(f"{t} {v:.2f}" for t, v in sp["cpu_by_type_gbs"].items())
        print(f"<!-- plan + probe {t_probe:.1f} s: {per} GB/s, {sp['cpu_gflops']:.0f} GFLOP/s, "
              f"{sp['cpu_layer_us']:.0f} us/layer -->")


if __name__ == "__main__":
    main()
