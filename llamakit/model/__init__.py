"""The llama network over packed ggml weights: config, layers and kernels, the model. No file I/O."""

from .config import LlamaConfig
from .layers import QuantEmbedding, QuantLinear
from .llama import Block, Llama, RMSNorm, apply_rope, rope_cos_sin

__all__ = ["Block", "Llama", "LlamaConfig", "QuantEmbedding", "QuantLinear", "RMSNorm", "apply_rope",
           "rope_cos_sin"]
