"""The planner's cost model (pure): predicted generation and prompt tokens/s of a placement.

Every device is described the same way (`DeviceSpeed`): the bytes its kernels stream per second for each
weight type, a flop rate, and a fixed cost per layer per step. A layer then costs, per step of T tokens,
    weights   sum over its tensors of  nbytes / bandwidth(type)   (+ 2 T params / flops when T > 1)
    attention max(KV bytes read / bandwidth, 4 slots n_embd_q / attention flop rate)
    fixed     layer_overhead (+ token_overhead per token of the step); a one-token step of a GPU block:
              graph_layer_overhead where probed (decode replays CUDA graphs)
plus, once per step, `step_overhead` (the host's Python, the embedding, the output norm); every boundary
crossing adds a latency and n_embd float32 per token over the link. A step reads the cache once (up
to its last position); its tokens attend to T p + T (T + 1) / 2 slots after p cached positions (a
decode at depth d: d + 1).

Where the engine's own rates were measured (`EngineRates`, runtime/probe_native.py on the CPU: the
native kernels at the model's matmul shapes, a real fused block for the rest, a tiny model through the
real Context for the Python), they replace the generic terms for that device, per step kind: `decode`
(one token) and `prompt` (the engine's physical batch, `rows` tokens; the fused CPU path runs prompts
32 tokens at a time, so a pp512 is 16 steps, each streaming every weight). A GPU keeps the generic form
(bytes at a bandwidth + a launch cost per layer) until someone measures it (scripts/gpu_check.sh).

A prompt of n tokens is evaluated as llama.cpp and llamakit do it: ceil(n / ubatch) steps; only the last
step computes logits, for its last token (the output layer runs once, one row).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..gguf.constants import GGMLType
from .placement import HOST

GB = 1e9

MatShape = tuple[GGMLType, int, int]  # (ggml type, rows = out features, cols = in features)


@dataclass(frozen=True)
class EngineRates:
    """Measured costs of one step kind on one device: `rows` tokens per step (1: decode)."""

    rows: int
    matmul: Mapping[MatShape, float]  # weights x rows per second of one matmul call, by shape
    layer: float  # s per block per step besides its matmuls and attention (other phases, Python)
    attn_flops: float  # attention flop/s (4 flops per slot per q dimension)
    step: float  # s per step outside the blocks (Python, embedding, output norm)
    sample: float = 0.0  # s to sample one token from the logits (llama.cpp's default chain; not in a bench)

    def matmul_s(self, t: "TensorCost", n_rows: int) -> float | None:
        r = self.matmul.get((t.ggml_type, t.rows, t.params // t.rows)) if t.rows else None
        return None if r is None else n_rows * t.params / r


@dataclass(frozen=True)
class DeviceSpeed:
    """One device's effective speeds (bytes/s of packed weights per type, f32 flop/s, s per layer)."""

    bandwidth: float  # default for types not in `by_type`
    flops: float
    layer_overhead: float
    by_type: Mapping[GGMLType, float] = field(default_factory=dict)
    source: str = "default"  # "probe" or "default" / "--gpu-bw"
    decode: EngineRates | None = None  # measured one-token steps (replace the generic terms)
    prompt: EngineRates | None = None  # measured prompt steps
    threads: int | None = None  # what the rates were measured with (CPU)
    other_load: float | None = None  # cores other processes kept busy during the probe
    graph_layer_overhead: float | None = None  # one-token steps replayed from CUDA graphs (None: as eager)

    def bw(self, t: GGMLType) -> float:
        return self.by_type.get(t, self.bandwidth)


@dataclass(frozen=True)
class Speeds:
    cpu: DeviceSpeed
    gpu: DeviceSpeed
    link_bandwidth: float = 12 * GB  # PCIe 4.0 x16, achieved
    link_latency: float = 20e-6  # per boundary copy (launch + sync)


# Defaults when there is nothing to probe: a mid-range GPU (RTX 3060/4060 class: ~360 GB/s peak, fused
# kernels reach ~70%), a desktop's dual-channel DDR4 read by a fused CPU kernel. Both are overridable.
DEFAULT_GPU = DeviceSpeed(bandwidth=250 * GB, flops=10e12, layer_overhead=60e-6)
DEFAULT_CPU = DeviceSpeed(bandwidth=20 * GB, flops=200e9, layer_overhead=150e-6)


@dataclass(frozen=True)
class TensorCost:
    ggml_type: GGMLType
    nbytes: int
    params: int
    rows: int = 0  # out features (0: unknown; then only the per-type rates apply)


@dataclass(frozen=True)
class LayerCost:
    """A layer as the cost model sees it: its weights, and its KV/attention shape (0 for the output layer)."""

    tensors: tuple[TensorCost, ...]
    n_embd_kv: int = 0
    n_embd_q: int = 0

    @property
    def params(self) -> int:
        return sum(t.params for t in self.tensors)


@dataclass(frozen=True)
class Prediction:
    tg: float  # generated tokens/s
    pp: float  # prompt tokens/s
    tg_device_s: tuple[float, float]  # (CPU, GPU) seconds per generated token
    tg_sampled: float = 0.0  # generated tokens/s with sampling (what `llamakit run` does; a bench does not)


def _weights_s(layer: LayerCost, dev: DeviceSpeed, n_rows: int, rates: EngineRates | None) -> float:
    s = 0.0
    for t in layer.tensors:
        m = rates.matmul_s(t, n_rows) if rates is not None else None
        if m is None:  # generic: stream the bytes once, plus the flops of a batch
            m = t.nbytes / dev.bw(t.ggml_type) + (2 * n_rows * t.params / dev.flops if n_rows > 1 else 0.0)
        s += m
    return s


def layer_step_s(layer: LayerCost, dev: DeviceSpeed, n_tokens: int, kv_len: int, kv_bytes: int,
                 rates: EngineRates | None) -> float:
    """Seconds one step of n_tokens spends in `layer` on `dev`, ending with kv_len positions cached (its
    tokens at kv_len - n_tokens ...). The output layer computes one token's logits (the last) whatever
    the step. Attention: the cache is read once per step, and each token does 4 n_embd_q flops per slot
    it attends to."""
    if layer.n_embd_kv == 0:
        # measured: the output matmul at one row (its norm and call are in the step's overhead)
        if dev.decode is not None:
            return _weights_s(layer, dev, 1, dev.decode)
        return _weights_s(layer, dev, 1, None) + dev.layer_overhead
    w = _weights_s(layer, dev, n_tokens, rates)
    kv = 2 * kv_len * layer.n_embd_kv * kv_bytes / dev.bandwidth
    p0 = kv_len - n_tokens
    flops = 4 * (n_tokens * p0 + n_tokens * (n_tokens + 1) // 2) * layer.n_embd_q
    attn = max(kv, flops / (rates.attn_flops if rates is not None else dev.flops))
    fixed = rates.layer if rates is not None else dev.layer_overhead
    if rates is None and n_tokens == 1 and dev.graph_layer_overhead is not None:
        fixed = dev.graph_layer_overhead  # decode_graph.py replays one-token steps of GPU blocks
    return w + attn + fixed


def predict(layers: Sequence[LayerCost], slots: Sequence[int], n_embd: int, speeds: Speeds, *,
            kv_bytes: int = 2, depth: int = 64, n_ubatch: int = 512, n_prompt: int | None = None) -> Prediction:
    """Tokens/s for layers (blocks then the output layer) placed by `slots` (HOST = CPU).

    depth: positions already in the cache during generation (tg128 averages 64); n_prompt: the prompt
    of the pp test (default n_ubatch: a pp512 at -ub 512), processed in steps of n_ubatch tokens, or of
    the CPU engine's physical batch when CPU blocks run with measured prompt rates."""
    assert len(layers) == len(slots)
    cpu, gpu = speeds.cpu, speeds.gpu
    n_blocks = len(layers) - 1
    cpu_blocks = sum(1 for s in slots[:n_blocks] if s == HOST)
    crossings = sum(1 for a, b in zip((HOST, *slots), (*slots, HOST)) if a != b)
    host = cpu.decode.step if cpu.decode is not None else 0.0  # the host's work per step, wherever layers run

    tg = [0.0, 0.0]  # seconds per token on (CPU, GPU)
    for layer, slot in zip(layers, slots):
        dev = gpu if slot != HOST else cpu
        tg[slot != HOST] += layer_step_s(layer, dev, 1, depth + 1, kv_bytes, dev.decode)
    link_tg = crossings * (speeds.link_latency + 4 * n_embd / speeds.link_bandwidth)

    n = n_prompt if n_prompt is not None else n_ubatch
    ub = n_ubatch
    if cpu_blocks and cpu.prompt is not None:
        ub = min(ub, cpu.prompt.rows)  # the fused CPU blocks' physical batch applies to the whole model
    step_host = cpu.prompt.step if cpu.prompt is not None else 0.0
    pp_s = 0.0
    for p0 in range(0, n, ub):
        t = min(ub, n - p0)
        last = p0 + t == n
        for layer, slot in zip(layers, slots):
            dev = gpu if slot != HOST else cpu
            if layer.n_embd_kv == 0 and not last:
                continue  # no logits wanted from this step
            pp_s += layer_step_s(layer, dev, t, p0 + t, kv_bytes, dev.prompt)
        pp_s += step_host + crossings * (speeds.link_latency + 4 * n_embd * t / speeds.link_bandwidth)
    step_tg = tg[0] + tg[1] + link_tg + host
    sample = cpu.decode.sample if cpu.decode is not None else 0.0
    return Prediction(tg=1.0 / step_tg, pp=n / pp_s, tg_device_s=(tg[0], tg[1]), tg_sampled=1.0 / (step_tg + sample))
