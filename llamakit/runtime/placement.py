"""Where each part of the model lives: the one place device decisions are made. Pure: sizes, devices and
free memory in, a Placement out (no CUDA calls here; runtime/devices.py asks the hardware).

llama.cpp's -ngl semantics (src/llama-model.cpp:1315-1341): layers are the n_layer repeating blocks plus the
"output layer" (output_norm + output) counted as layer n_layer; the input layer (token_embd) always stays on
the CPU. With N = gpu_layers, i_gpu_start = max(n_layer - N, 0) and act = min(N, n_layer + 1): layer il is
offloaded iff i_gpu_start <= il < i_gpu_start + act, so the *last* N layers go to the accelerator and the
output layer only when N > n_layer. Offloaded layers are spread over the accelerators in contiguous runs:
layer il goes to the first device whose cumulative split exceeds (il - i_gpu_start) / act (llama.cpp's
upper_bound over the normalized --tensor-split; without one, in proportion to free memory, or evenly when
free memory is unknown). A block's KV cache lives with it.

`-ngl auto` (llama.cpp's --fit): the largest N whose weights + KV + compute reserve fit every accelerator
within its free memory minus the margin, and whose CPU part fits the system RAM (llama.cpp assumes RAM
is unlimited; a model that cannot fit at all is an OutOfMemoryError naming both sizes).

Each accelerator has a slot (0, 1, ...); HOST (-1) is the CPU. Slots, not device types, say where the
boundaries are, so a CPU device can stand in for an accelerator in tests (the transfers still happen and
are counted; runtime/boundary.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..errors import InputError, OutOfMemoryError

CPU = torch.device("cpu")
HOST = -1
MiB = 1 << 20
GiB = 1 << 30
SPLIT_MODES = ("layer", "none")
CACHE_TYPES = {"f32": 4, "f16": 2, "bf16": 2}  # -ctk / -ctv: bytes per cached value
AUTO = -1


@dataclass(frozen=True)
class PlacementOptions:
    """The device options of `run`, `bench`, `plan` and the Python API (llama.cpp's flag names).

    gpu_layers: -ngl; AUTO (-1) fits as many as the free memory allows (0 without an accelerator).
    fit_margin: bytes left free on every accelerator by auto (--fit-margin, MiB on the command line).
    tensor_split: --tensor-split proportions per accelerator (empty: by free memory).
    main_gpu / split_mode: --main-gpu, --split-mode ("none" puts every offloaded layer on main_gpu).
    devices: --device ("cuda:1", ...); empty = every CUDA device; ("none",) = no accelerator.
    cache_type: -ctk/-ctv for the KV cache size.
    """

    gpu_layers: int = AUTO
    fit_margin: int = 1024 * MiB
    tensor_split: tuple[float, ...] = ()
    main_gpu: int = 0
    split_mode: str = "layer"
    devices: tuple[str, ...] = ()
    cache_type: str = "f16"

    def __post_init__(self) -> None:
        if self.gpu_layers < AUTO:
            raise InputError(f"-ngl {self.gpu_layers}: give a layer count >= 0 or 'auto'")
        if self.split_mode not in SPLIT_MODES:
            raise InputError(f"--split-mode {self.split_mode}: use one of {', '.join(SPLIT_MODES)}")
        if self.cache_type not in CACHE_TYPES:
            raise InputError(f"-ctk {self.cache_type}: llamakit caches {', '.join(CACHE_TYPES)}")
        if any(s < 0 for s in self.tensor_split) or (self.tensor_split and sum(self.tensor_split) <= 0):
            raise InputError(f"--tensor-split {','.join(map(str, self.tensor_split))}: give non-negative "
                             f"proportions, not all zero")
        if self.fit_margin < 0:
            raise InputError("--fit-margin must be >= 0 MiB")


@dataclass(frozen=True)
class ModelSizes:
    """Bytes of each layer as loaded (packed weights, float32 norms/biases), the KV cache of one block for
    the context asked, and the compute reserve of a device that runs layers (activations and scratch)."""

    input: int  # token_embd (always on the CPU)
    blocks: tuple[int, ...]
    output: int  # output_norm + output (a tied output layer holds its own copy of the embedding on a GPU)
    kv_block: int
    compute: int
    compute_output: int = 0  # extra reserve where the output layer runs (logits)

    @property
    def n_layer(self) -> int:
        return len(self.blocks)

    def layer(self, il: int) -> int:
        """Weights + KV of layer il (il == n_layer: the output layer)."""
        return self.output if il == self.n_layer else self.blocks[il] + self.kv_block


def model_sizes(tensor_bytes: Mapping[str, int], n_layer: int, kv_block: int, compute: int,
                compute_output: int = 0, tied_output: bool = False) -> ModelSizes:
    """Group a model's tensors (GGUF name -> bytes as held in memory) into layers."""
    blocks = [0] * n_layer
    inp = out = 0
    for name, n in tensor_bytes.items():
        if name.startswith("blk."):
            blocks[int(name.split(".", 2)[1])] += n
        elif name.startswith("output"):
            out += n
        else:  # token_embd, rope_freqs (tiny, kept with the input)
            inp += n
    if tied_output:
        out += tensor_bytes.get("token_embd.weight", 0)
    return ModelSizes(inp, tuple(blocks), out, kv_block, compute, compute_output)


def kv_block_bytes(n_ctx: int, n_embd_kv: int, cache_type: str = "f16", n_seq: int = 1) -> int:
    """K and V of one block: 2 x (n_head_kv, n_ctx, head_dim) per sequence."""
    return 2 * n_ctx * n_embd_kv * CACHE_TYPES[cache_type] * n_seq


def compute_reserve(n_embd: int, n_embd_q: int, n_ff: int, n_head: int, n_embd_kv: int, n_vocab: int,
                    n_ctx: int, n_ubatch: int, scratch: int = 64 * MiB) -> tuple[int, int]:
    """(per device, extra where the output layer runs), float32 activations of one ubatch: the hidden
    states and projections (~4 n_embd + 2 n_embd_q + 3 n_ff per token), attention scores when the
    attention kernel materializes them (n_head x T x n_ctx), the float32 copy of one block's K/V, and the
    dequantization scratch of the prompt path; the output layer adds T x n_vocab logits."""
    t = n_ubatch
    act = 4 * t * (4 * n_embd + 2 * n_embd_q + 3 * n_ff)
    scores = 4 * n_head * t * n_ctx
    kv32 = 2 * 4 * n_ctx * n_embd_kv
    return act + scores + kv32 + scratch, 4 * t * n_vocab


@dataclass(frozen=True)
class Placement:
    input: torch.device  # token_embd
    blocks: tuple[torch.device, ...]  # blk.i (and its KV cache)
    output: torch.device  # output_norm + output
    slots: tuple[int, ...] = ()  # per layer (blocks, then the output layer): accelerator index or HOST
    accelerators: tuple[torch.device, ...] = ()
    gpu_layers: int = 0  # the N this placement realizes (auto resolved)
    usage: tuple[int, ...] = ()  # predicted bytes per accelerator (weights + KV + compute reserve)
    host_bytes: int = 0  # predicted bytes on the CPU
    free: tuple[int, ...] = ()  # free bytes per accelerator when placed
    note: str = ""  # what auto decided, one line

    @property
    def n_offloaded(self) -> int:
        """Layers (blocks + output layer) not on the CPU, as llama.cpp reports them (X of n_layer + 1)."""
        if self.slots:
            return sum(s != HOST for s in self.slots)
        return sum(d.type != "cpu" for d in (*self.blocks, self.output))


def _fractions(n_dev: int, opts: PlacementOptions, free: Sequence[int] | None) -> list[float]:
    """Cumulative split points (llama.cpp's `splits`), last one 1.0."""
    if opts.tensor_split:
        if len(opts.tensor_split) > n_dev:
            raise InputError(f"--tensor-split has {len(opts.tensor_split)} values for {n_dev} device(s)")
        raw = list(opts.tensor_split) + [0.0] * (n_dev - len(opts.tensor_split))
    elif free is not None and sum(free) > 0:
        raw = [float(max(f, 0)) for f in free]
    else:
        raw = [1.0] * n_dev
    total, acc, out = sum(raw), 0.0, []
    for r in raw:
        acc += r
        out.append(acc / total)
    return out


def assign_slots(n_layer: int, gpu_layers: int, n_dev: int, opts: PlacementOptions = PlacementOptions(),
                 free: Sequence[int] | None = None) -> tuple[int, ...]:
    """Slot of every layer 0..n_layer (n_layer = the output layer) for -ngl gpu_layers."""
    if n_dev == 0 or gpu_layers <= 0:
        return (HOST,) * (n_layer + 1)
    if not 0 <= opts.main_gpu < n_dev:
        raise InputError(f"--main-gpu {opts.main_gpu}: there are {n_dev} device(s) (0..{n_dev - 1})")
    start = max(n_layer - gpu_layers, 0)
    act = min(gpu_layers, n_layer + 1)
    splits = _fractions(n_dev, opts, free)

    def slot(il: int) -> int:
        if not start <= il < start + act:
            return HOST
        if opts.split_mode == "none" or n_dev == 1:
            return opts.main_gpu if opts.split_mode == "none" else 0
        x = (il - start) / act
        return min(next((i for i, s in enumerate(splits) if s > x), n_dev - 1), n_dev - 1)  # upper_bound

    return tuple(slot(il) for il in range(n_layer + 1))


def usage_of(slots: Sequence[int], sizes: ModelSizes, n_dev: int) -> tuple[list[int], int]:
    """(bytes per accelerator, bytes on the CPU) for a slot assignment, compute reserves included."""
    dev = [0] * n_dev
    host = sizes.input + sizes.compute
    for il, s in enumerate(slots):
        if s == HOST:
            host += sizes.layer(il)
        else:
            dev[s] += sizes.layer(il)
    out_slot = slots[sizes.n_layer]
    if out_slot == HOST:
        host += sizes.compute_output
    else:
        dev[out_slot] += sizes.compute_output
    for i in range(n_dev):
        if any(s == i for s in slots):
            dev[i] += sizes.compute
    return dev, host


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB"


def fits(used: int, free: int, margin: int) -> bool:
    """A device's share fits: nothing placed on it, or within its free memory minus the margin."""
    return used == 0 or used <= free - margin


def fit_gpu_layers(sizes: ModelSizes, free: Sequence[int], opts: PlacementOptions,
                   ram: int | None = None) -> tuple[int, str]:
    """(largest N that fits, a line saying why) for -ngl auto; OutOfMemoryError when the model fits
    nowhere (the CPU part is larger than the RAM even with as many layers on the accelerators as fit)."""
    n_layer = sizes.n_layer
    n = 0
    for cand in range(n_layer + 1, -1, -1):
        slots = assign_slots(n_layer, cand, len(free), opts, free)
        dev, _ = usage_of(slots, sizes, len(free))
        if all(fits(u, f, opts.fit_margin) for u, f in zip(dev, free)):
            n = cand
            break
    slots = assign_slots(n_layer, n, len(free), opts, free)
    dev, host = usage_of(slots, sizes, len(free))
    if ram is not None and host > ram:
        vram = ", ".join(f"{_gib(f)} free on accelerator {i}" for i, f in enumerate(free)) or "no accelerator"
        raise OutOfMemoryError(
            f"the model does not fit: with {n} of {n_layer + 1} layers on the GPU ({vram}, "
            f"{opts.fit_margin // MiB} MiB margin) the CPU part needs {_gib(host)} but only {_gib(ram)} of RAM "
            f"is available; use a smaller quantization or context (-c), or free memory")
    why = (f"-ngl auto: {n} of {n_layer + 1} layers fit ("
           + ", ".join(f"dev{i}: {_gib(u)} of {_gib(f)} free" for i, (u, f) in enumerate(zip(dev, free)))
           + f", margin {opts.fit_margin // MiB} MiB; CPU {_gib(host)})")
    return n, why


def place(sizes: ModelSizes, opts: PlacementOptions, accelerators: Sequence[torch.device] = (),
          free: Sequence[int] | None = None, ram: int | None = None) -> Placement:
    """The placement for `opts` over `accelerators` whose free bytes are `free` (None: unknown, then auto
    offloads nothing and -ngl N is not checked)."""
    accelerators = tuple(torch.device(d) for d in accelerators)
    n_dev, n_layer = len(accelerators), sizes.n_layer
    if free is not None and len(free) != n_dev:
        raise ValueError("free memory must be given for every accelerator")
    note = ""
    if opts.gpu_layers == AUTO:
        if n_dev and free is not None:
            n, note = fit_gpu_layers(sizes, free, opts, ram)
        else:
            n = 0
    else:
        n = opts.gpu_layers if n_dev else 0
    slots = assign_slots(n_layer, n, n_dev, opts, free)
    dev, host = usage_of(slots, sizes, n_dev)
    if opts.gpu_layers != AUTO and free is not None:
        weights, _ = usage_of(slots, ModelSizes(sizes.input, sizes.blocks, sizes.output, sizes.kv_block, 0), n_dev)
        for i, (u, f) in enumerate(zip(weights, free)):
            if u > f:
                raise OutOfMemoryError(out_of_memory_line(accelerators[i], u, f, suggest_gpu_layers(sizes, free, opts)))
    devs = tuple(CPU if s == HOST else accelerators[s] for s in slots)
    return Placement(input=CPU, blocks=devs[:n_layer], output=devs[n_layer], slots=slots,
                     accelerators=accelerators, gpu_layers=min(n, n_layer + 1), usage=tuple(dev), host_bytes=host,
                     free=tuple(free or ()), note=note)


def suggest_gpu_layers(sizes: ModelSizes, free: Sequence[int], opts: PlacementOptions) -> int:
    """The -ngl that auto would choose (RAM not checked): what an out-of-memory error suggests."""
    return fit_gpu_layers(sizes, free, opts)[0]


def out_of_memory_line(device: torch.device | str, asked: int, free: int, suggest: int | None) -> str:
    """The one line of an out-of-memory error: the device, what was asked, what was free, an -ngl that fits."""
    tail = f"; try -ngl {suggest} (or -ngl auto)" if suggest is not None else "; lower -ngl or -c"
    return f"out of memory on {device}: {asked / MiB:.0f} MiB asked, {free / MiB:.0f} MiB free{tail}"


def scaled_suggestion(placement: Placement, slot: int, free_now: int | None = None) -> int | None:
    """An -ngl that should fit when slot's device ran out of memory: the layers scaled by free / used."""
    if not placement.usage or not placement.free or placement.gpu_layers <= 0:
        return None
    used, free = placement.usage[slot], placement.free[slot] if free_now is None else free_now
    return max(0, int(placement.gpu_layers * free / max(used, 1)) - 1)


def place_layers(n_layer: int, gpu_layers: int, devices: Sequence[torch.device] = (),
                 opts: PlacementOptions | None = None) -> Placement:
    """-ngl N without sizes (no memory check): the device of every layer over the accelerators `devices`.
    gpu_layers < 0 (auto without sizes) offloads nothing. With no accelerators everything is on the CPU."""
    o = opts or PlacementOptions()
    devices = tuple(torch.device(d) for d in devices)
    n = max(gpu_layers, 0) if devices else 0
    slots = assign_slots(n_layer, n, len(devices), o)
    devs = tuple(CPU if s == HOST else devices[s] for s in slots)
    return Placement(input=CPU, blocks=devs[:n_layer], output=devs[n_layer], slots=slots, accelerators=devices,
                     gpu_layers=min(n, n_layer + 1))


@dataclass(frozen=True)
class DeviceInfo:
    """An accelerator as runtime/devices.py found it."""

    device: torch.device
    name: str = ""
    free: int = 0
    total: int = 0


def graph_segments(placement: Placement, eligible: Sequence[bool], everywhere: bool = False
                   ) -> list[tuple[int, int]]:
    """Runs [start, end) of consecutive eligible blocks on one device whose single-token decode is replayed
    from CUDA graphs (runtime/decode_graph.py): blocks on a CUDA device, or with `everywhere` (tests, the
    CPU standing in for an accelerator) on any device. `eligible[i]`: block i runs torch code (not the
    native fused path)."""
    runs: list[tuple[int, int]] = []
    start = None
    # a run stays on one device and in one slot (a CPU standing in for an accelerator is the host's device)
    where = [(d, placement.slots[i] if placement.slots else 0) for i, d in enumerate(placement.blocks)]
    for i, dev in enumerate(placement.blocks):
        ok = eligible[i] and (everywhere or dev.type == "cuda")
        if start is not None and (not ok or where[i] != where[start]):
            runs.append((start, i))
            start = None
        if ok and start is None:
            start = i
    if start is not None:
        runs.append((start, len(placement.blocks)))
    return runs
