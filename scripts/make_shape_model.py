"""Random-weight llama GGUFs of real model shapes, for speed measurements (never for quality).

    python scripts/make_shape_model.py [--out /tmp/lkbench] [--shape tinyllama-1.1b] [--type q4_0] ...

Shapes (--shape, repeatable; default all):
    tinyllama-1.1b   TinyLlama-1.1B's dims: 22 layers, n_embd 2048, n_ff 5632, 32 heads, 4 KV heads, vocab 32000
    llama-7b-4l      Llama-7B's dims (n_embd 4096, n_ff 11008, 32 heads, vocab 32000) with only 4 layers
Types (--type, repeatable; default all): f16, q4_0, q4_k_m, q8_0. The f16 file is written first, streamed tensor
by tensor through llamakit's GGUFWriter; the others are quantized from it by llamakit's quantizer, so their
per-tensor type mixes are llama-quantize's. Files are named <shape>-<type>.gguf; existing files are kept.

Weights are N(0, 1) * 0.02 from a fixed seed (per tensor, so the file is the same on every run), norms are 1.
The vocabulary is the tiny reference llama's SentencePiece vocabulary (1000 pieces, taken from the GGUF that
llama.cpp's converter made of /work/shared/reference/tiny-llama/source/hf), padded to 32000 with the "[PAD<id>]"
pieces convert_hf_to_gguf.py writes for missing ids (score -1000, type UNUSED), so llamakit and llama.cpp both
load it and tokenize text with it.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llamakit.gguf import GGMLType, GGUFReader, GGUFValue, GGUFValueType, GGUFWriter, TokenType  # noqa: E402
from llamakit.gguf.constants import QUANTIZATION_VERSION, LlamaFileType  # noqa: E402
from llamakit.quantize import quantize_file  # noqa: E402

T = GGUFValueType
SHARED = Path(os.environ.get("LLAMAKIT_SHARED", ROOT.parent / "shared"))
if not (SHARED / "reference").is_dir():
    SHARED = Path("/work/shared")
VOCAB_SOURCE = SHARED / "reference" / "tiny-llama" / "llama.cpp" / "convert-f16.gguf"
TYPES = {"f16": None, "q4_0": "Q4_0", "q4_k_m": "Q4_K_M", "q8_0": "Q8_0"}
_CHUNK = 1 << 24  # weights drawn at a time: bounds the float32 temporary to 64 MiB


@dataclass(frozen=True)
class Shape:
    name: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    n_vocab: int
    n_ctx_train: int
    rms_eps: float

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, torch-order shape) in the order convert_hf_to_gguf.py writes a llama."""
        e, f, kv = self.n_embd, self.n_ff, self.n_head_kv * self.head_dim
        out: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (self.n_vocab, e))]
        for i in range(self.n_layer):
            b = f"blk.{i}."
            out += [(b + "attn_norm.weight", (e,)), (b + "ffn_down.weight", (e, f)),
                    (b + "ffn_gate.weight", (f, e)), (b + "ffn_up.weight", (f, e)),
                    (b + "ffn_norm.weight", (e,)), (b + "attn_k.weight", (kv, e)),
                    (b + "attn_output.weight", (e, e)), (b + "attn_q.weight", (e, e)),
                    (b + "attn_v.weight", (kv, e))]
        out += [("output_norm.weight", (e,)), ("output.weight", (self.n_vocab, e))]
        return out


SHAPES = {
    "tinyllama-1.1b": Shape("tinyllama-1.1b", 22, 2048, 5632, 32, 4, 32000, 2048, 1e-5),
    "llama-7b-4l": Shape("llama-7b-4l", 4, 4096, 11008, 32, 32, 32000, 4096, 1e-5),
}


def vocab_kvs(n_vocab: int) -> dict[str, GGUFValue]:
    """The reference tiny llama's tokenizer.* keys, its vocabulary padded to n_vocab ids."""
    with GGUFReader(VOCAB_SOURCE) as r:
        kvs = {k: v for k, v in r.fields.items() if k.startswith("tokenizer.")}
        tokens = list(kvs["tokenizer.ggml.tokens"].value)
        scores = np.asarray(kvs["tokenizer.ggml.scores"].value, dtype=np.float32).copy()
        types = np.asarray(kvs["tokenizer.ggml.token_type"].value, dtype=np.int32).copy()
    pad = n_vocab - len(tokens)
    assert pad >= 0, "the reference vocabulary is larger than the shape's"
    tokens += [f"[PAD{i}]" for i in range(len(tokens), n_vocab)]
    kvs["tokenizer.ggml.tokens"] = GGUFValue(tokens, T.ARRAY, T.STRING)
    kvs["tokenizer.ggml.scores"] = GGUFValue(np.concatenate([scores, np.full(pad, -1000.0, np.float32)]),
                                             T.ARRAY, T.FLOAT32)
    kvs["tokenizer.ggml.token_type"] = GGUFValue(
        np.concatenate([types, np.full(pad, int(TokenType.UNUSED), np.int32)]), T.ARRAY, T.INT32)
    return kvs


def metadata(s: Shape) -> dict[str, GGUFValue]:
    n_params = sum(math.prod(shape) for _, shape in s.tensors())
    md: dict[str, GGUFValue] = {
        "general.architecture": GGUFValue("llama", T.STRING),
        "general.type": GGUFValue("model", T.STRING),
        "general.name": GGUFValue(f"{s.name} shape, random weights", T.STRING),
        "general.size_label": GGUFValue(f"{n_params / 1e9:.1f}B", T.STRING),
        "llama.block_count": GGUFValue(s.n_layer, T.UINT32),
        "llama.context_length": GGUFValue(s.n_ctx_train, T.UINT32),
        "llama.embedding_length": GGUFValue(s.n_embd, T.UINT32),
        "llama.feed_forward_length": GGUFValue(s.n_ff, T.UINT32),
        "llama.attention.head_count": GGUFValue(s.n_head, T.UINT32),
        "llama.attention.head_count_kv": GGUFValue(s.n_head_kv, T.UINT32),
        "llama.rope.freq_base": GGUFValue(10000.0, T.FLOAT32),
        "llama.attention.layer_norm_rms_epsilon": GGUFValue(s.rms_eps, T.FLOAT32),
        "general.file_type": GGUFValue(int(LlamaFileType.MOSTLY_F16), T.UINT32),
        "llama.vocab_size": GGUFValue(s.n_vocab, T.UINT32),
        "llama.rope.dimension_count": GGUFValue(s.head_dim, T.UINT32),
    }
    md.update(vocab_kvs(s.n_vocab))
    md["general.quantization_version"] = GGUFValue(QUANTIZATION_VERSION, T.UINT32)
    return md


def random_f16(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """N(0, 1) * 0.02 as float16, drawn in chunks so the float32 temporary stays small."""
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape)
    out = torch.empty(n, dtype=torch.float16)
    for s in range(0, n, _CHUNK):
        e = min(n, s + _CHUNK)
        out[s:e] = torch.randn(e - s, generator=g).mul_(0.02)
    return out.view(torch.uint8).numpy()


def write_f16(s: Shape, path: Path, seed: int) -> None:
    """Stream the f16 file tensor by tensor: peak memory is the largest tensor (token_embd), not the model."""
    tensors = s.tensors()
    with GGUFWriter(path) as w:
        for k, v in metadata(s).items():
            w.add(k, v)
        for name, shape in tensors:
            w.add_tensor_info(name, shape, GGMLType.F32 if len(shape) == 1 else GGMLType.F16)
        w.write_header()
        for i, (name, shape) in enumerate(tensors):
            if len(shape) == 1:
                w.write_tensor(name, np.ones(shape, dtype=np.float32))
            else:
                w.write_tensor(name, random_f16(shape, seed + i))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/lkbench"), help="output directory (default /tmp/lkbench)")
    ap.add_argument("--shape", action="append", choices=list(SHAPES), help="repeatable; default all")
    ap.add_argument("--type", action="append", choices=list(TYPES), help="repeatable; default all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="quantizer threads (default: all cores)")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    for shape_name in a.shape or list(SHAPES):
        s = SHAPES[shape_name]
        f16 = a.out / f"{s.name}-f16.gguf"
        for t in a.type or list(TYPES):
            path = a.out / f"{s.name}-{t}.gguf"
            if path.exists():
                print(f"{path}: exists, kept")
                continue
            t0 = time.perf_counter()
            if not f16.exists():
                write_f16(s, f16, a.seed)
                print(f"{f16}: {f16.stat().st_size / 2**30:.2f} GiB in {time.perf_counter() - t0:.1f} s", flush=True)
                if path == f16:
                    continue
                t0 = time.perf_counter()
            ftype = TYPES[t]
            assert ftype is not None
            quantize_file(f16, path, ftype, threads=a.threads)
            print(f"{path}: {path.stat().st_size / 2**30:.2f} GiB in {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
