#!/usr/bin/env bash
# The GPU checks of --gpu-layers in one go (< 8 minutes on one GPU): install what is missing, run the
# GPU-marked tests, then `llamakit bench` on SmolLM2 and the 1.1B-shaped model at -ngl 0 / half / all,
# next to what `llamakit plan` predicts for the same N, as one table.
#
#   scripts/gpu_check.sh            on a CUDA machine, from the repository root
#   scripts/gpu_check.sh --fake     here (no GPU): the CPU-runnable parts only (plan, bench at -ngl 0 on
#                                   the tiny model), to check the script itself
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
FAKE=0; [[ "${1:-}" == "--fake" ]] && FAKE=1
OUT="${OUT:-/tmp/lk-gpu-check}"; mkdir -p "$OUT"
LK=(python -c "import sys; from llamakit.cli import app; sys.argv[0] = 'llamakit'; app()")
T0=$SECONDS
say() { printf '[%3ds] %s\n' $((SECONDS - T0)) "$*" >&2; }

if [[ $FAKE == 0 ]]; then
  python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: use --fake')"
  # triton comes with torch's CUDA wheels (torch 2.13 pins 3.7.1); install it only where it is missing
  python -c "import triton" 2>/dev/null || pip install -q "triton==3.7.1"
  python -c "import pytest" 2>/dev/null || pip install -q pytest
  python -c "import typer, rich, sentencepiece, tokenizers, jinja2" 2>/dev/null || pip install -q -e .  # keeps its torch
  nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader >&2 || true
  say "GPU tests"
  timeout 240 python -m pytest -q -m gpu tests/test_gpu.py tests/test_kernels_triton.py 2>&1 | tail -15 || say "GPU tests failed"
fi

SMOL=$(python -c "from llamakit.runtime.default_model import default_model_path as p; print(p())")
MODELS=("$SMOL")
if [[ $FAKE == 1 ]]; then
  MODELS=("${LLAMAKIT_SHARED:-../shared}/reference/tiny-llama/llama.cpp/quantize-Q4_0.gguf")
elif [[ -f scripts/make_shape_model.py ]]; then  # helper H7's (branch bench): random weights, real shape
  say "making the 1.1B-shaped model"
  timeout 180 python scripts/make_shape_model.py --out "$OUT" --shape tinyllama-1.1b --type q4_0 >&2 \
    && MODELS+=("$OUT/tinyllama-1.1b-q4_0.gguf") || say "make_shape_model.py failed; SmolLM2 only"
else
  say "scripts/make_shape_model.py is not here (branch bench); SmolLM2 only"
fi

PP=256; TG=64; REPS=2
echo "| model | ngl | test | predicted t/s | measured t/s | error |"
echo "| --- | --: | --- | ---: | ---: | ---: |"
for m in "${MODELS[@]}"; do
  n_layer=$(python -c "from llamakit.runtime.plan import model_shape; from pathlib import Path; print(model_shape(Path('$m'), None).n_layer)")
  NGLS="0,$((n_layer / 2)),$((n_layer + 1))"; [[ $FAKE == 1 ]] && NGLS=0
  "${LK[@]}" plan -m "$m" -c $((PP > TG ? PP : TG)) -ub $PP --json > "$OUT/plan.json"
  say "bench $(basename "$m") -ngl $NGLS"
  timeout 200 "${LK[@]}" bench -m "$m" -p $PP -n $TG -r $REPS -ngl "$NGLS" > "$OUT/bench.md" || say "bench failed"
  python - "$m" "$OUT/plan.json" "$OUT/bench.md" <<'PY'
import json, sys
from pathlib import Path
plan = {r["ngl"]: r for r in json.load(open(sys.argv[2]))["rows"]}
for line in open(sys.argv[3]):
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) < 8 or not cells[5].isdigit():
        continue
    ngl, test, tps = int(cells[5]), cells[6], float(cells[7].split()[0])
    pred = plan[ngl]["pp_tps" if test.startswith("pp") else "tg_tps"]
    print(f"| {Path(sys.argv[1]).name} | {ngl} | {test} | {pred:.1f} | {tps:.1f} | {100 * (pred - tps) / tps:+.0f}% |")
PY
done

if [[ $FAKE == 0 && ${#MODELS[@]} -gt 1 ]]; then
  # the 50%-of-HBM-bound target (1.1B Q4_0, every layer on the GPU), with CUDA graphs and without
  m="${MODELS[1]}"
  say "HBM bound: $(basename "$m"), graphs on / off"
  for g in 1 0; do
    LLAMAKIT_CUDA_GRAPHS=$g timeout 120 "${LK[@]}" bench -m "$m" -p 0 -n 128 -r 3 -ngl 999 > "$OUT/bench-g$g.md" \
      || say "bench (graphs=$g) failed"
  done
  timeout 120 python scripts/hbm_bound.py "$m" "$OUT/bench-g1.md" "$OUT/bench-g0.md" --names "graphs on,graphs off" \
    || say "HBM bound check failed"
fi
say "done"
