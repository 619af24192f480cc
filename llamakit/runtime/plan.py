"""`llamakit plan`: what each -ngl costs in memory and speed, before loading anything (no GPU needed).

The model is described by its tensors (GGUF name -> ggml type and shape): read from a GGUF's header, or
for a Hugging Face directory computed from config.json's shapes and the quantize mix of `--type`
(quants/mixes.py, the rules llama-quantize applies, in its loader order). For every N the table gives the
bytes on each device (placement.py: weights + KV for the context + compute reserve) and the tokens/s the
cost model (costmodel.py) predicts; the row `auto` would choose is marked.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError, OutOfMemoryError
from ..gguf.constants import GGML_BLOCK, GGMLType, LlamaFileType
from ..quants.mixes import ModelInfo, TypeChooser, is_quantizable, is_quantized_type, loader_order, parse_file_type
from .costmodel import DeviceSpeed, EngineRates, LayerCost, Prediction, Speeds, TensorCost, predict
from .placement import (CACHE_TYPES, ModelSizes, PlacementOptions, assign_slots, compute_reserve,
                        fit_gpu_layers, fits as fits_in, kv_block_bytes, model_sizes, usage_of)

if TYPE_CHECKING:
    from .probe_native import EngineShape

BLOCK_TENSORS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                 "ffn_down")


@dataclass(frozen=True)
class ModelShape:
    name: str
    n_layer: int
    n_embd: int
    n_embd_q: int
    n_embd_kv: int
    n_ff: int
    n_head: int
    n_vocab: int
    n_ctx_train: int
    tied_output: bool
    tensors: dict[str, tuple[GGMLType, tuple[int, ...]]]  # name -> (type, (rows, row length) or (n,))

    @property
    def head_dim(self) -> int:
        return self.n_embd_q // self.n_head

    @property
    def n_head_kv(self) -> int:
        return self.n_embd_kv // self.head_dim

    @property
    def output_name(self) -> str:
        """The output layer's matrix (the embedding's when tied)."""
        return "token_embd.weight" if self.tied_output else "output.weight"

    def nbytes(self, name: str) -> int:
        """Bytes as held in memory: packed rows for matrices, float32 for vectors (the loader's rule)."""
        t, shape = self.tensors[name]
        n = 1
        for s in shape:
            n *= s
        if len(shape) == 1:
            return 4 * n
        blk = GGML_BLOCK[t]
        return n // blk.block_size * blk.type_size

    def params(self, name: str) -> int:
        n = 1
        for s in self.tensors[name][1]:
            n *= s
        return n


def shape_from_gguf(path: Path) -> ModelShape:
    from ..gguf import GGUFReader
    from ..model import LlamaConfig

    if not path.exists():
        raise InputError(f"{path}: no such model; pass a .gguf or a Hugging Face directory with -m")
    with GGUFReader(path) as reader:
        infos = {t.name: t for t in reader.tensors}
        cfg = LlamaConfig.from_gguf(reader.metadata, infos, what=str(path))
        tensors = {t.name: (t.ggml_type, tuple(int(x) for x in t.shape)) for t in reader.tensors}  # (rows, ne0)
    return ModelShape(path.name, cfg.n_layer, cfg.n_embd, cfg.n_embd_q, cfg.n_embd_kv, cfg.n_ff, cfg.n_head,
                      cfg.n_vocab, cfg.n_ctx_train, cfg.tied_output, tensors)


def hf_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """GGUF tensor names and (rows, row length) of a llama config.json (as convert writes them)."""
    try:
        e, ff, n_layer = int(config["hidden_size"]), int(config["intermediate_size"]), int(config["num_hidden_layers"])
        n_head, n_vocab = int(config["num_attention_heads"]), int(config["vocab_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"config.json: missing or bad {exc}; is this a llama checkpoint?") from None
    n_kv = int(config.get("num_key_value_heads") or n_head)
    hd = int(config.get("head_dim") or e // n_head)
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (n_vocab, e), "output_norm.weight": (e,)}
    if not config.get("tie_word_embeddings", False):
        shapes["output.weight"] = (n_vocab, e)
    for i in range(n_layer):
        b = f"blk.{i}."
        shapes.update({b + "attn_norm.weight": (e,), b + "attn_q.weight": (n_head * hd, e),
                       b + "attn_k.weight": (n_kv * hd, e), b + "attn_v.weight": (n_kv * hd, e),
                       b + "attn_output.weight": (e, n_head * hd), b + "ffn_norm.weight": (e,),
                       b + "ffn_gate.weight": (ff, e), b + "ffn_up.weight": (ff, e), b + "ffn_down.weight": (e, ff)})
    return shapes


def shape_from_config(config: dict[str, Any], type_name: str, name: str = "model") -> ModelShape:
    """The tensors llamakit convert + quantize TYPE would write for this config (F16 convert first)."""
    spec = parse_file_type(type_name)
    shapes = hf_shapes(config)
    order = loader_order(list(shapes))
    e, n_layer = int(config["hidden_size"]), int(config["num_hidden_layers"])
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    hd = int(config.get("head_dim") or e // n_head)
    info = ModelInfo(arch="llama", n_layer=n_layer, n_head=n_head, n_head_kv=n_kv, n_expert=0,
                     has_output="output.weight" in shapes, n_attention_wv=n_layer)
    base = spec.base or GGMLType.F16
    chooser = TypeChooser(LlamaFileType(spec.ftype), info)
    tensors: dict[str, tuple[GGMLType, tuple[int, ...]]] = {}
    for tname in order:
        shape = shapes[tname]
        t = GGMLType.F32 if len(shape) == 1 else GGMLType.F16
        if is_quantizable(tname, len(shape), False) and spec.base is not None:
            t = base
            if is_quantized_type(base):
                t = chooser.choose(tname, shape[-1], base).ggml_type
        tensors[tname] = (t, shape)
    return ModelShape(name, n_layer, e, n_head * hd, n_kv * hd, int(config["intermediate_size"]), n_head,
                      int(config["vocab_size"]), int(config.get("max_position_embeddings", 4096)),
                      "output.weight" not in shapes, tensors)


def shape_from_hf(directory: Path, type_name: str | None) -> ModelShape:
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise InputError(f"{directory}: no config.json; pass a GGUF file or a Hugging Face model directory")
    if not type_name:
        raise InputError(f"{directory}: a Hugging Face directory needs --type (q4_k_m, q8_0, f16...) to plan")
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{cfg_path}: cannot read it as JSON ({exc})") from None
    if not isinstance(config, dict):
        raise InputError(f"{cfg_path}: not a JSON object")
    return shape_from_config(config, type_name, f"{directory.name} {type_name.upper()}")


def layer_costs(m: ModelShape) -> list[LayerCost]:
    """Blocks, then the output layer (the embedding is a row lookup: no per-token weight traffic)."""
    layers = []
    for i in range(m.n_layer):
        names = [f"blk.{i}.{t}.weight" for t in BLOCK_TENSORS if f"blk.{i}.{t}.weight" in m.tensors]
        layers.append(LayerCost(tuple(_tensor_cost(m, n) for n in names), m.n_embd_kv, m.n_embd_q))
    layers.append(LayerCost((_tensor_cost(m, m.output_name),)))
    return layers


def _tensor_cost(m: ModelShape, name: str) -> TensorCost:
    t, shape = m.tensors[name]
    return TensorCost(t, m.nbytes(name), m.params(name), shape[0] if len(shape) == 2 else 0)


def engine_shape(m: ModelShape) -> EngineShape:
    """What the CPU probe measures for this model: its block dimensions and matmul shapes."""
    from collections import Counter

    from .probe_native import EngineShape

    matmuls = sorted({(t, s[0], s[1]) for n, (t, s) in m.tensors.items()
                      if len(s) == 2 and (n.startswith("blk.") or n == m.output_name)})
    usual = tuple((k, Counter(m.tensors[f"blk.{i}.{k}.weight"][0] for i in range(m.n_layer)).most_common(1)[0][0])
                  for k in BLOCK_TENSORS if "norm" not in k)
    nbytes = sum(m.nbytes(n) for n, (_, s) in m.tensors.items() if len(s) == 2 and n != "token_embd.weight")
    if m.tied_output:
        nbytes += m.nbytes("token_embd.weight")
    block_bytes = sum(m.nbytes(n) for n in m.tensors if n.startswith("blk.")) // max(1, m.n_layer)
    return EngineShape(m.n_embd, m.n_head, m.n_head_kv, m.head_dim, m.n_ff, usual, tuple(matmuls),
                       nbytes, m.n_vocab, m.n_layer, block_bytes)


def sizes_of(m: ModelShape, n_ctx: int, cache_type: str, n_ubatch: int) -> ModelSizes:
    compute, compute_out = compute_reserve(m.n_embd, m.n_embd_q, m.n_ff, m.n_head, m.n_embd_kv, m.n_vocab,
                                           n_ctx, n_ubatch)
    return model_sizes({n: m.nbytes(n) for n in m.tensors}, m.n_layer, kv_block_bytes(n_ctx, m.n_embd_kv, cache_type),
                       compute, compute_out, m.tied_output)


@dataclass(frozen=True)
class PlanRow:
    n: int
    vram: tuple[int, ...]  # bytes per device
    ram: int
    fits: bool | None  # None when the budgets are unknown
    prediction: Prediction


@dataclass(frozen=True)
class Plan:
    shape: ModelShape
    rows: tuple[PlanRow, ...]
    auto: int | None  # the N auto chooses; None without GPU budgets
    auto_note: str
    n_ctx: int
    speeds: Speeds


def plan(m: ModelShape, *, n_ctx: int = 4096, cache_type: str = "f16", vram: Sequence[int] = (), n_gpus: int = 1,
         ram: int | None = None, speeds: Speeds, opts: PlacementOptions = PlacementOptions(),
         n_ubatch: int = 512, every: Sequence[int] | None = None) -> Plan:
    """Rows for N = 0 .. n_layer + 1 (or `every`), over len(vram) GPUs (n_gpus hypothetical ones when the
    VRAM is not given)."""
    n_ctx = n_ctx or m.n_ctx_train
    sizes = sizes_of(m, n_ctx, cache_type, n_ubatch)
    layers = layer_costs(m)
    n_dev = len(vram) or n_gpus
    free = list(vram) if vram else None
    auto, note = None, "no GPU memory given (--vram) and none found: auto would run everything on the CPU"
    if free is not None:
        try:
            auto, note = fit_gpu_layers(sizes, free, opts, ram)
        except OutOfMemoryError as e:
            auto, note = None, str(e)
    rows = []
    for n in (every if every is not None else range(m.n_layer + 2)):
        slots = assign_slots(m.n_layer, n, n_dev, opts, free)
        dev, host = usage_of(slots, sizes, n_dev)
        fits = None
        if free is not None or ram is not None:
            fits = (free is None or all(fits_in(u, f, opts.fit_margin) for u, f in zip(dev, free))) and \
                   (ram is None or host <= ram)
        p = predict(layers, slots, m.n_embd, speeds, kv_bytes=CACHE_TYPES[cache_type], n_ubatch=n_ubatch)
        rows.append(PlanRow(min(n, m.n_layer + 1), tuple(dev), host, fits, p))
    return Plan(m, tuple(rows), auto, note, n_ctx, speeds)


def default_rows(n_layer: int, auto: int | None) -> list[int]:
    """Every N for small models; for deep ones every 4th, the ends and auto's."""
    if n_layer + 2 <= 42:
        return list(range(n_layer + 2))
    keep = set(range(0, n_layer + 2, 4)) | {1, n_layer - 1, n_layer, n_layer + 1}
    if auto is not None:
        keep |= {auto}
    return sorted(keep)


def _rates_json(r: EngineRates | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {"rows": r.rows, "layer_us": r.layer * 1e6, "attn_gflops": r.attn_flops / 1e9, "step_us": r.step * 1e6,
            "sample_us": r.sample * 1e6,
            "matmul_gws": {f"{t.name} {rows}x{cols}": v / 1e9 for (t, rows, cols), v in r.matmul.items()}}


def plan_json(p: Plan) -> dict[str, Any]:
    cpu, gpu = p.speeds.cpu, p.speeds.gpu
    return {
        "model": p.shape.name, "n_layer": p.shape.n_layer, "n_ctx": p.n_ctx, "auto": p.auto, "auto_note": p.auto_note,
        "speeds": {"cpu_bw_gbs": cpu.bandwidth / 1e9, "gpu_bw_gbs": gpu.bandwidth / 1e9,
                   "cpu_source": cpu.source, "gpu_source": gpu.source, "cpu_threads": cpu.threads,
                   "cpu_other_load": cpu.other_load,
                   "cpu_by_type_gbs": {t.name: v / 1e9 for t, v in cpu.by_type.items()},
                   "cpu_gflops": cpu.flops / 1e9, "cpu_layer_us": cpu.layer_overhead * 1e6,
                   "cpu_decode": _rates_json(cpu.decode), "cpu_prompt": _rates_json(cpu.prompt),
                   "gpu_gflops": gpu.flops / 1e9, "gpu_layer_us": gpu.layer_overhead * 1e6,
                   "gpu_graph_layer_us": None if gpu.graph_layer_overhead is None else gpu.graph_layer_overhead * 1e6},
        "rows": [{"ngl": r.n, "vram_bytes": list(r.vram), "ram_bytes": r.ram, "fits": r.fits,
                  "tg_tps": r.prediction.tg, "pp_tps": r.prediction.pp, "tg_sampled_tps": r.prediction.tg_sampled}
                 for r in p.rows],
    }


def parse_size(text: str, option: str) -> int:
    """'8G', '8GiB', '7.5g', '8192M', '512MiB' -> bytes (binary units: a "8 GB" card is 8 GiB here)."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}.get(t[-1:], None)
    try:
        return int(float(t[:-1] if mult else t) * (mult or 1 << 30))
    except ValueError:
        raise InputError(f"{option} {text}: give a size like 8G, 7.5G or 8192M") from None


def model_shape(model: Path, type_name: str | None) -> ModelShape:
    """A GGUF file (its own types; --type would be a mistake) or a Hugging Face directory + --type."""
    if model.is_dir():
        return shape_from_hf(model, type_name)
    if type_name:
        raise InputError(f"{model}: --type applies to a Hugging Face directory; a GGUF has its types already")
    return shape_from_gguf(model)


def machine_speeds(m: ModelShape, *, cpu_bw: float | None, gpu_bw: float | None, probe: bool,
                   n_threads: int | None = None, n_threads_batch: int | None = None) -> Speeds:
    """--cpu-bw / --gpu-bw (GB/s) when given; else a probe of the hardware present (the CPU always, at
    n_threads for decode and n_threads_batch for prompts, default the physical cores as the engine;
    CUDA when there is one); else the defaults of costmodel.py."""
    import torch

    from .costmodel import DEFAULT_CPU, DEFAULT_GPU, DeviceSpeed
    from .devices import cuda_reason

    types = {t for t, shape in m.tensors.values() if len(shape) == 2}
    block = {k: m.tensors[f"blk.0.{k}.weight"][0] for k in BLOCK_TENSORS if "norm" not in k}

    def given_speed(given: float, default: DeviceSpeed, flag: str) -> DeviceSpeed:
        if given <= 0:
            raise InputError(f"{flag} {given}: give a bandwidth in GB/s > 0")
        return DeviceSpeed(given * 1e9, default.flops, default.layer_overhead, source=flag)

    def cpu_speed() -> DeviceSpeed:
        if cpu_bw is not None:
            return given_speed(cpu_bw, DEFAULT_CPU, "--cpu-bw")
        if not probe:
            return DEFAULT_CPU
        from .generate import FUSED_UBATCH
        from .probe_native import native_ok, probe_native
        from .threads import physical_cores

        t = n_threads or physical_cores()
        tb = n_threads_batch or t
        shape = engine_shape(m)
        if native_ok(shape):  # the engine's path: fused native blocks
            return probe_native(shape, t, tb, FUSED_UBATCH)
        from .probe import probe_device

        torch.set_num_threads(t)
        return probe_device(torch.device("cpu"), types, block, n_in=m.n_embd)

    def gpu_speed() -> DeviceSpeed:
        if gpu_bw is not None:
            return given_speed(gpu_bw, DEFAULT_GPU, "--gpu-bw")
        if probe and cuda_reason() is None:
            from .probe import probe_device

            return probe_device(torch.device("cuda:0"), types, block, n_in=m.n_embd)
        return DEFAULT_GPU

    return Speeds(cpu=cpu_speed(), gpu=gpu_speed())


def plan_lines(p: Plan, rows: Sequence[int] | None = None) -> list[str]:
    """The plan as a markdown table (MiB per device, tokens/s), `auto` marked, then the speeds used."""
    n_dev = len(p.rows[0].vram) if p.rows else 1
    keep = set(rows if rows is not None else default_rows(p.shape.n_layer, p.auto))
    head = ["ngl", *(f"GPU{i} MiB" for i in range(n_dev)), "RAM MiB", "fits", "tg t/s", "pp t/s", ""]
    body = []
    for r in p.rows:
        if r.n not in keep:
            continue
        fits = "?" if r.fits is None else ("yes" if r.fits else "no")
        body.append([str(r.n), *(f"{v / 2**20:.0f}" for v in r.vram), f"{r.ram / 2**20:.0f}", fits,
                     f"{r.prediction.tg:.1f}", f"{r.prediction.pp:.1f}", "<- auto" if r.n == p.auto else ""])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    fmt = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [f"plan: {p.shape.name}, {p.shape.n_layer} layers + output, n_ctx {p.n_ctx}", fmt(head),
           "| " + " | ".join("-" * (w - 1) + ":" for w in widths) + " |", *map(fmt, body), p.auto_note]
    for label, d in (("CPU", p.speeds.cpu), ("GPU", p.speeds.gpu)):
        out.extend(speed_lines(label, d))
    return out


def speed_lines(label: str, d: DeviceSpeed) -> list[str]:
    """What the predictions assume of a device: the generic line, or the measured engine rates."""
    if d.decode is None or d.prompt is None:
        per = ", ".join(f"{t.name} {v / 1e9:.2f}" for t, v in d.by_type.items())
        return [f"{label}: {d.bandwidth / 1e9:.2f} GB/s effective ({d.source}{'; ' + per if per else ''}), "
                f"{d.flops / 1e9:.0f} GFLOP/s, {d.layer_overhead * 1e6:.0f} us per layer"
                + (f" ({d.graph_layer_overhead * 1e6:.0f} us in a decode CUDA graph)"
                   if d.graph_layer_overhead is not None else "")]
    busy = f", other processes kept {d.other_load:.1f} cores busy" if d.other_load and d.other_load > 0.25 else ""
    lines = [f"{label} ({d.source}, {d.threads} thread{'s' if d.threads != 1 else ''}{busy}): "
             + ", ".join(f"{t.name} {v / 1e9:.1f} GB/s" for t, v in sorted(d.by_type.items()))]
    for name, r in (("decode", d.decode), (f"prompt ({d.prompt.rows}-token steps)", d.prompt)):
        by: dict[str, list[float]] = {}
        for (t, _, _), v in r.matmul.items():
            by.setdefault(t.name, []).append(v / 1e9)
        rates = ", ".join(f"{t} {min(v):.0f}-{max(v):.0f}" if max(v) - min(v) >= 1 else f"{t} {v[0]:.0f}"
                          for t, v in sorted(by.items()))
        lines.append(f"  {name}: matmuls {rates} Gweights/s; {r.layer * 1e6:.0f} us per block + attention at "
                     f"{r.attn_flops / 1e9:.0f} GFLOP/s; {r.step * 1e6:.0f} us per step"
                     + (f"; sampling {r.sample * 1e6:.0f} us per token (not in tg)" if r.sample else ""))
    return lines
