"""llamakit: convert, quantize and run llama-family GGUF models, byte-compatible with llama.cpp.

Kept free of heavy imports so that `llamakit --help` starts instantly.
"""

__version__ = "0.1.0"
