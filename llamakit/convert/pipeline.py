"""Checkpoint directory -> GGUF: plan (names, types, shapes, metadata; nothing read), then stream tensors.

Metadata order, as convert_hf_to_gguf.py writes it for a llama:
    general.architecture, general.type, general.name ... general.size_label ... (general.py),
    llama.* up to general.file_type, llama.vocab_size, llama.rope.* (params.py),
    tokenizer.* (vocab.py), general.quantization_version
Tensor order: rope_freqs.weight first (when generated), then the checkpoint's own order (hf.py / meta.py).
Tensor types (prepare_tensors): 1-D tensors, *_norm.weight and anything not ending in .weight stay F32; the rest
get the outtype; Q8_0 rows whose length is not a multiple of 32 fall back to F16.

Each tensor is read, converted in row chunks (bounded temporaries) and written before the next is read, so peak
memory is about the largest tensor twice (source + encoded), not the model.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..errors import InputError
from ..gguf import GGMLType, GGUFValue, GGUFValueType, GGUFWriter, Keys, LlamaFileType
from ..gguf.constants import GGML_BLOCK, QUANTIZATION_VERSION, tensor_nbytes
from ..quants import get_codec
from .general import general_metadata
from .params import ARCH, llama3_rope_factors
from .source import SourceTensor

T = GGUFValueType
OUTTYPES: dict[str, tuple[GGMLType, LlamaFileType]] = {
    "f32": (GGMLType.F32, LlamaFileType.ALL_F32),
    "f16": (GGMLType.F16, LlamaFileType.MOSTLY_F16),
    "bf16": (GGMLType.BF16, LlamaFileType.MOSTLY_BF16),
    "q8_0": (GGMLType.Q8_0, LlamaFileType.MOSTLY_Q8_0),
}
_TORCH_OF = {GGMLType.F32: torch.float32, GGMLType.F16: torch.float16, GGMLType.BF16: torch.bfloat16}
_CHUNK = 1 << 20  # elements quantized at a time: bounds the codec's float32 temporaries to ~4 MiB each


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    shape: tuple[int, ...]  # torch order
    ggml_type: GGMLType
    source_dtype: torch.dtype
    nbytes: int
    load: Callable[[], torch.Tensor]
    note: str | None = None  # why the type differs from the outtype, if it does for a reason worth telling


@dataclass
class ConversionPlan:
    model_dir: Path
    kind: str  # "hf" or "meta"
    outtype: str  # resolved (never "auto")
    outfile: Path
    vocab_only: bool
    metadata: dict[str, GGUFValue]
    tensors: list[PlannedTensor]
    warnings: list[str] = field(default_factory=list)
    _close: Callable[[], None] = lambda: None

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def n_params(self) -> int:
        return sum(math.prod(t.shape) for t in self.tensors)

    def close(self) -> None:
        self._close()

    def __enter__(self) -> "ConversionPlan":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class ConvertResult:
    outfile: Path
    file_bytes: int
    n_tensors: int
    seconds: float


def tensor_type(name: str, shape: tuple[int, ...], outtype: GGMLType) -> tuple[GGMLType, str | None]:
    if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return GGMLType.F32, None
    block = GGML_BLOCK[outtype].block_size
    if shape[-1] % block:
        return GGMLType.F16, f"row length {shape[-1]} is not a multiple of {block}: F16 instead of {outtype.name}"
    return outtype, None


def _open(model_dir: Path, warnings: list[str], need_weights: bool, n_ctx: int | None) -> Any:
    from .hf import HFCheckpoint
    from .meta import MetaCheckpoint

    if not model_dir.is_dir():
        raise InputError(f"{model_dir}: not a directory; pass the folder holding the checkpoint")
    if (model_dir / "config.json").is_file():
        return HFCheckpoint(model_dir, warnings, need_weights=need_weights, n_ctx=n_ctx)
    if (model_dir / "params.json").is_file():
        return MetaCheckpoint(model_dir, warnings, need_weights=need_weights, n_ctx=n_ctx)
    raise InputError(f"{model_dir}: neither config.json (Hugging Face) nor params.json (Meta) found; "
                     "point at the checkpoint's directory")


def default_outfile(model_dir: Path, outtype: str, vocab_only: bool) -> Path:
    return model_dir / f"{model_dir.resolve().name}-{'vocab' if vocab_only else outtype}.gguf"


def plan_conversion(model_dir: str | Path, outtype: str = "f16", outfile: str | Path | None = None,
                    vocab_only: bool = False, n_ctx: int | None = None) -> ConversionPlan:
    """Everything that will be written, decided from headers and configs only (no tensor data is read).
    Use as a context manager: the plan keeps the checkpoint files open for `write_gguf`."""
    from .vocab import vocab_metadata

    model_dir = Path(model_dir)
    outtype = outtype.lower()
    if outtype not in (*OUTTYPES, "auto"):
        raise InputError(f"unknown --outtype {outtype!r}; choose one of {', '.join((*OUTTYPES, 'auto'))}")
    warnings: list[str] = []
    ckpt = _open(model_dir, warnings, need_weights=not vocab_only or outtype == "auto", n_ctx=n_ctx)
    try:
        if outtype == "auto":
            if not ckpt.tensors:
                raise InputError(f"{model_dir}: --outtype auto needs the weights to look at")
            outtype = "f16" if ckpt.tensors[0].dtype == torch.float16 else "bf16"
        ggml_out, ftype = OUTTYPES[outtype]
        p = ckpt.params

        planned: list[PlannedTensor] = []
        if not vocab_only:
            sources: list[SourceTensor] = list(ckpt.tensors)
            if p.llama3_rope is not None:
                factors = llama3_rope_factors(p)
                sources.insert(0, SourceTensor("rope_freqs.weight", tuple(factors.shape), torch.float32,
                                               lambda f=factors: f, model_dir))
            for s in sources:
                gtype, note = tensor_type(s.name, s.shape, ggml_out)
                planned.append(PlannedTensor(s.name, s.shape, gtype, s.dtype,
                                             tensor_nbytes(gtype, math.prod(s.shape)), s.load, note))

        md: dict[str, GGUFValue] = {
            Keys.ARCHITECTURE: GGUFValue(ARCH, T.STRING),
            Keys.TYPE: GGUFValue("model", T.STRING),
        }
        config = getattr(ckpt, "config", {})
        md.update(general_metadata(model_dir, config, sum(math.prod(t.shape) for t in planned)))
        md.update(p.kvs_before_file_type())
        md[Keys.FILE_TYPE] = GGUFValue(int(ftype), T.UINT32)
        md.update(p.kvs_after_file_type())
        if ckpt.kind == "meta":
            cfg, tok_cfg = ckpt.tokenizer_stand_ins()
            md.update(vocab_metadata(model_dir, p.vocab_size, warnings, cfg, tok_cfg))
        else:
            md.update(vocab_metadata(model_dir, p.vocab_size, warnings))
        md[Keys.QUANTIZATION_VERSION] = GGUFValue(QUANTIZATION_VERSION, T.UINT32)

        if outfile is None:
            target = default_outfile(model_dir, outtype, vocab_only)
        else:
            target = Path(outfile)
            if target.is_dir():
                target = target / default_outfile(model_dir, outtype, vocab_only).name
        if not target.parent.is_dir():
            raise InputError(f"{target}: the directory {target.parent} does not exist; create it or pick another "
                             "--outfile")
        return ConversionPlan(model_dir, ckpt.kind, outtype, target, vocab_only, md, planned, warnings,
                              ckpt.close)
    except BaseException:
        ckpt.close()
        raise


def encode_tensor(t: PlannedTensor) -> np.ndarray:
    """Read one tensor and return its GGUF bytes (uint8, t.nbytes long)."""
    x = t.load()
    if tuple(x.shape) != t.shape:
        raise InputError(f"{t.name}: the checkpoint holds shape {list(x.shape)}, its header said {list(t.shape)}")
    if x.dtype == torch.float64:
        x = x.to(torch.float32)  # llama.cpp rounds anything but f16/f32 to f32 first
    if _TORCH_OF.get(t.ggml_type) == x.dtype:  # stored as is: write the source bytes without a copy
        return x.contiguous().reshape(-1).view(torch.uint8).numpy()
    out = np.empty(t.nbytes, dtype=np.uint8)
    if t.nbytes == 0:
        return out
    if t.ggml_type in _TORCH_OF:
        # f32 -> f16/bf16 round to nearest even; f16/bf16 -> f32 is exact; bf16 <-> f16 goes through f32 (as
        # llama.cpp's upcast-then-convert does). copy_ converts straight into the output: no temporaries.
        torch.from_numpy(out).view(_TORCH_OF[t.ggml_type]).reshape(x.shape).copy_(x)
        return out
    dst = torch.from_numpy(out)
    n = t.shape[-1]
    rows = x.reshape(-1, n)
    row_bytes = t.nbytes // rows.shape[0]
    step = max(1, _CHUNK // n)
    codec = get_codec(t.ggml_type, t.name)
    for r0 in range(0, rows.shape[0], step):  # row chunks bound the codec's float32 temporaries
        chunk = rows[r0:r0 + step]
        dst[r0 * row_bytes:(r0 + chunk.shape[0]) * row_bytes] = codec.quantize(chunk).reshape(-1)
    return out


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with n torch CPU threads (None: leave torch's setting), restoring the previous number."""
    if n is None:
        yield
        return
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def write_gguf(plan: ConversionPlan, progress: Callable[[PlannedTensor], None] | None = None,
               threads: int | None = 1) -> ConvertResult:
    """Write the planned file (temp file + rename: an error or Ctrl-C leaves nothing behind).

    threads: torch CPU threads while converting. One by default: the work is memory- and disk-bound, and on a busy
    machine torch's thread pool costs more in wake-ups than it gains (measured: 3-5x slower with 2 threads on 2
    loaded cores)."""
    t0 = time.perf_counter()
    parent = plan.outfile.parent
    if not parent.is_dir():
        raise InputError(f"{plan.outfile}: the directory {parent} does not exist; create it or pick another --outfile")
    with torch_threads(threads), GGUFWriter(plan.outfile) as w:
        for key, value in plan.metadata.items():
            w.add(key, value)
        for t in plan.tensors:
            w.add_tensor_info(t.name, t.shape, t.ggml_type)
        w.write_header()
        for t in plan.tensors:
            w.write_tensor(t.name, encode_tensor(t))
            if progress is not None:
                progress(t)
    return ConvertResult(plan.outfile, plan.outfile.stat().st_size, len(plan.tensors), time.perf_counter() - t0)


def convert(model_dir: str | Path, outtype: str = "f16", outfile: str | Path | None = None,
            vocab_only: bool = False, n_ctx: int | None = None,
            progress: Callable[[PlannedTensor], None] | None = None, threads: int | None = 1) -> ConvertResult:
    """Convert a Hugging Face or Meta llama checkpoint directory to GGUF, as llama.cpp's converter would."""
    with plan_conversion(model_dir, outtype, outfile, vocab_only, n_ctx) as plan:
        return write_gguf(plan, progress, threads)
