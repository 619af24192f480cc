"""The codec registry: one torch codec per ggml type (imported through the package, lazily)."""

from __future__ import annotations

from types import MappingProxyType

from ..errors import UnsupportedError
from ..gguf.constants import GGMLType
from .base import Codec, as_tensor
from .floats import BF16, F16, F32
from .iq4nl import IQ4_NL
from .kquants import Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K
from .legacy import Q4_0, Q4_1, Q5_0, Q5_1, Q8_0

CODECS = MappingProxyType({
    c.ggml_type: c()
    for c in (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, IQ4_NL)
})


def get_codec(ggml_type: GGMLType, what: str = "tensor") -> Codec:
    try:
        return CODECS[GGMLType(ggml_type)]
    except (KeyError, ValueError):
        supported = ", ".join(t.name for t in CODECS)
        raise UnsupportedError(
            f"{what}: ggml type {getattr(ggml_type, 'name', ggml_type)} is not supported by llamakit "
            f"(supported: {supported})"
        ) from None


__all__ = ["CODECS", "Codec", "as_tensor", "get_codec"]
