"""Loading, placement, KV cache, sampling and generation."""
