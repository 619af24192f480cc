"""Which ggml type each tensor gets for a llama.cpp file type: llama_tensor_get_type (src/llama-quant.cpp)
for the file types llamakit offers, written as tables where the rule is a plain lookup.

Pure rules, no I/O: `quantize.py` feeds tensors in llama.cpp's loader order (`loader_order`), because the
attn_v / ffn_down rules count tensors as they go (the i-th attn_v is layer i only in that order).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import InputError, UnsupportedError
from ..gguf.constants import GGML_BLOCK, GGMLType, Keys, LlamaFileType

FT = LlamaFileType
T = GGMLType


@dataclass(frozen=True)
class FileTypeSpec:
    name: str  # as llama-quantize prints it (and names the default output file)
    ftype: LlamaFileType
    base: GGMLType | None  # the default tensor type; None for COPY
    help: str


# llama-quantize's QUANT_OPTIONS order, restricted to what llamakit writes: a name (case-insensitive) or a
# number picks the first entry that matches, so the aliases Q3_K / Q4_K / Q5_K answer for 12 / 15 / 17.
FILE_TYPES: tuple[FileTypeSpec, ...] = (
    FileTypeSpec("Q4_0", FT.MOSTLY_Q4_0, T.Q4_0, "4.34G, +0.4685 ppl @ Llama-3-8B"),
    FileTypeSpec("Q4_1", FT.MOSTLY_Q4_1, T.Q4_1, "4.78G, +0.4511 ppl @ Llama-3-8B"),
    FileTypeSpec("Q5_0", FT.MOSTLY_Q5_0, T.Q5_0, "5.21G, +0.1316 ppl @ Llama-3-8B"),
    FileTypeSpec("Q5_1", FT.MOSTLY_Q5_1, T.Q5_1, "5.65G, +0.1062 ppl @ Llama-3-8B"),
    FileTypeSpec("Q2_K", FT.MOSTLY_Q2_K, T.Q2_K, "2.96G, +3.5199 ppl @ Llama-3-8B"),
    FileTypeSpec("Q3_K", FT.MOSTLY_Q3_K_M, T.Q3_K, "alias for Q3_K_M"),
    FileTypeSpec("Q3_K_S", FT.MOSTLY_Q3_K_S, T.Q3_K, "3.41G, +1.6321 ppl @ Llama-3-8B"),
    FileTypeSpec("Q3_K_M", FT.MOSTLY_Q3_K_M, T.Q3_K, "3.74G, +0.6569 ppl @ Llama-3-8B"),
    FileTypeSpec("Q3_K_L", FT.MOSTLY_Q3_K_L, T.Q3_K, "4.03G, +0.5562 ppl @ Llama-3-8B"),
    FileTypeSpec("Q4_K", FT.MOSTLY_Q4_K_M, T.Q4_K, "alias for Q4_K_M"),
    FileTypeSpec("Q4_K_S", FT.MOSTLY_Q4_K_S, T.Q4_K, "4.37G, +0.2689 ppl @ Llama-3-8B"),
    FileTypeSpec("Q4_K_M", FT.MOSTLY_Q4_K_M, T.Q4_K, "4.58G, +0.1754 ppl @ Llama-3-8B"),
    FileTypeSpec("Q5_K", FT.MOSTLY_Q5_K_M, T.Q5_K, "alias for Q5_K_M"),
    FileTypeSpec("Q5_K_S", FT.MOSTLY_Q5_K_S, T.Q5_K, "5.21G, +0.1049 ppl @ Llama-3-8B"),
    FileTypeSpec("Q5_K_M", FT.MOSTLY_Q5_K_M, T.Q5_K, "5.33G, +0.0569 ppl @ Llama-3-8B"),
    FileTypeSpec("Q6_K", FT.MOSTLY_Q6_K, T.Q6_K, "6.14G, +0.0217 ppl @ Llama-3-8B"),
    FileTypeSpec("Q8_0", FT.MOSTLY_Q8_0, T.Q8_0, "7.96G, +0.0026 ppl @ Llama-3-8B"),
    FileTypeSpec("F16", FT.MOSTLY_F16, T.F16, "14.00G, +0.0020 ppl @ Mistral-7B"),
    FileTypeSpec("BF16", FT.MOSTLY_BF16, T.BF16, "14.00G, -0.0050 ppl @ Mistral-7B"),
    FileTypeSpec("F32", FT.ALL_F32, T.F32, "26.00G @ 7B"),
    FileTypeSpec("COPY", FT.ALL_F32, None, "only copy tensors, no quantizing"),  # after F32: 0 means F32
)

# ggml types llamakit can write (for --output-tensor-type / --token-embedding-type)
WRITABLE_TYPES: tuple[GGMLType, ...] = (
    T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0,
    T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL,
)


def ggml_type_name(t: GGMLType) -> str:
    """ggml's spelling: q4_0, q6_K, iq4_nl, f16, bf16."""
    n = t.name.lower()
    return n[:-2] + "_K" if n.endswith("_k") else n


def parse_file_type(text: str) -> FileTypeSpec:
    """A TYPE argument: a name from FILE_TYPES (any case) or a general.file_type number."""
    s = text.strip()
    for spec in FILE_TYPES:
        if spec.name.lower() == s.lower():
            return spec
    if re.fullmatch(r"[+-]?\d+", s):
        for spec in FILE_TYPES:
            if spec.ftype == int(s):
                return spec
    valid = ", ".join(f"{p.name} ({int(p.ftype)})" if p.name != "COPY" else p.name for p in FILE_TYPES)
    raise InputError(f"unknown quantization type {text!r}; valid types: {valid}")


def parse_tensor_type(text: str, option: str) -> GGMLType:
    """A ggml type name (any case), as llama-quantize's --output-tensor-type takes it."""
    for t in WRITABLE_TYPES:
        if ggml_type_name(t).lower() == text.strip().lower():
            return t
    valid = ", ".join(ggml_type_name(t) for t in WRITABLE_TYPES)
    raise InputError(f"{option}: unknown or unsupported tensor type {text!r}; valid types: {valid}")


def _blk_layer(name: str) -> int:
    m = re.match(r"blk\.(\d+)\.", name)
    return int(m.group(1)) if m else -1


def loader_order(names: list[str]) -> list[str]:
    """llama_model_loader's weights_map order: by layer number (tensors outside `blk.N.` first), then by name
    (bytewise, as std::string compares)."""
    return sorted(names, key=lambda n: (_blk_layer(n), n.encode("utf-8")))


# -- which tensors are quantized at all (llama_model_quantize_impl) ------------------------------

_NEVER_QUANTIZED = ("_norm.weight", "ffn_gate_inp.weight", "ssm_conv1d.weight", "time_mix_first.weight",
                    "time_mix_w1.weight", "time_mix_w2.weight", "time_mix_decay_w1.weight",
                    "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight", "attn_rel_b.weight")
_NEVER_QUANTIZED_EXACT = ("position_embd.weight", "token_types.weight")


def is_quantizable(name: str, n_dims: int, leave_output: bool) -> bool:
    """A weight llama-quantize converts: named *weight, at least 2-D, not a norm / gate / position table,
    and not output.weight under --leave-output-tensor."""
    return (name.endswith("weight") and n_dims >= 2
            and not any(s in name for s in _NEVER_QUANTIZED)
            and name not in _NEVER_QUANTIZED_EXACT
            and not (leave_output and name == "output.weight"))


# -- the model facts the rules read --------------------------------------------------------------

@dataclass(frozen=True)
class ModelInfo:
    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int
    has_output: bool  # a separate output.weight (else token_embd.weight gets the output rules)
    n_attention_wv: int  # tensors named *attn_v.weight / *attn_qkv.weight / *attn_kv_b.weight

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head_kv else 0

    @property
    def is_70b(self) -> bool:
        """llama.cpp's LLM_TYPE_70B for the llama architecture: 80 layers with grouped-query attention."""
        return self.arch == "llama" and self.n_expert != 8 and self.n_layer == 80 and self.n_head != self.n_head_kv

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], tensor_names: list[str]) -> "ModelInfo":
        arch = str(metadata.get(Keys.ARCHITECTURE, ""))

        def get(key: str, default: int) -> int:
            v = metadata.get(key.format(arch=arch), default)
            if hasattr(v, "__len__") and not isinstance(v, str):  # per-layer arrays: llama.cpp reads layer 0
                v = v[0] if len(v) else default
            return int(v)

        n_head = get(Keys.HEAD_COUNT, 0)
        return cls(
            arch=arch,
            n_layer=get(Keys.BLOCK_COUNT, 0),
            n_head=n_head,
            n_head_kv=get(Keys.HEAD_COUNT_KV, n_head),
            n_expert=get(Keys.EXPERT_COUNT, 0),
            has_output="output.weight" in tensor_names,
            n_attention_wv=sum(any(s in n for s in ("attn_v.weight", "attn_qkv.weight", "attn_kv_b.weight"))
                               for n in tensor_names),
        )


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """The layers that get more bits in the _M mixes: the first and last eighth, and every third between."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


# Rules that are plain lookups by file type (dense, non-Falcon models).
ATTN_OUTPUT = {FT.MOSTLY_Q2_K: T.Q3_K, FT.MOSTLY_Q3_K_M: T.Q4_K, FT.MOSTLY_Q3_K_L: T.Q5_K}
ATTN_QKV = {FT.MOSTLY_Q3_K_M: T.Q4_K, FT.MOSTLY_Q3_K_L: T.Q4_K, FT.MOSTLY_Q4_K_M: T.Q5_K, FT.MOSTLY_Q5_K_M: T.Q6_K}
MOE_ATTN_OUTPUT_Q5_K = {FT.MOSTLY_Q2_K, FT.MOSTLY_Q3_K_S, FT.MOSTLY_Q3_K_M, FT.MOSTLY_Q4_K_S, FT.MOSTLY_Q4_K_M}
# A row length that is not a multiple of the chosen type's block falls back to (then to F16 if that fails too):
FALLBACK = {T.Q2_K: T.IQ4_NL, T.Q3_K: T.IQ4_NL, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}


@dataclass(frozen=True)
class Choice:
    ggml_type: GGMLType
    fallback_from: GGMLType | None = None  # the type the rules wanted, when the row length forced a fallback


@dataclass
class TypeChooser:
    """llama_tensor_get_type with its counters. Call `choose` once per quantized tensor, in loader order."""

    ftype: LlamaFileType
    model: ModelInfo
    output_type: GGMLType | None = None
    token_embd_type: GGMLType | None = None
    i_attention_wv: int = 0
    i_ffn_down: int = 0
    i_ffn_gate: int = 0
    i_ffn_up: int = 0
    n_k_quantized: int = 0
    n_fallback: int = 0
    fallbacks: dict[tuple[int, GGMLType, GGMLType], int] = field(default_factory=dict)

    def _layer(self, counter: int, name: str) -> tuple[int, int]:
        n_layer = self.model.n_layer
        if self.model.n_expert > 1:  # expert tensors are not in layer order: llama.cpp parses the name
            i = _blk_layer(name)
            if not 0 <= i < n_layer:
                raise UnsupportedError(f"cannot determine the layer of tensor {name!r} (expected blk.N. with N < {n_layer})")
            return i, n_layer
        return counter, n_layer

    def _rules(self, name: str, new: GGMLType, ne0: int) -> GGMLType:
        ft, m = self.ftype, self.model
        falcon = m.arch == "falcon"
        if name == "output.weight" or (not m.has_output and name == "token_embd.weight"):
            if self.output_type is not None:
                return self.output_type
            if falcon or ne0 % GGML_BLOCK[new].block_size:
                return T.Q8_0
            return new if new == T.Q8_0 else T.Q6_K
        if name == "token_embd.weight":
            return self.token_embd_type if self.token_embd_type is not None else new
        if "attn_v.weight" in name:
            if ft == FT.MOSTLY_Q2_K:
                new = T.Q4_K if m.n_gqa >= 4 else T.Q3_K
            elif ft == FT.MOSTLY_Q3_K_M:
                new = T.Q5_K if self.i_attention_wv < 2 else T.Q4_K
            elif ft == FT.MOSTLY_Q3_K_L:
                new = T.Q5_K
            elif ft in (FT.MOSTLY_Q4_K_M, FT.MOSTLY_Q5_K_M):
                if use_more_bits(self.i_attention_wv, m.n_attention_wv):
                    new = T.Q6_K
            elif ft == FT.MOSTLY_Q4_K_S and self.i_attention_wv < 4:
                new = T.Q5_K
            if m.is_70b and new in (T.Q3_K, T.Q4_K):  # 8 heads share attn_v: more bits are cheap
                new = T.Q5_K
            if m.n_expert == 8:
                new = T.Q8_0
            self.i_attention_wv += 1
            return new
        if "attn_k.weight" in name:
            return T.Q8_0 if m.n_expert == 8 else new
        if "attn_q.weight" in name:
            return new
        if "ffn_down" in name:
            i, n = self._layer(self.i_ffn_down, name)
            if ft == FT.MOSTLY_Q2_K:
                new = T.Q3_K
            elif ft == FT.MOSTLY_Q3_K_M:
                new = T.Q5_K if i < n // 16 else T.Q4_K if not falcon or use_more_bits(i, n) else T.Q3_K
            elif ft == FT.MOSTLY_Q3_K_L:
                new = T.Q4_K if falcon else T.Q5_K
            elif ft == FT.MOSTLY_Q4_K_M:
                if falcon:
                    new = T.Q6_K if i < n // 16 else T.Q5_K if use_more_bits(i, n) else T.Q4_K
                elif use_more_bits(i, n):
                    new = T.Q6_K
            elif ft == FT.MOSTLY_Q5_K_M and use_more_bits(i, n):
                new = T.Q6_K
            elif ft == FT.MOSTLY_Q4_K_S and not falcon and i < n // 8:
                new = T.Q5_K
            self.i_ffn_down += 1
            return new
        if "attn_output.weight" in name:
            if falcon:
                return T.Q4_K if ft == FT.MOSTLY_Q3_K_L else new
            if m.n_expert == 8:
                return T.Q5_K if ft in MOE_ATTN_OUTPUT_Q5_K else new
            return ATTN_OUTPUT.get(ft, new)
        if "attn_qkv.weight" in name:
            return ATTN_QKV.get(ft, new)
        if "ffn_gate" in name:
            self._layer(self.i_ffn_gate, name)
            self.i_ffn_gate += 1
        elif "ffn_up" in name:
            self._layer(self.i_ffn_up, name)
            self.i_ffn_up += 1
        return new

    def choose(self, name: str, ne0: int, default: GGMLType) -> Choice:
        """The type for a quantizable tensor with rows of ne0 weights (llama_tensor_get_type)."""
        new = self._rules(name, default, ne0)
        if ne0 % GGML_BLOCK[new].block_size == 0:
            self.n_k_quantized += 1
            return Choice(new)
        if new not in FALLBACK:
            raise UnsupportedError(
                f"tensor {name!r}: rows of {ne0} weights are not a multiple of the {new.name} block "
                f"({GGML_BLOCK[new].block_size}) and llama.cpp has no fallback type for {new.name}")
        fb = FALLBACK[new]
        if ne0 % GGML_BLOCK[fb].block_size:
            fb = T.F16
        self.n_fallback += 1
        key = (ne0, new, fb)
        self.fallbacks[key] = self.fallbacks.get(key, 0) + 1
        return Choice(fb, fallback_from=new)

    def fallback_summary(self) -> str | None:
        """llama-quantize's `N of M tensor(s) required fallback quantization`, plus what fell back and why."""
        if not self.n_fallback:
            return None
        why = ", ".join(
            f"{n} x {a.name} -> {b.name} (rows of {ne0} not a multiple of {GGML_BLOCK[a].block_size})"
            for (ne0, a, b), n in sorted(self.fallbacks.items(), key=lambda kv: -kv[1]))
        return (f"{self.n_fallback} of {self.n_k_quantized + self.n_fallback} tensor(s) required fallback "
                f"quantization: {why}")


def is_quantized_type(t: GGMLType) -> bool:
    """ggml_is_quantized for the types llamakit handles (F32/F16/BF16 are not)."""
    return t not in (T.F32, T.F16, T.BF16, T.F64, T.I8, T.I16, T.I32, T.I64)
