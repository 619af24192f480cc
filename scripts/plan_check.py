"""The planner's prediction against measured runs, on the CPU (-ngl 0): `llamakit plan` (probing this
machine) vs `llamakit bench` (pp and tg) at the same thread count, each in a fresh process as a user runs
them, for each model and thread count, in several interleaved rounds (plan, bench, plan, bench, ...) so
that both see the same load. Prints predicted and measured (median of the rounds, min-max) and the error
of the medians, as a markdown table.

    PYTHONPATH=$PWD python scripts/plan_check.py [-m MODEL ...] [-t 1,2] [--rounds 3] [-p 512] [-n 128]
                                                 [--lock /tmp/bench.lock]

--lock takes the lock (flock) around each plan + bench pair, not around the whole run, so a long check
leaves room to other timing jobs between pairs (each pair is well under a minute). Other processes'
CPU time during a round (/proc/stat less ours) is reported; a round where they kept more than
--max-load cores busy is run again, up to --retries times (the last try is kept whatever the load).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llamakit.runtime.default_model import default_model_path  # noqa: E402

LK = [sys.executable, "-c", "import sys; from llamakit.cli import app; sys.argv[0] = 'llamakit'; app()"]
SHAPES = [Path("/tmp/lkbench/tinyllama-1.1b-q4_0.gguf"), Path("/tmp/lkbench/tinyllama-1.1b-q4_k_m.gguf")]


@contextmanager
def locked(path: str | None) -> Iterator[None]:
    if path is None:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class OtherLoad:
    """Cores other processes kept busy while a block ran: /proc/stat's busy time less our children's."""

    def __enter__(self) -> "OtherLoad":
        self.t0, self.busy0, self.ours0 = time.monotonic(), self._busy(), self._ours()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.monotonic() - self.t0
        self.cores = max(0.0, (self._busy() - self.busy0) - (self._ours() - self.ours0)) / wall

    @staticmethod
    def _busy() -> float:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _ours() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system


def predict(model: Path, threads: int, p: int, n: int) -> tuple[float, float, dict]:
    out = subprocess.run([*LK, "plan", "-m", str(model), "-t", str(threads), "-c", str(max(p, n)), "-ub", str(p),
                          "--json"], check=True, capture_output=True, text=True).stdout
    d = json.loads(out)
    row = d["rows"][0]
    return row["pp_tps"], row["tg_tps"], d["speeds"]


def measure(model: Path, threads: int, p: int, n: int, reps: int) -> tuple[float, float]:
    out = subprocess.run([*LK, "bench", "-m", str(model), "-t", str(threads), "-p", str(p), "-n", str(n),
                          "-r", str(reps), "-ngl", "0"], check=True, capture_output=True, text=True).stdout
    rates = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 8 and cells[-2].startswith(("pp", "tg")):
            rates[cells[-2][:2]] = float(cells[-1].split()[0])
    return rates["pp"], rates["tg"]


def span(xs: list[float]) -> str:
    return f"{statistics.median(xs):.1f} ({min(xs):.1f}-{max(xs):.1f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", action="append", type=Path)
    ap.add_argument("-t", "--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-r", "--reps", type=int, default=2, help="bench repetitions per round")
    ap.add_argument("--lock", default=None, help="flock this file around each plan + bench pair")
    ap.add_argument("--max-load", type=float, default=0.3,
                    help="other processes' cores beyond which a round is run again (up to --retries times)")
    ap.add_argument("--retries", type=int, default=2)
    a = ap.parse_args()
    models = a.model or [default_model_path(), *(s for s in SHAPES if s.exists())]
    threads = [int(t) for t in a.threads.split(",")]
    print("| model | threads | test | predicted t/s | measured t/s | error | error per round | other load |")
    print("| --- | --: | --- | ---: | ---: | ---: | ---: | ---: |")
    worst = 0.0
    for path in models:
        for t in threads:
            pred: dict[str, list[float]] = {"pp": [], "tg": []}
            meas: dict[str, list[float]] = {"pp": [], "tg": []}
            load = []
            for _ in range(a.rounds):
                for attempt in range(a.retries + 1):  # a round disturbed by other work is run again
                    with locked(a.lock), OtherLoad() as other:
                        pp, tg, _ = predict(path, t, a.p, a.n)
                        mpp, mtg = measure(path, t, a.p, a.n, a.reps)
                    if other.cores <= a.max_load:
                        break
                    time.sleep(5)
                load.append(other.cores)
                pred["pp"].append(pp), pred["tg"].append(tg)
                meas["pp"].append(mpp), meas["tg"].append(mtg)
            for test, label in (("pp", f"pp{a.p}"), ("tg", f"tg{a.n}")):
                p, m = statistics.median(pred[test]), statistics.median(meas[test])
                err = (p - m) / m
                worst = max(worst, abs(err))
                rounds = [(x - y) / y for x, y in zip(pred[test], meas[test])]
                print(f"| {path.name} | {t} | {label} | {span(pred[test])} | {span(meas[test])} | {100 * err:+.0f}% | "
                      f"{100 * min(rounds):+.0f}..{100 * max(rounds):+.0f}% | {max(load):.2f} |", flush=True)
    print(f"\nworst |error| of the medians: {100 * worst:.0f}%; other load: the most cores other processes kept "
          "busy during a round (plan + bench)")


if __name__ == "__main__":
    main()
