"""The bandwidth bound of generation (issue 10's target: all layers on the GPU, >= 50% of it), from one or
more `llamakit bench` tables of the same model.

    python scripts/hbm_bound.py MODEL.gguf BENCH.md [BENCH.md ...] [--device cuda] [--names on,off]

Bytes one generated token reads: every tensor of the file but the token embedding (one row of it is
gathered), plus the f16 K and V of every layer up to the mean position of the tg run. Bandwidth: a 2 GiB
device-to-device copy, counting its reads and writes (an achieved figure, below the data-sheet peak); on the
CPU it gives the DRAM copy rate. Prints the bound and each table's tg figure as a share of it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llamakit.gguf import GGUFReader  # noqa: E402


def bytes_per_token(model: Path, n_gen: int) -> int:
    r = GGUFReader(model)
    try:
        md = r.metadata
        weights = sum(t.nbytes for t in r.tensors if t.name != "token_embd.weight")
        n_layer, n_embd = int(md["llama.block_count"]), int(md["llama.embedding_length"])
        n_head = int(md["llama.attention.head_count"])
        n_kv = n_embd * int(md.get("llama.attention.head_count_kv", n_head)) // n_head
    finally:
        r.close()
    return weights + 2 * 2 * n_layer * n_kv * (n_gen // 2)  # f16 K and V at the mean position


def copy_bandwidth(device: str, nbytes: int = 2 << 30) -> float:
    x = torch.empty(nbytes, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(2):
        y.copy_(x)
    sync()
    t = time.perf_counter()
    for _ in range(5):
        y.copy_(x)
    sync()
    return 5 * 2 * nbytes / (time.perf_counter() - t)


def tg_of(table: Path) -> tuple[int, float]:
    """(n, t/s) of the first tgN row of a `llamakit bench` markdown table."""
    for line in table.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        tests = [c for c in cells if c.startswith("tg") and c[2:].isdigit()]
        if tests:
            i = cells.index(tests[0])
            return int(tests[0][2:]), float(cells[i + 1].split()[0])
    raise SystemExit(f"{table}: no tg row (run llamakit bench with -n N)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("tables", type=Path, nargs="+")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--names", default="", help="comma-separated column names, one per table")
    ap.add_argument("--copy-mib", type=int, default=2048)
    args = ap.parse_args()
    rows = [tg_of(t) for t in args.tables]
    names = args.names.split(",") if args.names else [t.stem for t in args.tables]
    per_token = bytes_per_token(args.model, rows[0][0])
    bw = copy_bandwidth(args.device, args.copy_mib << 20)
    bound = bw / per_token
    print(f"{args.device}: {bw / 1e9:.0f} GB/s (copy); {per_token / 2**20:.0f} MiB per token -> bound "
          f"{bound:.0f} t/s")
    print("| tg | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(names))
    print(f"| tg{rows[0][0]} t/s | " + " | ".join(f"{tps:.1f}" for _, tps in rows) + " |")
    print("| of the bound (target >= 50%) | " + " | ".join(f"{100 * tps / bound:.0f}%" for _, tps in rows) + " |")


if __name__ == "__main__":
    main()
