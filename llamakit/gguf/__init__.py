"""The GGUF container: constants, a validated memory-mapped reader, and a streaming atomic writer."""

from .constants import GGML_BLOCK, GGMLType, GGUFValueType, Keys, LlamaFileType, TokenType
from .reader import GGUFReader, GGUFValue, TensorInfo
from .writer import GGUFWriter

__all__ = [
    "GGML_BLOCK", "GGMLType", "GGUFValueType", "Keys", "LlamaFileType", "TokenType",
    "GGUFReader", "GGUFValue", "TensorInfo", "GGUFWriter",
]
