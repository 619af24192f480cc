"""The memory tables of docs/gpu-layers.md, computed by the planner from model shapes (no download):
bytes per layer for Llama-2-7B/13B/70B at Q4_0, Q4_K_M and Q8_0 (the types llama-quantize's mixes give
every tensor), and what -ngl auto picks on common cards.

    PYTHONPATH=$PWD python scripts/gpu_layers_table.py
"""

from __future__ import annotations

from llamakit.runtime.costmodel import DEFAULT_CPU, DEFAULT_GPU, Speeds
from llamakit.runtime.placement import MiB, PlacementOptions, fit_gpu_layers
from llamakit.runtime.plan import plan, shape_from_config, sizes_of

LLAMA2 = {
    "Llama-2-7B": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
    "Llama-2-13B": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                        num_key_value_heads=40, vocab_size=32000, max_position_embeddings=4096),
    "Llama-2-70B": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                        num_key_value_heads=8, vocab_size=32000, max_position_embeddings=4096),
}
TYPES = ("Q4_0", "Q4_K_M", "Q8_0")
GiB = 1 << 30


def main() -> None:
    print("| model | type | file GiB | MiB per block (min-max) | KV MiB per block @4096 f16 | output layer MiB |"
          " embedding MiB (CPU) | compute reserve MiB |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, cfg in LLAMA2.items():
        for t in TYPES:
            m = shape_from_config(cfg, t, f"{name} {t}")
            s = sizes_of(m, 4096, "f16", 512)
            total = sum(m.nbytes(n) for n in m.tensors)
            lo, hi = min(s.blocks), max(s.blocks)
            per = f"{lo / MiB:.0f}" if hi - lo < MiB else f"{lo / MiB:.0f}-{hi / MiB:.0f}"
            print(f"| {name} | {t} | {total / GiB:.2f} | {per} | {s.kv_block / MiB:.0f} | {s.output / MiB:.0f} | "
                  f"{s.input / MiB:.0f} | {(s.compute + s.compute_output) / MiB:.0f} |")
    print()
    cards = (8, 12, 16, 24)
    print("| model | type | " + " | ".join(f"-ngl auto, {c} GB free" for c in cards) + " |")
    print("| --- | --- | " + " | ".join("---:" for _ in cards) + " |")
    for name, cfg in LLAMA2.items():
        for t in TYPES:
            m = shape_from_config(cfg, t)
            s = sizes_of(m, 4096, "f16", 512)
            ns = [fit_gpu_layers(s, [c * GiB], PlacementOptions())[0] for c in cards]
            print(f"| {name} | {t} | " + " | ".join(f"{n}/{m.n_layer + 1}" for n in ns) + " |")
    print()
    print("13B on an 8 GB card (-c 512, --fit-margin 0 vs the default 1024 MiB at -c 4096):")
    print("| type | file GiB | -c 512, margin 0 | -c 4096, margin 1024 MiB |")
    print("| --- | ---: | ---: | ---: |")
    for t in ("Q4_0", "Q4_1", "Q5_1", "Q8_0"):
        m = shape_from_config(LLAMA2["Llama-2-13B"], t)
        tight = fit_gpu_layers(sizes_of(m, 512, "f16", 512), [8 * GiB], PlacementOptions(fit_margin=0))[0]
        default = fit_gpu_layers(sizes_of(m, 4096, "f16", 512), [8 * GiB], PlacementOptions())[0]
        print(f"| {t} | {sum(m.nbytes(n) for n in m.tensors) / GiB:.2f} | {tight} | {default} |")
    print()
    m = shape_from_config(LLAMA2["Llama-2-13B"], "Q4_K_M", "Llama-2-13B Q4_K_M")
    p = plan(m, n_ctx=4096, vram=[8 * GiB], ram=32 * GiB, speeds=Speeds(DEFAULT_CPU, DEFAULT_GPU))
    from llamakit.runtime.plan import plan_lines

    print("\n".join(plan_lines(p, rows=[0, 10, 20, 24, 25, 30, 40, 41])))


if __name__ == "__main__":
    main()
