"""User-facing errors. `cli.py` catches LlamakitError once and prints its message on one line.

Anything that is not a LlamakitError is a bug and keeps its traceback.
"""

from __future__ import annotations


class LlamakitError(Exception):
    """An error the user can act on: the message names the file (if any) and what to do."""


class GGUFFormatError(LlamakitError):
    """A GGUF file is truncated, malformed or malicious."""


class UnsupportedError(LlamakitError):
    """Valid input that llamakit cannot handle (tensor type, architecture, tokenizer...)."""


class InputError(LlamakitError):
    """Missing or unreadable input, wrong arguments, an output path that cannot be written."""


class OutOfMemoryError(LlamakitError):
    """The model, the KV cache or a batch does not fit in the memory of the device it was placed on."""
