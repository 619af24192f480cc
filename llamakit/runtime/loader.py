"""GGUF -> a Llama module whose weights are the file's bytes.

The model is built on the meta device (no memory), then every buffer is assigned (`load_state_dict(assign=
True)`) a zero-copy uint8 view into the memory-mapped file, so loading reads nothing and a weight occupies
its file pages only once they are used. `use_mmap=False` reads each tensor into ordinary memory instead
(llama.cpp's --no-mmap: read(), so the file's pages are never mapped into the process) and closes the file.
1-D float tensors (norms, biases, rope_freqs) become float32: F32 ones as views, others converted. Blocks go
where placement.py says: `-ngl`/`auto` over the accelerators runtime/devices.py finds (or that the caller
passes), from the layer sizes of this file; weights are copied to their device once, still packed (a CUDA
out-of-memory there is one OutOfMemoryError line). A split model gets a Boundary (runtime/boundary.py) as
its `hop`: the hidden state crosses each device boundary once per step.

Kernels: every packed weight gets its kernel from `kernels.registry.kernel_for` (backend "auto" | "native" |
"torch"). A kernel that computes from the file's bytes keeps the view; one that repacks (native, int4pack)
gets the bytes read() into a temporary (never through the map, so the file's pages do not become part of
the process's RSS next to the repacked copy) and keeps only its prepared form. A tied output layer shares
the embedding's prepared tensor when both use the same kernel.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import GGUFFormatError, InputError
from ..gguf import GGUFReader
from ..gguf.constants import GGMLType
from ..model import Llama, LlamaConfig
from ..kernels.registry import kernel_for, unavailable_line
from ..model.layers import QuantEmbedding, QuantLinear
from ..quants import as_tensor, get_codec
from .memory import trim_heap
from .boundary import Boundary
from .devices import cuda_oom, find_accelerators, ram_available
from .placement import (DeviceInfo, Placement, PlacementOptions, compute_reserve, kv_block_bytes,
                        model_sizes, place, place_layers)


@dataclass
class LoadedModel:
    model: Llama
    config: LlamaConfig
    metadata: dict[str, Any]
    path: Path
    placement: Placement
    file_bytes: int
    tensor_bytes: int
    n_params: int
    t_start: float  # time.perf_counter() when loading began (llama.cpp's load time runs from here)
    backend: str = "auto"
    variant: str | None = None  # the native variant asked for (None: the best this CPU runs)
    boundary: Boundary | None = None  # set when the model is split over devices (counts transfers)
    _reader: GGUFReader | None = field(default=None, repr=False)

    def kernel_summary(self) -> dict[str, int]:
        """How many weights each kernel computes, e.g. {"native-avx512": 211, "torch-dequant": 1}."""
        return dict(Counter(m.kernel.name for m in self.model.modules()
                            if isinstance(m, (QuantLinear, QuantEmbedding))))

    def close(self) -> None:
        """Drop the weights and unmap the file."""
        self.model = None  # type: ignore[assignment]
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self) -> "LoadedModel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _float_vector(data: torch.Tensor, ggml_type: GGMLType, n: int, what: str) -> torch.Tensor:
    """Raw bytes of a 1-D tensor -> float32 (n,): a view for F32, a converted copy otherwise."""
    if ggml_type == GGMLType.F32:
        return data.view(torch.float32)
    return get_codec(ggml_type, what=what).dequantize(data).reshape(n)


def load_model(path: str | Path, *, use_mmap: bool = True, gpu_layers: int = 0,
               devices: tuple[torch.device, ...] = (), backend: str = "auto", variant: str | None = None,
               log: Callable[[str], None] | None = None, options: PlacementOptions | None = None,
               accelerators: tuple[DeviceInfo, ...] | None = None, n_ctx: int = 4096,
               n_ubatch: int = 512) -> LoadedModel:
    """Open a llama GGUF and build the model. Raises LlamakitError subclasses naming the file.
    `backend`/`variant` choose the kernels (kernels/registry.py); `log` gets the one line saying the native
    kernels are unavailable when "auto" falls back to torch.

    Placement: with `options`, -ngl (or auto) over `accelerators` (None: the CUDA devices found), fitted to
    their free memory for a context of n_ctx (0: the model's) and n_ubatch; without, the plain -ngl
    `gpu_layers` over `devices` (no memory check)."""
    t_start = time.perf_counter()
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such model file; pass an existing .gguf with -m")
    reader = GGUFReader(path)
    try:
        if backend == "auto" and log is not None:
            line = unavailable_line(variant)
            if line:
                log(line)
        plan = _Plan(gpu_layers, tuple(devices), options, accelerators, n_ctx, n_ubatch)
        lm = _load(reader, path, use_mmap, plan, t_start, backend, variant)
        return lm
    except BaseException:
        reader.close()
        raise


@dataclass(frozen=True)
class _Plan:
    gpu_layers: int
    devices: tuple[torch.device, ...]
    options: PlacementOptions | None
    accelerators: tuple[DeviceInfo, ...] | None
    n_ctx: int
    n_ubatch: int


def _place(reader: GGUFReader, cfg: LlamaConfig, plan: _Plan) -> Placement:
    if plan.options is None:
        return place_layers(cfg.n_layer, plan.gpu_layers, plan.devices)
    opts = plan.options
    why = None
    if plan.accelerators is None:
        found, why = find_accelerators(opts.devices)
        accs = tuple(found)
    else:
        accs = plan.accelerators
    n_ctx = plan.n_ctx or cfg.n_ctx_train
    held = {t.name: (t.nbytes if len(t.shape) == 2 else 4 * t.n_elements) for t in reader.tensors}
    compute, compute_out = compute_reserve(cfg.n_embd, cfg.n_embd_q, cfg.n_ff, cfg.n_head, cfg.n_embd_kv,
                                           cfg.n_vocab, n_ctx, plan.n_ubatch)
    sizes = model_sizes(held, cfg.n_layer, kv_block_bytes(n_ctx, cfg.n_embd_kv, opts.cache_type), compute,
                        compute_out, cfg.tied_output)
    placement = place(sizes, opts, [a.device for a in accs], [a.free for a in accs], ram_available())
    if not accs and why is not None:
        placement = replace(placement, note=f"no usable CUDA device: {why}")
    return placement


def _load(reader: GGUFReader, path: Path, use_mmap: bool, plan: _Plan, t_start: float, backend: str,
          variant: str | None) -> LoadedModel:
    metadata = reader.metadata
    infos = {t.name: t for t in reader.tensors}
    cfg = LlamaConfig.from_gguf(metadata, infos, what=str(path))
    placement = _place(reader, cfg, plan)
    for t in reader.tensors:  # IQ* and other types llamakit cannot compute: name tensor and type
        get_codec(t.ggml_type, what=f"{path}: tensor {t.name}")
    types = {name: t.ggml_type for name, t in infos.items()}
    missing = [n for n in ("token_embd.weight", "output_norm.weight") if n not in infos]
    if missing:
        raise GGUFFormatError(f"{path}: tensor {missing[0]} is missing; the file is not a complete llama model")
    try:
        with torch.device("meta"):
            model = Llama(cfg, types)
    except KeyError as e:
        raise GGUFFormatError(f"{path}: tensor {e.args[0]} is missing; the file is not a complete llama model"
                              ) from None

    modules = dict(model.named_modules())
    state: dict[str, torch.Tensor] = {}
    kernels: dict[str, Any] = {}
    copies: dict[str, torch.Tensor] = {}  # --no-mmap: tensor bytes read into owned memory, once per tensor
    prepared: dict[tuple[str, str], torch.Tensor] = {}  # (source, kernel name) -> prepared form
    swapped: dict[str, torch.Tensor] = {}  # buffer name -> prepared form
    with open(path, "rb") as fh:
        def read(info: Any) -> torch.Tensor:
            # read(), not the map: the file's pages never become part of our RSS
            buf = torch.empty(info.nbytes, dtype=torch.uint8)
            fh.seek(info.offset)
            if fh.readinto(memoryview(buf.numpy())) != info.nbytes:
                raise GGUFFormatError(f"{path}: tensor {info.name} is truncated")
            return buf

        for name, target in model.state_dict(keep_vars=True).items():
            source = "token_embd.weight" if (name == "output.weight" and cfg.tied_output) else name
            info = infos.get(source)
            if info is None:
                raise GGUFFormatError(f"{path}: tensor {source} is missing; the file is not a complete llama model")
            dev = _device_of(name, placement)
            if target.dtype != torch.uint8:
                n = target.numel()
                if info.shape != (n,):
                    raise GGUFFormatError(f"{path}: tensor {source} has shape {list(info.shape)}, expected [{n}]")
                # read(), even with mmap: a touch of a norm's page maps the file around it (fault-around,
                # large folios: measured 2 MiB per block), next to weights that live in prepared copies
                data = read(info)
                with cuda_oom(dev, placement):
                    state[name] = _float_vector(data, info.ggml_type, n, f"{path}: tensor {source}").to(dev)
                continue
            # packed weight rows
            if info.nbytes != target.numel() or len(info.shape) != 2:
                raise GGUFFormatError(f"{path}: tensor {source} has shape {list(info.shape)} ({info.ggml_type.name}); "
                                      f"the metadata implies {target.shape[0]} rows of {target.shape[1]} bytes")
            mod = modules[name.rsplit(".", 1)[0]]
            kernel = kernel_for(info.ggml_type, dev.type, backend=backend, variant=variant,
                                what=f"{path}: tensor {source}",
                                use="rows" if isinstance(mod, QuantEmbedding) else "linear")
            kernels[name] = kernel
            if getattr(kernel, "identity_prepare", False):  # computes from the file's bytes
                if use_mmap:
                    data = as_tensor(reader.tensor_data(info))
                else:
                    if source not in copies:
                        copies[source] = read(info)
                    data = copies[source]
                with cuda_oom(dev, placement):
                    state[name] = data.view(target.shape).to(dev)
                continue
            key = (source, kernel.name)
            if key not in prepared:
                raw = copies[source] if source in copies else read(info)
                with cuda_oom(dev, placement):
                    prepared[key] = kernel.prepare(raw.view(target.shape)).to(dev)
                del raw
                trim_heap()  # the repacking temporaries, freed but scattered between the prepared tensors
            swapped[name] = prepared[key]  # another shape than the file's rows: set after load_state_dict
    del copies, prepared
    model.load_state_dict(state, assign=True, strict=False)
    for name, kernel in kernels.items():
        modules[name.rsplit(".", 1)[0]].set_kernel(kernel, swapped.get(name))
    del state, swapped
    assert not any(t.is_meta for t in model.state_dict().values())
    file_bytes = path.stat().st_size
    tensor_bytes = sum(t.nbytes for t in reader.tensors)
    n_params = sum(t.n_elements for t in reader.tensors)
    if not use_mmap:
        reader.close()
        reader = None  # type: ignore[assignment]
    boundary = None
    if placement.n_offloaded:
        boundary = Boundary(placement)
        model.hop = boundary  # type: ignore[method-assign]  # instance attribute: this model's transfers
    return LoadedModel(model=model, config=cfg, metadata=metadata, path=path, placement=placement,
                       file_bytes=file_bytes, tensor_bytes=tensor_bytes, n_params=n_params, t_start=t_start,
                       backend=backend, variant=variant, boundary=boundary, _reader=reader)


def _device_of(name: str, placement: Placement) -> torch.device:
    if name.startswith("blk."):
        return placement.blocks[int(name.split(".", 2)[1])]
    if name.startswith(("output", "rope_freqs")):
        # rope_freqs is tiny and read by every block; it is copied where needed
        return placement.output if name.startswith("output") else placement.input
    return placement.input
