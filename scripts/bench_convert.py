#!/usr/bin/env python3
"""Benchmark `llamakit convert`: wall time, peak resident memory and throughput of one conversion.

    python scripts/bench_convert.py MODEL_DIR [--outtype f16] [--repeat 3] [--outfile PATH]
    python scripts/bench_convert.py --from-gguf MODEL.gguf [--dtype bf16] ...   # build an HF checkpoint first

The conversion runs in a fresh child process per repeat (so peak RSS is that process's own, imports included,
like timing `python convert_hf_to_gguf.py`); the child also reports the time spent converting after imports.
`--from-gguf` turns a llama GGUF with a BPE vocabulary (e.g. the default SmolLM2-135M-Instruct) into a Hugging Face
checkpoint in a temp directory first (llamakit.convert.export_hf) and benchmarks converting that back.
Numbers on a machine shared with other work are noisy: take the best of several repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child(model_dir: str, outtype: str, outfile: str) -> None:
    t0 = time.perf_counter()
    from llamakit.convert import convert

    t1 = time.perf_counter()
    r = convert(model_dir, outtype, outfile)
    t2 = time.perf_counter()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    print(json.dumps({"import_s": t1 - t0, "convert_s": t2 - t1, "file_bytes": r.file_bytes,
                      "n_tensors": r.n_tensors, "peak_rss": rss}))


def _source_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in model_dir.iterdir()
               if p.suffix in (".safetensors", ".bin", ".pth"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", nargs="?", help="checkpoint directory (config.json or params.json)")
    ap.add_argument("--outtype", default="f16")
    ap.add_argument("--outfile", help="where to write (default: a temp file, deleted afterwards)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--from-gguf", help="build an HF checkpoint from this GGUF first (llama + BPE vocab)")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32"], help="weights dtype for --from-gguf")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        _child(a.model_dir, a.outtype, a.outfile)
        return

    with tempfile.TemporaryDirectory(prefix="llamakit-bench-") as tmp:
        if a.from_gguf:
            import torch

            from llamakit.convert.export_hf import export_hf

            dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[a.dtype]
            model_dir = export_hf(a.from_gguf, Path(tmp) / Path(a.from_gguf).stem.split(".")[0], dtype)
            print(f"built {model_dir} from {a.from_gguf} ({a.dtype})")
        elif a.model_dir:
            model_dir = Path(a.model_dir)
        else:
            ap.error("give MODEL_DIR or --from-gguf")
        outfile = a.outfile or str(Path(tmp) / "out.gguf")
        src = _source_bytes(model_dir)
        print(f"converting {model_dir} ({src / 1e6:.0f} MB of weights) to {a.outtype}, {a.repeat} run(s), "
              f"{os.cpu_count()} CPUs visible")
        runs = []
        for i in range(a.repeat):
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, __file__, str(model_dir), "--child", "--outtype", a.outtype,
                                   "--outfile", outfile], capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode:
                sys.exit(f"conversion failed:\n{proc.stderr}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["wall_s"] = wall
            runs.append(r)
            print(f"  run {i + 1}: wall {wall:6.2f} s (imports {r['import_s']:.2f} s, convert {r['convert_s']:.2f} s), "
                  f"peak RSS {r['peak_rss'] / 1e6:5.0f} MB, {r['file_bytes'] / 1e6 / r['convert_s']:6.0f} MB/s written")
        best = min(runs, key=lambda r: r["wall_s"])
        print(f"best: wall {best['wall_s']:.2f} s, convert {best['convert_s']:.2f} s, "
              f"peak RSS {max(r['peak_rss'] for r in runs) / 1e6:.0f} MB (max over runs), "
              f"{src / 1e6 / best['convert_s']:.0f} MB/s read, {best['file_bytes'] / 1e6 / best['convert_s']:.0f} "
              f"MB/s written, {best['n_tensors']} tensors, {best['file_bytes'] / 1e6:.0f} MB file")
        if not a.outfile and os.path.exists(outfile):
            os.unlink(outfile)


if __name__ == "__main__":
    main()
