"""TEMPORARY: loading the model for the server, and a stand-in for the engine's multi-sequence Context.

`Backend` loads the model and tokenizer and builds the slots' Context: the engine's `Context(lm, n_ctx, n_seq=N)`
when it has `decode_batch` (branch `engine`, H2), else `MultiContext` below. `MultiContext` follows the engine
contract but emulates `decode_batch` with one Context per sequence: the scheduler's calls are exactly those the
real engine gets (one decode_batch per step for every active slot), but each item is still its own forward pass.
Once `engine` is merged, delete MultiContext; the loading (and `embed`) belong behind `llamakit.api` (H4's `Llama`
builds a single-sequence context today). This file imports tokenizer directly: tests/test_imports.py lists it as a
temporary exception to "server -> api, runtime, errors".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..runtime.generate import Context
from ..runtime.loader import load_model
from ..tokenizer import Tokenizer


class MultiContext:
    """n_seq sequences of n_ctx positions each: the engine contract's decode_batch / truncate / n_past_of."""

    def __init__(self, lm: Any, n_ctx: int, n_seq: int) -> None:
        self.n_ctx, self.n_seq, self.cfg = n_ctx, n_seq, lm.config
        self._seqs = [Context(lm, n_ctx) for _ in range(n_seq)]  # the engine's default cache type
        self.n_batch, self.perf = self._seqs[0].n_batch, self._seqs[0].perf

    def n_past_of(self, seq: int) -> int:
        return self._seqs[seq].n_past

    def truncate(self, n: int, seq: int = 0) -> None:
        c = self._seqs[seq]
        c.n_past = max(0, min(n, c.n_past))

    def clear(self, seq: int | None = None) -> None:
        for i, c in enumerate(self._seqs):
            if seq is None or i == seq:
                c.clear()

    def decode_batch(self, items: Sequence[tuple[int, Sequence[int]]]) -> list[torch.Tensor]:
        return [self._seqs[s].decode(list(toks))[-1:] for s, toks in items]


class Backend:
    """The model, its tokenizer and a MultiContext, with the few calls the server makes."""

    def __init__(self, model_path: Path, n_ctx: int, n_seq: int, gpu_layers: int = -1) -> None:
        """n_ctx: all sequences together, as llama-server's -c (0 = the model's training context)."""
        self.lm = load_model(model_path, gpu_layers=gpu_layers)
        try:
            self.tok = Tokenizer.from_metadata(self.lm.metadata)
            self.n_vocab = self.lm.config.n_vocab
            n_slot = (n_ctx or self.lm.config.n_ctx_train) // n_seq
            if n_slot < 8:
                raise InputError(f"-c {n_ctx} over -np {n_seq} leaves {n_slot} tokens per slot; raise -c")
            # the engine's own multi-sequence Context once it has one (n_ctx per sequence assumed), else the stand-in
            self.ctx = (Context(self.lm, n_slot, n_seq=n_seq) if hasattr(Context, "decode_batch")  # type: ignore
                        else MultiContext(self.lm, n_slot, n_seq))
        except BaseException:
            self.lm.close()
            raise
        self.eog_ids = frozenset(self.tok.eog_ids)

    def close(self) -> None:
        self.lm.close()

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return self.tok.encode(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids: Sequence[int]) -> str:
        for t in ids:
            if not 0 <= int(t) < self.n_vocab:
                raise InputError(f"token id {t} is out of range (vocabulary of {self.n_vocab})")
        return self.tok.decode([int(t) for t in ids])

    def piece(self, token: int) -> str:
        return self.piece_bytes(token).decode("utf-8", "replace")

    def piece_bytes(self, token: int) -> bytes:
        return self.tok.token_to_piece(token, True)

    def chat_prompt(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """The model's chat template (ChatML when it has none), as Llama.apply_chat_template renders it."""
        return self.tok.apply_chat_template(messages, add_generation_prompt=True)

    @torch.inference_mode()
    def embed(self, tokens: Sequence[int]) -> list[float]:
        """Mean of the final hidden states (the output norm's output) over the tokens, scaled to unit length.
        Evaluated in a scratch context of len(tokens) positions (the slots' caches are untouched); the states are
        read with a forward hook on `output_norm`, so this works with any Context that runs the model."""
        rows: list[torch.Tensor] = []
        hook = self.lm.model.output_norm.register_forward_hook(lambda _m, _i, out: rows.append(out.detach()))
        try:
            Context(self.lm, len(tokens)).decode(list(tokens), logits="all")
        finally:
            hook.remove()
        h = torch.cat(rows).float().mean(0)
        return torch.nn.functional.normalize(h, dim=0).tolist()
