"""Tokenizers built from GGUF `tokenizer.ggml.*` metadata, token for token what llama.cpp produces.

    from llamakit.tokenizer import Tokenizer
    tok = Tokenizer.from_metadata(reader.metadata)

Imports only llamakit.errors, the standard library, `tokenizers` (lazily) and `jinja2` (lazily, chat templates).
"""

from .tokenizer import StreamDecoder, Tokenizer
from .vocab import Attr

__all__ = ["Attr", "StreamDecoder", "Tokenizer"]
