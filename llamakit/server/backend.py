"""The server's model: loading, the tokenizer, and the slots' multi-sequence Context.

`Backend` loads the model and tokenizer and builds ONE engine `Context(lm, n_ctx_per_slot, n_seq=N)`: the
scheduler decodes every active slot with one `decode_batch` per step. Embeddings are the mean of the final hidden
states (the output norm's output), read with a forward hook in a scratch context, so the slots' caches are untouched.
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


class Backend:
    """The model, its tokenizer and the slots' Context, with the few calls the server makes."""

    def __init__(self, model_path: Path, n_ctx: int, n_seq: int, gpu_layers: int = -1,
                 n_threads: int | None = None, log: Any = None) -> None:
        """n_ctx: all sequences together, as llama-server's -c (0 = the model's training context)."""
        self.n_threads = n_threads
        self.lm = load_model(model_path, gpu_layers=gpu_layers, log=log)
        try:
            self.tok = Tokenizer.from_metadata(self.lm.metadata)
            self.n_vocab = self.lm.config.n_vocab
            n_slot = (n_ctx or self.lm.config.n_ctx_train) // n_seq
            if n_slot < 8:
                raise InputError(f"-c {n_ctx} over -np {n_seq} leaves {n_slot} tokens per slot; raise -c")
            self.ctx = Context(self.lm, n_slot, n_seq=n_seq, n_threads=n_threads)
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
            Context(self.lm, len(tokens), n_threads=self.n_threads).decode(list(tokens), logits="all")
        finally:
            hook.remove()
        h = torch.cat(rows).float().mean(0)
        return torch.nn.functional.normalize(h, dim=0).tolist()
