"""One byte layout per block format, as named fields: the codecs here and the matmul kernels read blocks
through these, so no byte offset is written twice.

A block is a packed C struct of ggml-common.h (little-endian, no padding). `LAYOUTS[t].split(blocks)` turns
uint8 blocks (..., type_size) into named uint8 views (no copy), like gguf-py's `d, qs = np.hsplit(blocks, [2])`;
`join(name=part, ...)` is the inverse. `typed(blocks, name)` gives one field in its C type; `Field.words(w)`
is the field's slice when a kernel views the blocks as w-byte words.

Byte offsets (top) and fields; what the bits inside a field mean is documented by the codec that packs it
(legacy.py, kquants.py, iq4nl.py).

    Q4_0 / IQ4_NL, 32 weights           Q4_1, 32 weights
    0      2                   18       0      2      4                   20
    | d f16 | qs[16] nibbles   |        | d f16 | m f16 | qs[16] nibbles   |

    Q5_0, 32 weights                            Q5_1, 32 weights
    0      2        6                   22      0      2      4        8                   24
    | d f16 | qh u32 | qs[16] nibbles   |       | d f16 | m f16 | qh u32 | qs[16] nibbles   |

    Q8_0, 32 weights
    0      2                            34
    | d f16 | qs[32] int8               |

    Q2_K, 256 weights
    0                16                                80      82       84
    | scales[16] 4+4b | qs[64] 2-bit                   | d f16 | dmin f16 |

    Q3_K, 256 weights
    0                32                  96                 108     110
    | hmask[32] 1-bit | qs[64] 2-bit      | scales[12] 6-bit | d f16 |

    Q4_K, 256 weights
    0      2         4                 16                                 144
    | d f16 | dmin f16 | scales[12] 6-bit | qs[128] nibbles                 |

    Q5_K, 256 weights
    0      2         4                 16               48                                176
    | d f16 | dmin f16 | scales[12] 6-bit | qh[32] 1-bit   | qs[128] nibbles                |

    Q6_K, 256 weights
    0                         128                192                 208     210
    | ql[128] low nibbles      | qh[64] 2-bit    | scales[16] int8   | d f16 |

    Q8_K, 256 weights (the activation format of the K-quant dot products)
    0      4                                   260                 292
    | d f32 | qs[256] int8                     | bsums[16] int16   |
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

import torch

from ..gguf.constants import GGMLType


class Field(NamedTuple):
    name: str
    offset: int  # bytes from the start of the block
    size: int  # bytes
    dtype: torch.dtype  # the C element type (uint8 for bit-packed bytes)

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def count(self) -> int:
        """Elements of `dtype` in the field."""
        return self.size // _itemsize(self.dtype)

    @property
    def bytes(self) -> slice:
        return slice(self.offset, self.end)

    def words(self, word_bytes: int) -> slice:
        """The field's columns when the blocks are viewed as `word_bytes`-byte words (e.g. int32 kernels)."""
        if self.offset % word_bytes or self.size % word_bytes:
            raise ValueError(f"field {self.name} ({self.offset}:{self.end}) is not aligned to {word_bytes}-byte words")
        return slice(self.offset // word_bytes, self.end // word_bytes)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


@dataclass(frozen=True)
class BlockLayout:
    ggml_type: GGMLType
    block_size: int  # weights per block
    fields: tuple[Field, ...]

    @property
    def type_size(self) -> int:
        """Bytes per block."""
        return self.fields[-1].end

    def __getitem__(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.ggml_type.name} blocks have no field {name!r}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def span(self, first: str, last: str) -> slice:
        """Bytes from the start of field `first` to the end of field `last` (e.g. Q4_1's d and m together,
        read as two f16 in one view)."""
        a, b = self[first], self[last]
        if b.end <= a.offset:
            raise ValueError(f"{self.ggml_type.name}: field {last!r} comes before {first!r}")
        return slice(a.offset, b.end)

    def _check(self, blocks: torch.Tensor) -> None:
        if blocks.dtype != torch.uint8 or blocks.dim() < 1 or blocks.shape[-1] != self.type_size:
            raise ValueError(f"expected uint8 {self.ggml_type.name} blocks (..., {self.type_size}), got "
                             f"{blocks.dtype} {tuple(blocks.shape)}")

    def split(self, blocks: torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 (..., type_size) -> {field name: uint8 view (..., field.size)}, in layout order, no copies."""
        self._check(blocks)
        return {f.name: blocks[..., f.offset:f.end] for f in self.fields}

    def typed(self, blocks: torch.Tensor, name: str) -> torch.Tensor:
        """One field of uint8 blocks (..., type_size) in its C type: (..., field.count) of field.dtype."""
        self._check(blocks)
        f = self[name]
        raw = blocks[..., f.offset:f.end]
        return raw if f.dtype == torch.uint8 else raw.contiguous().view(f.dtype)

    def join(self, **parts: torch.Tensor) -> torch.Tensor:
        """The inverse of split: every field once, as uint8 (..., field.size) or as (..., field.count) of its
        own dtype (viewed as bytes); returns uint8 blocks (..., type_size)."""
        if set(parts) != set(self.names):
            raise ValueError(f"{self.ggml_type.name} blocks need the fields {', '.join(self.names)}; got "
                             f"{', '.join(parts)}")
        cols = []
        for f in self.fields:
            p = parts[f.name]
            if p.dtype != torch.uint8:
                if p.dtype != f.dtype:
                    raise ValueError(f"{self.ggml_type.name}.{f.name}: expected uint8 or {f.dtype}, got {p.dtype}")
                p = p.contiguous().view(torch.uint8)
            if p.shape[-1] != f.size:
                raise ValueError(f"{self.ggml_type.name}.{f.name}: expected {f.size} bytes per block, got "
                                 f"{p.shape[-1]}")
            cols.append(p)
        return torch.cat(cols, dim=-1)


def _layout(ggml_type: GGMLType, block_size: int, *fields: tuple[str, int, torch.dtype]) -> BlockLayout:
    """Fields in struct order as (name, bytes, dtype); offsets follow (ggml's block structs are packed)."""
    out, offset = [], 0
    for name, size, dtype in fields:
        out.append(Field(name, offset, size, dtype))
        offset += size
    return BlockLayout(ggml_type, block_size, tuple(out))


F16, U8, I8 = torch.float16, torch.uint8, torch.int8

Q4_0 = _layout(GGMLType.Q4_0, 32, ("d", 2, F16), ("qs", 16, U8))
Q4_1 = _layout(GGMLType.Q4_1, 32, ("d", 2, F16), ("m", 2, F16), ("qs", 16, U8))
Q5_0 = _layout(GGMLType.Q5_0, 32, ("d", 2, F16), ("qh", 4, U8), ("qs", 16, U8))
Q5_1 = _layout(GGMLType.Q5_1, 32, ("d", 2, F16), ("m", 2, F16), ("qh", 4, U8), ("qs", 16, U8))
Q8_0 = _layout(GGMLType.Q8_0, 32, ("d", 2, F16), ("qs", 32, I8))
IQ4_NL = _layout(GGMLType.IQ4_NL, 32, ("d", 2, F16), ("qs", 16, U8))
Q2_K = _layout(GGMLType.Q2_K, 256, ("scales", 16, U8), ("qs", 64, U8), ("d", 2, F16), ("dmin", 2, F16))
Q3_K = _layout(GGMLType.Q3_K, 256, ("hmask", 32, U8), ("qs", 64, U8), ("scales", 12, U8), ("d", 2, F16))
Q4_K = _layout(GGMLType.Q4_K, 256, ("d", 2, F16), ("dmin", 2, F16), ("scales", 12, U8), ("qs", 128, U8))
Q5_K = _layout(GGMLType.Q5_K, 256, ("d", 2, F16), ("dmin", 2, F16), ("scales", 12, U8), ("qh", 32, U8),
               ("qs", 128, U8))
Q6_K = _layout(GGMLType.Q6_K, 256, ("ql", 128, U8), ("qh", 64, U8), ("scales", 16, I8), ("d", 2, F16))
Q8_K = _layout(GGMLType.Q8_K, 256, ("d", 4, torch.float32), ("qs", 256, I8), ("bsums", 32, torch.int16))

LAYOUTS: MappingProxyType[GGMLType, BlockLayout] = MappingProxyType({
    lay.ggml_type: lay for lay in (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K)
})
