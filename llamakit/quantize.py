"""`llamakit quantize`: GGUF in -> GGUF out, the same bytes llama.cpp's llama-quantize writes.

    plan = plan_quantize("model-f16.gguf", "Q4_K_M")         # reads the header only; all checks happen here
    result = run_quantize(plan, "model-Q4_K_M.gguf")           # streams tensor by tensor

The plan decides every tensor's type up front (mixes.TypeChooser, in llama.cpp's loader order), so bad
input fails before a byte is written. Running streams one tensor at a time, its rows in chunks spread over a
pool of threads. An F32/F16/BF16 tensor goes through the native quantizers (kernels.quantizers, C, without
the GIL) straight from the input's memory map: widened exactly, checked for NaN/inf, quantized, in C. Other
sources (requantizing) and machines without a C compiler use the torch codecs (dequantize exactly to float32,
check, quantize), which are the reference the C is tested against byte for byte; torch is imported only then.
Chunks are gathered into one output buffer that is written and dropped while the next tensor is being
quantized, and the input tensor's pages are then released (madvise), so resident memory stays at about two
output tensors plus the chunks in flight, whatever the model's size. The output file is a temp file renamed
at the end (GGUFWriter), so an error or Ctrl-C leaves no partial model.

File layout written, as llama-quantize: the input's metadata in order, minus general.quantization_version,
general.file_type and split.*, then general.quantization_version = 2 and general.file_type; tensors in
loader order; data aligned to 32 bytes.
"""

from __future__ import annotations

import os
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from .errors import InputError, UnsupportedError
from .gguf import GGUFReader, GGUFValueType, GGUFWriter
from .gguf.constants import GGML_BLOCK, QUANTIZATION_VERSION, GGMLType, Keys, LlamaFileType, tensor_nbytes
from .gguf.reader import TensorInfo
from .kernels.quantizers import NativeBuildError, NativeQuantizer, load_quantizer
from .quants.mixes import (
    FileTypeSpec,
    ModelInfo,
    TypeChooser,
    is_quantizable,
    is_quantized_type,
    loader_order,
    parse_file_type,
    parse_tensor_type,
)

if TYPE_CHECKING:
    import torch

# keys llama-quantize drops from the copied metadata (and re-adds, at the end, for the first two)
_DROPPED_KEYS = (Keys.QUANTIZATION_VERSION, Keys.FILE_TYPE, "split.no", "split.count", "split.tensors.count")
_FLOATS = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)
# Weights per work item: big enough that the per-chunk cost (a few dozen small torch ops on per-block
# scales, the future; a ctypes call on the native path) is small next to the work, small enough to spread a
# tensor over the threads and keep the temporaries in a few MiB. 2^18 measured best on SmolLM2 with the
# torch codecs (2^16 made Q4_0 1.8x slower).
CHUNK_WEIGHTS = 1 << 18

# llama_model_loader's file type guess (most common tensor type) for COPY of a file without general.file_type
_GUESS = {GGMLType.F32: LlamaFileType.ALL_F32, GGMLType.F16: LlamaFileType.MOSTLY_F16,
          GGMLType.BF16: LlamaFileType.MOSTLY_BF16, GGMLType.Q4_0: LlamaFileType.MOSTLY_Q4_0,
          GGMLType.Q4_1: LlamaFileType.MOSTLY_Q4_1, GGMLType.Q5_0: LlamaFileType.MOSTLY_Q5_0,
          GGMLType.Q5_1: LlamaFileType.MOSTLY_Q5_1, GGMLType.Q8_0: LlamaFileType.MOSTLY_Q8_0,
          GGMLType.Q2_K: LlamaFileType.MOSTLY_Q2_K, GGMLType.Q3_K: LlamaFileType.MOSTLY_Q3_K_M,
          GGMLType.Q4_K: LlamaFileType.MOSTLY_Q4_K_M, GGMLType.Q5_K: LlamaFileType.MOSTLY_Q5_K_M,
          GGMLType.Q6_K: LlamaFileType.MOSTLY_Q6_K, GGMLType.IQ4_NL: LlamaFileType.MOSTLY_IQ4_NL}


@dataclass(frozen=True)
class TensorPlan:
    info: TensorInfo  # the input tensor
    ggml_type: GGMLType  # the output type
    convert: bool  # False: bytes copied as they are
    fallback_from: GGMLType | None = None

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.ggml_type, self.info.n_elements)


@dataclass
class QuantizePlan:
    input: Path
    spec: FileTypeSpec
    file_type: int  # the general.file_type written
    tensors: list[TensorPlan]
    reader: GGUFReader
    warnings: list[str] = field(default_factory=list)
    fallback_summary: str | None = None

    @property
    def input_bytes(self) -> int:
        return sum(t.info.nbytes for t in self.tensors)

    @property
    def output_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> "QuantizePlan":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class QuantizeResult:
    output: Path
    file_bytes: int
    n_tensors: int
    n_converted: int
    input_bytes: int
    output_bytes: int


def default_output_path(input_path: str | os.PathLike[str], spec: FileTypeSpec) -> Path:
    """llama-quantize's default: `ggml-model-<TYPE>.gguf` beside the input."""
    return Path(input_path).parent / f"ggml-model-{spec.name}.gguf"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def plan_quantize(
    input_path: str | os.PathLike[str],
    file_type: str | FileTypeSpec,
    *,
    allow_requantize: bool = False,
    leave_output_tensor: bool = False,
    pure: bool = False,
    output_tensor_type: str | GGMLType | None = None,
    token_embedding_type: str | GGMLType | None = None,
) -> QuantizePlan:
    """Read the input's header and decide every tensor's output type; raise on anything that would fail."""
    spec = file_type if isinstance(file_type, FileTypeSpec) else parse_file_type(file_type)
    out_t = parse_tensor_type(output_tensor_type, "--output-tensor-type") \
        if isinstance(output_tensor_type, str) else output_tensor_type
    emb_t = parse_tensor_type(token_embedding_type, "--token-embedding-type") \
        if isinstance(token_embedding_type, str) else token_embedding_type
    path = Path(input_path)
    reader = GGUFReader(path)
    try:
        return _plan(reader, path, spec, allow_requantize, leave_output_tensor, pure, out_t, emb_t)
    except BaseException:
        reader.close()
        raise


def _plan(reader: GGUFReader, path: Path, spec: FileTypeSpec, allow_requantize: bool, leave_output: bool,
          pure: bool, out_t: GGMLType | None, emb_t: GGMLType | None) -> QuantizePlan:
    by_name = {t.name: t for t in reader.tensors}
    order = loader_order(list(by_name))
    model = ModelInfo.from_metadata(reader.metadata, order)
    chooser = TypeChooser(LlamaFileType(spec.ftype), model, out_t, emb_t)
    copy_only = spec.base is None
    plans: list[TensorPlan] = []
    requantized: Counter[str] = Counter()
    for name in order:
        info = by_name[name]
        new, fallback_from = info.ggml_type, None
        if not copy_only and is_quantizable(name, len(info.shape), leave_output):
            assert spec.base is not None
            new = spec.base
            if not pure and is_quantized_type(spec.base):
                choice = chooser.choose(name, info.shape[-1], new)
                new, fallback_from = choice.ggml_type, choice.fallback_from
            if emb_t is not None and name == "token_embd.weight":
                new = emb_t
            if out_t is not None and name == "output.weight":
                new = out_t
        convert = new != info.ggml_type
        if convert:
            block = GGML_BLOCK[new].block_size
            if info.shape[-1] % block:
                raise UnsupportedError(
                    f"{path}: tensor {name!r} has rows of {info.shape[-1]} weights, not a multiple of the {new.name} "
                    f"block ({block}); drop --pure or choose another type for it")
            if info.ggml_type not in _FLOATS:
                from .quants import get_codec

                get_codec(info.ggml_type, f"{path}: tensor {name!r}")  # can we read it?
            if is_quantized_type(info.ggml_type):
                if not allow_requantize:
                    raise InputError(
                        f"{path}: tensor {name!r} is already quantized ({info.ggml_type.name}); requantizing loses "
                        f"quality, pass --allow-requantize to do it anyway (better: quantize from the F16/F32 model)")
                requantized[info.ggml_type.name] += 1
        plans.append(TensorPlan(info, new, convert, fallback_from))

    if copy_only:
        ftype = reader.metadata.get(Keys.FILE_TYPE)
        if ftype is None:
            common = Counter(t.ggml_type for t in reader.tensors).most_common(1)
            guess = _GUESS.get(common[0][0], LlamaFileType.ALL_F32) if common else LlamaFileType.ALL_F32
            ftype = int(guess) | int(LlamaFileType.GUESSED)
    else:
        ftype = int(spec.ftype)
    warnings = []
    if requantized:
        kinds = ", ".join(f"{n} x {k}" for k, n in requantized.items())
        warnings.append(f"requantizing already-quantized tensors ({kinds}): quality drops compared with "
                        f"quantizing the F16/F32 model")
    return QuantizePlan(path, spec, int(ftype), plans, reader, warnings, chooser.fallback_summary())


# -- running ----------------------------------------------------------------------------------------------------

Progress = Callable[[TensorPlan, int], None]  # (tensor, input bytes just processed)


def _row_chunks(n_rows: int, row_len: int, weights: int = CHUNK_WEIGHTS) -> Iterator[tuple[int, int]]:
    step = max(1, weights // max(row_len, 1))
    for s in range(0, n_rows, step):
        yield s, min(n_rows, s + step)


class _Converter:
    """Converts one tensor's rows chunk by chunk into a preallocated output buffer: with the native
    quantizers straight from the mapped F32/F16/BF16 bytes, else through the torch codecs (dequantize
    exactly to float32, check, quantize)."""

    def __init__(self, path: Path, tp: TensorPlan, src: np.ndarray, native: NativeQuantizer | None) -> None:
        self.path, self.tp = path, tp
        self.row_len = tp.info.shape[-1]
        self.n_rows = tp.info.n_elements // self.row_len if self.row_len else 0
        self.out = np.empty((self.n_rows, tp.nbytes // max(self.n_rows, 1)), dtype=np.uint8)
        # direct: native straight from the mapped bytes; else torch dequantizes (a quantized source), and the
        # native quantizers (from float32) or the torch codec quantize
        self.direct = native is not None and native.supports(tp.ggml_type, tp.info.ggml_type)
        self.native = native if native is not None and native.supports(tp.ggml_type, GGMLType.F32) else None
        self.src = src.reshape(self.n_rows, -1)
        if not self.direct:
            from .quants import as_tensor, get_codec

            self.src = as_tensor(self.src)
            self.src_codec = get_codec(tp.info.ggml_type, f"{path}: tensor {tp.name!r}")
            self.dst_codec = get_codec(tp.ggml_type, f"{path}: tensor {tp.name!r}")

    def _native(self, src_type: GGMLType, src: np.ndarray, lo: int, hi: int) -> None:
        assert self.native is not None
        bad = self.native.quantize(self.tp.ggml_type, src_type, src, self.out[lo:hi])
        if bad >= 0:
            _non_finite(self.path, self.tp.name, lo + bad // self.row_len, bad % self.row_len)

    def run(self, lo: int, hi: int) -> int:
        if self.direct:
            self._native(self.tp.info.ggml_type, self.src[lo:hi], lo, hi)
            return self.src[lo:hi].nbytes
        x = self.src_codec.dequantize(self.src[lo:hi])
        if self.native is not None:
            self._native(GGMLType.F32, np.ascontiguousarray(x.numpy()), lo, hi)
        else:
            check_finite(x, self.path, self.tp.name, lo)
            self.out[lo:hi] = self.dst_codec.quantize(x).numpy()
        return self.src[lo:hi].numel()


def _non_finite(path: Path, name: str, row: int, col: int) -> None:
    raise InputError(f"{path}: tensor {name!r} contains NaN or infinite values (first at row {row}, "
                     f"column {col}); the model is corrupt, re-convert it from the original checkpoint")


def check_finite(x: "torch.Tensor", path: Path, name: str, row0: int = 0) -> None:
    """NaN or inf weights make every format's scale search meaningless: refuse, naming the tensor."""
    import torch

    if bool(torch.isfinite(x.sum())):  # one fast pass; a non-finite sum can also be an overflow: look closer
        return
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        idx = int(bad.reshape(-1).nonzero()[0, 0])
        row, col = divmod(idx, x.shape[-1])
        _non_finite(path, name, row0 + row, col)


# the exponent bits of F32 / F16 / BF16: all ones is inf or NaN
_EXPONENT = {GGMLType.F32: (np.uint32, 0x7F800000), GGMLType.F16: (np.uint16, 0x7C00),
             GGMLType.BF16: (np.uint16, 0x7F80)}


def check_finite_raw(src: np.ndarray, ggml_type: GGMLType, row_len: int, path: Path, name: str) -> None:
    """check_finite for the raw bytes of an F32/F16/BF16 tensor (numpy only, in chunks)."""
    dtype, mask = _EXPONENT[ggml_type]
    v = src.view(dtype)
    step = CHUNK_WEIGHTS
    for s in range(0, v.size, step):
        bad = np.flatnonzero((v[s:s + step] & mask) == mask)
        if bad.size:
            row, col = divmod(s + int(bad[0]), max(row_len, 1))
            _non_finite(path, name, row, col)


def _finish(plan: QuantizePlan, w: GGUFWriter, tp: TensorPlan, conv: _Converter | None, futures: list[Future[int]],
            progress: Progress | None) -> None:
    """Collect one tensor (or check a copied one), write it and drop its input pages."""
    if conv is None:
        src = plan.reader.tensor_data(tp.info)
        if tp.info.ggml_type in _FLOATS:  # copied floats are checked too, as llama.cpp's loader does
            check_finite_raw(src, tp.info.ggml_type, tp.info.shape[-1], plan.input, tp.name)
        w.write_tensor(tp.name, src)
        del src
        plan.reader.release(tp.info)
        if progress:
            progress(tp, tp.info.nbytes)
        return
    for f in futures:
        n = f.result()  # input bytes of the chunk
        if progress:
            progress(tp, n)
    w.write_tensor(tp.name, conv.out)
    conv.src = conv.out = None  # type: ignore[assignment]
    plan.reader.release(tp.info)


def native_quantizer(native: bool | str = True, notify: Callable[[str], None] | None = None) -> NativeQuantizer | None:
    """The native quantizers (`native`: True for the best variant, a variant name, False for none); None, after
    one line to `notify`, when they cannot be built here (the torch codecs then do all the work)."""
    if native is False:
        return None
    try:
        return load_quantizer(None if native is True else str(native))
    except NativeBuildError as e:
        if notify:
            notify(f"native quantizers unavailable ({e}); using the slower torch codecs")
        return None


def run_quantize(plan: QuantizePlan, output: str | os.PathLike[str], *, threads: int | None = None,
                 progress: Progress | None = None, native: bool | str = True,
                 notify: Callable[[str], None] | None = None) -> QuantizeResult:
    """Write the planned model to `output` (atomically). `threads`: worker threads (default: all cores).
    `native`: use the C quantizers where they cover the tensor (True: best variant, or a variant name;
    False: the torch codecs only, the reference). `notify`: gets the one line saying the native
    quantizers cannot be built here, if so."""
    out = Path(output)
    if _same_file(plan.input, out):
        raise InputError(f"{out}: the output is the input file; choose another output path")
    n_threads = max(1, threads or os.cpu_count() or 1)
    r = plan.reader
    nq = native_quantizer(native, notify) if any(tp.convert for tp in plan.tensors) else None
    needs_torch = any(tp.convert and not (nq and nq.supports(tp.ggml_type, tp.info.ggml_type)) for tp in plan.tensors)
    prev_threads = None
    if needs_torch:
        import torch

        prev_threads = torch.get_num_threads()
        torch.set_num_threads(1)  # parallelism comes from the row chunks; one intra-op thread each
    try:
        with ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="llamakit-quantize") as pool, \
                GGUFWriter(out) as w:
            for key, v in r.fields.items():
                if key not in _DROPPED_KEYS:
                    w.copy_kv(key, v, r.encoded_value(key))  # the input's bytes: no re-encoding of the vocab
            w.add(Keys.QUANTIZATION_VERSION, QUANTIZATION_VERSION, GGUFValueType.UINT32)
            w.add(Keys.FILE_TYPE, plan.file_type, GGUFValueType.UINT32)
            for tp in plan.tensors:
                w.add_tensor_info(tp.name, tp.info.shape, tp.ggml_type)
            w.write_header()
            # Tensor i+1's chunks are queued before tensor i is collected and written, so the workers never
            # wait for the writer; at most two tensors are in flight.
            pending: deque[tuple[TensorPlan, _Converter | None, list[Future[int]]]] = deque()
            try:
                for tp in plan.tensors:
                    if tp.convert:
                        conv = _Converter(plan.input, tp, r.tensor_data(tp.info), nq)
                        pending.append((tp, conv, [pool.submit(conv.run, lo, hi)
                                                   for lo, hi in _row_chunks(conv.n_rows, conv.row_len)]))
                    else:
                        pending.append((tp, None, []))
                    while pending and (pending[0][1] is None or sum(c is not None for _, c, _ in pending) > 1):
                        _finish(plan, w, *pending.popleft(), progress)
                while pending:
                    _finish(plan, w, *pending.popleft(), progress)
            except BaseException:
                for _, _, futures in pending:
                    for f in futures:
                        f.cancel()
                raise
    finally:
        if prev_threads is not None:
            import torch

            torch.set_num_threads(prev_threads)
    return QuantizeResult(out, out.stat().st_size, len(plan.tensors), sum(t.convert for t in plan.tensors),
                          plan.input_bytes, plan.output_bytes)


def quantize_file(input_path: str | os.PathLike[str], output: str | os.PathLike[str] | None, file_type: str,
                  *, threads: int | None = None, progress: Progress | None = None, native: bool | str = True,
                  notify: Callable[[str], None] | None = None, **options: object) -> QuantizeResult:
    """plan_quantize + run_quantize in one call (output None: llama-quantize's default path)."""
    with plan_quantize(input_path, file_type, **options) as plan:  # type: ignore[arg-type]
        return run_quantize(plan, output if output is not None else default_output_path(input_path, plan.spec),
                            threads=threads, progress=progress, native=native, notify=notify)


__all__ = ["QuantizePlan", "QuantizeResult", "TensorPlan", "check_finite", "check_finite_raw", "default_output_path",
           "native_quantizer", "plan_quantize", "quantize_file", "run_quantize"]
