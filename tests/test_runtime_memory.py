"""Weights stay packed: the resident memory a run adds is about the file plus the KV cache.

scripts/mem_run.py loads SmolLM2 Q4_1 (94 MiB), evaluates a prompt and generates a few tokens in a fresh
process, and reports the peak RSS growth over its baseline (after imports and the tokenizer) divided by
file size + KV cache. A float32 copy of the weights would make that ratio ~5. Measured 1.03-1.12 (mmap and
--no-mmap), with rare runs at 1.21 when glibc's heap happens to fragment; the bar is 1.25 (the issue's ~1.2x).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "mem_run.py"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
@pytest.mark.parametrize("flags", [[], ["--no-mmap"]], ids=["mmap", "no-mmap"])
def test_run_rss_growth_is_file_plus_kv(smollm2_gguf, flags: list[str]) -> None:  # type: ignore[no-untyped-def]
    out = subprocess.run([sys.executable, str(SCRIPT), str(smollm2_gguf), "-n", "4", "-c", "512", "--json", *flags],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["generated"] == 4
    assert r["ratio_peak_growth_to_file_plus_kv"] < 1.25, r
