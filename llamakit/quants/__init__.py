"""Block codecs, one per ggml type, looked up by type.

`get_codec(GGMLType.Q8_0).quantize(rows)`; a type llamakit cannot compute raises UnsupportedError.

The codecs are torch code; they (and torch) are imported on first use of a name below, so that importing
`llamakit.quants.mixes` (llama-quantize's type rules, plain Python) does not cost a torch import: a
`llamakit quantize` that runs on the native quantizers never imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .registry import CODECS, Codec, as_tensor, get_codec

_LAZY = ("CODECS", "Codec", "as_tensor", "get_codec")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CODECS", "Codec", "as_tensor", "get_codec"]
