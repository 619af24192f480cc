"""Matmul kernels over packed ggml weights: the registry (ggml type, device type) -> kernel, the torch
kernels (any device; the reference and the fallback) and the native CPU library (`native/`)."""
