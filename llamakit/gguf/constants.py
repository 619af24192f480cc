"""GGUF / ggml constants: type ids, block geometry, metadata value types, key names.

A leaf module: imports nothing from llamakit. Values mirror llama.cpp at c392e50
(ggml/include/ggml.h, gguf-py/gguf/constants.py).
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

GGUF_MAGIC = 0x46554747  # b"GGUF" read as a little-endian u32
GGUF_VERSION = 3
GGUF_READABLE_VERSIONS = (2, 3)
GGUF_DEFAULT_ALIGNMENT = 32
GGML_MAX_DIMS = 4
QUANTIZATION_VERSION = 2


class GGMLType(IntEnum):
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35


class BlockGeometry(NamedTuple):
    block_size: int  # weights per block
    type_size: int  # bytes per block


# (weights per block, bytes per block); byte counts spelled out as the struct fields of ggml-common.h
GGML_BLOCK: dict[GGMLType, BlockGeometry] = {
    GGMLType.F32: BlockGeometry(1, 4),
    GGMLType.F16: BlockGeometry(1, 2),
    GGMLType.BF16: BlockGeometry(1, 2),
    GGMLType.F64: BlockGeometry(1, 8),
    GGMLType.I8: BlockGeometry(1, 1),
    GGMLType.I16: BlockGeometry(1, 2),
    GGMLType.I32: BlockGeometry(1, 4),
    GGMLType.I64: BlockGeometry(1, 8),
    GGMLType.Q4_0: BlockGeometry(32, 2 + 16),
    GGMLType.Q4_1: BlockGeometry(32, 2 + 2 + 16),
    GGMLType.Q5_0: BlockGeometry(32, 2 + 4 + 16),
    GGMLType.Q5_1: BlockGeometry(32, 2 + 2 + 4 + 16),
    GGMLType.Q8_0: BlockGeometry(32, 2 + 32),
    GGMLType.Q8_1: BlockGeometry(32, 4 + 4 + 32),
    GGMLType.Q2_K: BlockGeometry(256, 16 + 64 + 2 + 2),
    GGMLType.Q3_K: BlockGeometry(256, 32 + 64 + 12 + 2),
    GGMLType.Q4_K: BlockGeometry(256, 2 + 2 + 12 + 128),
    GGMLType.Q5_K: BlockGeometry(256, 2 + 2 + 12 + 32 + 128),
    GGMLType.Q6_K: BlockGeometry(256, 128 + 64 + 16 + 2),
    GGMLType.Q8_K: BlockGeometry(256, 4 + 256 + 32),
    GGMLType.IQ2_XXS: BlockGeometry(256, 2 + 64),
    GGMLType.IQ2_XS: BlockGeometry(256, 2 + 64 + 8),
    GGMLType.IQ3_XXS: BlockGeometry(256, 2 + 64 + 32),
    GGMLType.IQ1_S: BlockGeometry(256, 2 + 32 + 16),
    GGMLType.IQ4_NL: BlockGeometry(32, 2 + 16),
    GGMLType.IQ3_S: BlockGeometry(256, 2 + 64 + 32 + 8 + 4),
    GGMLType.IQ2_S: BlockGeometry(256, 2 + 64 + 16),
    GGMLType.IQ4_XS: BlockGeometry(256, 2 + 2 + 128 + 4),
    GGMLType.IQ1_M: BlockGeometry(256, 32 + 16 + 8),
    GGMLType.TQ1_0: BlockGeometry(256, 2 + 4 * 13),
    GGMLType.TQ2_0: BlockGeometry(256, 2 + 64),
}


def tensor_nbytes(ggml_type: GGMLType, n_elements: int) -> int:
    """Bytes a tensor of n_elements occupies; n_elements must be a multiple of the block size."""
    geo = GGML_BLOCK[ggml_type]
    return n_elements // geo.block_size * geo.type_size


class GGUFValueType(IntEnum):
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# numpy dtype strings (little-endian) of the fixed-size scalar value types
SCALAR_DTYPE: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<u1",
    GGUFValueType.INT8: "<i1",
    GGUFValueType.UINT16: "<u2",
    GGUFValueType.INT16: "<i2",
    GGUFValueType.UINT32: "<u4",
    GGUFValueType.INT32: "<i4",
    GGUFValueType.FLOAT32: "<f4",
    GGUFValueType.BOOL: "<u1",
    GGUFValueType.UINT64: "<u8",
    GGUFValueType.INT64: "<i8",
    GGUFValueType.FLOAT64: "<f8",
}


# struct format characters of the same scalar types
SCALAR_STRUCT: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "B",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}


class LlamaFileType(IntEnum):
    """`general.file_type` values (llama.h: llama_ftype)."""

    ALL_F32 = 0
    MOSTLY_F16 = 1
    MOSTLY_Q4_0 = 2
    MOSTLY_Q4_1 = 3
    MOSTLY_Q8_0 = 7
    MOSTLY_Q5_0 = 8
    MOSTLY_Q5_1 = 9
    MOSTLY_Q2_K = 10
    MOSTLY_Q3_K_S = 11
    MOSTLY_Q3_K_M = 12
    MOSTLY_Q3_K_L = 13
    MOSTLY_Q4_K_S = 14
    MOSTLY_Q4_K_M = 15
    MOSTLY_Q5_K_S = 16
    MOSTLY_Q5_K_M = 17
    MOSTLY_Q6_K = 18
    MOSTLY_IQ2_XXS = 19
    MOSTLY_IQ2_XS = 20
    MOSTLY_Q2_K_S = 21
    MOSTLY_IQ3_XS = 22
    MOSTLY_IQ3_XXS = 23
    MOSTLY_IQ1_S = 24
    MOSTLY_IQ4_NL = 25
    MOSTLY_IQ3_S = 26
    MOSTLY_IQ3_M = 27
    MOSTLY_IQ2_S = 28
    MOSTLY_IQ2_M = 29
    MOSTLY_IQ4_XS = 30
    MOSTLY_IQ1_M = 31
    MOSTLY_BF16 = 32
    MOSTLY_TQ1_0 = 36
    MOSTLY_TQ2_0 = 37
    GUESSED = 1024


def file_type_name(value: int) -> str:
    """'Q4_K_M' for 15, 'F32' for 0; 'unknown (N)' otherwise."""
    try:
        name = LlamaFileType(value).name
    except ValueError:
        return f"unknown ({value})"
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


class Keys:
    """Metadata key names llamakit reads or writes ({arch} is filled with general.architecture)."""

    ARCHITECTURE = "general.architecture"
    TYPE = "general.type"
    NAME = "general.name"
    ALIGNMENT = "general.alignment"
    FILE_TYPE = "general.file_type"
    QUANTIZATION_VERSION = "general.quantization_version"
    SIZE_LABEL = "general.size_label"

    CONTEXT_LENGTH = "{arch}.context_length"
    EMBEDDING_LENGTH = "{arch}.embedding_length"
    BLOCK_COUNT = "{arch}.block_count"
    FEED_FORWARD_LENGTH = "{arch}.feed_forward_length"
    VOCAB_SIZE = "{arch}.vocab_size"
    HEAD_COUNT = "{arch}.attention.head_count"
    HEAD_COUNT_KV = "{arch}.attention.head_count_kv"
    KEY_LENGTH = "{arch}.attention.key_length"
    VALUE_LENGTH = "{arch}.attention.value_length"
    RMS_EPS = "{arch}.attention.layer_norm_rms_epsilon"
    ROPE_DIM = "{arch}.rope.dimension_count"
    ROPE_FREQ_BASE = "{arch}.rope.freq_base"
    ROPE_SCALING_TYPE = "{arch}.rope.scaling.type"
    ROPE_SCALING_FACTOR = "{arch}.rope.scaling.factor"
    EXPERT_COUNT = "{arch}.expert_count"
    EXPERT_USED_COUNT = "{arch}.expert_used_count"

    TOK_MODEL = "tokenizer.ggml.model"
    TOK_PRE = "tokenizer.ggml.pre"
    TOK_TOKENS = "tokenizer.ggml.tokens"
    TOK_SCORES = "tokenizer.ggml.scores"
    TOK_TYPES = "tokenizer.ggml.token_type"
    TOK_MERGES = "tokenizer.ggml.merges"
    TOK_BOS = "tokenizer.ggml.bos_token_id"
    TOK_EOS = "tokenizer.ggml.eos_token_id"
    TOK_UNK = "tokenizer.ggml.unknown_token_id"
    TOK_SEP = "tokenizer.ggml.seperator_token_id"  # sic, as llama.cpp spells it
    TOK_PAD = "tokenizer.ggml.padding_token_id"
    TOK_MASK = "tokenizer.ggml.mask_token_id"
    TOK_EOT = "tokenizer.ggml.eot_token_id"
    TOK_ADD_BOS = "tokenizer.ggml.add_bos_token"
    TOK_ADD_EOS = "tokenizer.ggml.add_eos_token"
    TOK_ADD_SPACE_PREFIX = "tokenizer.ggml.add_space_prefix"
    CHAT_TEMPLATE = "tokenizer.chat_template"


class TokenType(IntEnum):
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6
