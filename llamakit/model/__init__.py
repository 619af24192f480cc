"""The llama network over packed ggml weights: config, layers and kernels, the model. No file I/O."""

from .config import LlamaConfig
from .layers import QuantEmbedding, QuantLinear
from .llama import Batch, Block, Llama, RMSNorm, Run, apply_rope, rope_cos_sin, rope_tables

__all__ = ["Batch", "Block", "Llama", "LlamaConfig", "QuantEmbedding", "QuantLinear", "RMSNorm", "Run",
           "apply_rope", "rope_cos_sin", "rope_tables"]
