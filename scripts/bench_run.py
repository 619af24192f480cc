"""Prompt-processing and generation speed of `llamakit run`'s engine, per model, optionally next to
llama.cpp's (llama-cpp-python) in the same run.

    python scripts/bench_run.py [MODEL.gguf ...] [-p 512] [-n 128] [-r 3] [-t 2] [--llama-cpp]

Without models: the default SmolLM2-135M-Instruct Q4_1, plus its Q8_0 requantization if
/tmp/lkbench/SmolLM2-135M-Instruct.Q8_0.gguf exists (make it with `llamakit quantize --allow-requantize
<Q4_1.gguf> /tmp/lkbench/SmolLM2-135M-Instruct.Q8_0.gguf Q8_0`). --llama-cpp also measures each model with
llama-cpp-python (must be importable; see scripts/llama_cpp_reference.py) and prints llamakit / llama.cpp.
Numbers on a shared machine are noisy: compare runs taken together.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
Q8 = Path("/tmp/lkbench/SmolLM2-135M-Instruct.Q8_0.gguf")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*")
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("-t", type=int, default=2)
    ap.add_argument("--llama-cpp", action="store_true")
    a = ap.parse_args()

    import torch

    from llamakit.runtime.bench import bench_gen, bench_prompt, markdown_table, model_row
    from llamakit.runtime.default_model import default_model_path
    from llamakit.runtime.generate import Context
    from llamakit.runtime.loader import load_model
    from llamakit.runtime.memory import tune_malloc

    tune_malloc()
    torch.set_num_threads(a.t)
    models = [Path(m) for m in a.models] or [default_model_path()] + ([Q8] if Q8.exists() else [])
    rows = []
    ours: dict[tuple[str, str], float] = {}
    for path in models:
        with load_model(path) as lm:
            bos = lm.metadata.get("tokenizer.ggml.bos_token_id")
            ctx = Context(lm, max(a.p, a.n) + 8)
            base = {**model_row(lm), "backend": "CPU (llamakit)", "threads": str(a.t)}
            for fn, n in ((bench_prompt, a.p), (bench_gen, a.n)):
                if n > 0:
                    r = fn(ctx, n, bos, a.r)
                    ours[(str(path), r.test)] = r.mean
                    rows.append({**base, "test": r.test, "t/s": f"{r.mean:.2f} ± {r.std:.2f}"})
    print("\n".join(markdown_table(rows)))
    if not a.llama_cpp:
        return
    print()
    for path in models:
        out = subprocess.run([sys.executable, str(HERE / "llama_cpp_reference.py"), str(path), "--bench",
                              "-p", str(a.p), "-n", str(a.n), "-r", str(a.r), "-t", str(a.t)],
                             capture_output=True, text=True)
        if out.returncode:
            print(f"llama.cpp on {path.name}: failed ({out.stderr.strip().splitlines()[-1:]})")
            continue
        for line in out.stdout.splitlines():
            if line.startswith("llama.cpp "):
                test, rate = line.split()[1].rstrip(":"), float(line.split()[2])
                mine = ours.get((str(path), test))
                ratio = f"  llamakit/llama.cpp = {mine / rate:.3f}" if mine else ""
                print(f"{path.name:40s} {line}{ratio}")


if __name__ == "__main__":
    main()
