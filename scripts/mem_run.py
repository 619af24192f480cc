"""Resident memory of `llamakit run`: weights stay packed (mmapped file pages), so the growth over the
process's baseline should stay within about 1.2x the file size plus the KV cache.

    python scripts/mem_run.py [MODEL.gguf] [--no-mmap] [-c 512] [-n 32]

Prints the baseline RSS (after imports and the tokenizer), the peak RSS during load + prompt + generation
(VmHWM, reset at the baseline), the file size and KV cache size, and the ratio (peak - baseline) / (file + KV). Linux only.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_bytes() -> int:
    """VmHWM: the peak RSS since the process started or since reset_peak()."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?")
    ap.add_argument("--no-mmap", action="store_true")
    ap.add_argument("-c", type=int, default=512)
    ap.add_argument("-n", type=int, default=32)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--default-malloc", action="store_true", help="skip llamakit's malloc tuning")
    a = ap.parse_args()

    import torch  # noqa: F401  (the baseline includes torch)

    from llamakit.gguf import GGUFReader
    from llamakit.runtime.default_model import default_model_path
    from llamakit.runtime.generate import Context, Generation
    from llamakit.runtime.loader import load_model
    from llamakit.runtime.memory import tune_malloc
    from llamakit.runtime.sampling import Sampler, SamplingParams
    from llamakit.tokenizer import Tokenizer

    if not a.default_malloc:
        tune_malloc()  # as the llamakit commands do
    path = Path(a.model) if a.model else default_model_path()
    with GGUFReader(path) as r:
        tok = Tokenizer.from_metadata(r.metadata)
    prompt = tok.encode("The GNU General Public License is a free, copyleft license for software. " * 4)
    reset_peak()
    base = rss_bytes()
    lm = load_model(path, use_mmap=not a.no_mmap)
    ctx = Context(lm, a.c)
    gen = Generation(ctx, prompt, Sampler(SamplingParams(temp=0.0), lm.config.n_vocab), n_predict=a.n,
                     eog_ids=())
    n = sum(1 for _ in gen)
    now = rss_bytes()
    peak = peak_bytes()
    kv = ctx.cache.nbytes
    file = lm.file_bytes
    grown = peak - base
    out = {"model": str(path), "mmap": not a.no_mmap, "baseline_mib": base / 2**20, "peak_mib": peak / 2**20,
           "now_mib": now / 2**20, "file_mib": file / 2**20, "kv_mib": kv / 2**20, "generated": n,
           "ratio_peak_growth_to_file_plus_kv": grown / (file + kv),
           "ratio_current_growth_to_file_plus_kv": (now - base) / (file + kv)}
    if a.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:40s} {v:.3f}" if isinstance(v, float) else f"{k:40s} {v}")
    sys.exit(0)


if __name__ == "__main__":
    main()
