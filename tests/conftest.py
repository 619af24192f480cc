"""Shared fixtures: paths into ../shared/reference and the SmolLM2 GGUF (fetched once with pip)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LLAMAKIT_SHARED", ROOT.parent / "shared"))
REF = SHARED / "reference"
TINY = REF / "tiny-llama"
TINY_GGUF = TINY / "llama.cpp"
VOCAB = REF / "vocab"


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1 (30 layers, BPE vocab 49152, tied embeddings)."""
    from llamakit.runtime.default_model import default_model_path

    override = os.environ.get("LLAMAKIT_SMOLLM2")
    if override:
        return Path(override)
    return default_model_path()


@pytest.fixture(scope="session")
def tiny_gguf() -> Path:
    return TINY_GGUF
