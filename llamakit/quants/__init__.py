"""Block codecs, one per ggml type, looked up by type.

`get_codec(GGMLType.Q8_0).quantize(rows)`; a type llamakit cannot compute raises UnsupportedError.
`LAYOUTS[GGMLType.Q6_K]["scales"]`: a block format's named byte fields (layouts.py), for codecs and kernels.

The codecs are torch code; they (and torch) are imported on first use of a name below, so that importing
`llamakit.quants.mixes` (llama-quantize's type rules, plain Python) does not cost a torch import: a
`llamakit quantize` that runs on the native quantizers never imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .layouts import LAYOUTS, BlockLayout, Field
    from .registry import CODECS, Codec, as_tensor, get_codec

_LAZY = ("CODECS", "Codec", "as_tensor", "get_codec")
_LAYOUT_NAMES = ("LAYOUTS", "BlockLayout", "Field")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import registry

        return getattr(registry, name)
    if name in _LAYOUT_NAMES:
        from . import layouts

        return getattr(layouts, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CODECS", "LAYOUTS", "BlockLayout", "Codec", "Field", "as_tensor", "get_codec"]
