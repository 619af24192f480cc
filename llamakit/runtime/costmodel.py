"""The planner's cost model (pure): predicted generation and prompt tokens/s of a placement, from the bytes
each device moves per token.

Generation (one token per step) is memory-bound: every weight of a layer is read once per token, so a
layer costs  sum over its tensors of bytes / bandwidth(device, type)  plus a fixed per-layer overhead
(kernel launches, the ~25 small torch ops of a block), plus its KV cache read at the current depth. Each
boundary crossing adds a latency and n_embd float32 over the link (PCIe).
Prompt processing (a ubatch of T tokens per step) reads the weights once per ubatch and does 2 T params
flops per layer, plus the attention's ~2 T^2 n_embd_q (causal, from an empty cache): per ubatch the
device time is  bytes / bandwidth + flops / flop rate + overhead.
Bandwidths are *effective* rates of the kernels on packed bytes (what runtime/probe.py measures by
running them), not the memory's peak: a torch kernel that dequantizes to float32 moves ~3x the bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..gguf.constants import GGMLType
from .placement import HOST

GB = 1e9


@dataclass(frozen=True)
class DeviceSpeed:
    """One device's effective speeds (bytes/s of packed weights per type, f32 flop/s, s per layer)."""

    bandwidth: float  # default for types not in `by_type`
    flops: float
    layer_overhead: float
    by_type: Mapping[GGMLType, float] = field(default_factory=dict)
    source: str = "default"  # "probe" or "default" / "--gpu-bw"

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


def _weights_s(layer: LayerCost, dev: DeviceSpeed) -> float:
    return sum(t.nbytes / dev.bw(t.ggml_type) for t in layer.tensors)


def predict(layers: Sequence[LayerCost], slots: Sequence[int], n_embd: int, speeds: Speeds, *,
            kv_bytes: int = 2, depth: int = 64, n_ubatch: int = 512) -> Prediction:
    """Tokens/s for layers (blocks then the output layer) placed by `slots` (HOST = CPU).

    depth: positions already in the cache during generation (tg128 averages 64); n_ubatch: prompt tokens
    per step (a pp512 run of one 512-token ubatch)."""
    assert len(layers) == len(slots)
    tg = [0.0, 0.0]  # seconds per token on (CPU, GPU)
    pp = [0.0, 0.0]
    t = n_ubatch
    for layer, slot in zip(layers, slots):
        on_gpu = slot != HOST
        dev = speeds.gpu if on_gpu else speeds.cpu
        w = _weights_s(layer, dev)
        kv = 2 * depth * layer.n_embd_kv * kv_bytes / dev.bandwidth
        tg[on_gpu] += w + kv + dev.layer_overhead
        rows = 1 if layer.n_embd_kv == 0 else t  # the output layer computes the last token's logits only
        attn = 2 * t * t * layer.n_embd_q
        pp[on_gpu] += w + (2 * rows * layer.params + attn) / dev.flops + dev.layer_overhead
    crossings = sum(1 for a, b in zip((HOST, *slots), (*slots, HOST)) if a != b)
    link_tg = crossings * (speeds.link_latency + 4 * n_embd / speeds.link_bandwidth)
    link_pp = crossings * (speeds.link_latency + 4 * n_embd * t / speeds.link_bandwidth)
    step_tg = tg[0] + tg[1] + link_tg
    step_pp = pp[0] + pp[1] + link_pp
    return Prediction(tg=1.0 / step_tg, pp=t / step_pp, tg_device_s=(tg[0], tg[1]))
