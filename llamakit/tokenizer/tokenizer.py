"""`Tokenizer`: llama.cpp's llama_tokenize / llama_token_to_piece / llama_detokenize from GGUF metadata.

    tok = Tokenizer.from_metadata(GGUFReader(path).metadata)
    ids = tok.encode("Hello", add_special=True, parse_special=False)   # llama_tokenize(..., add_special, parse_special)
    tok.decode(ids)                                                    # llama_detokenize(..., special=False)
    dec = tok.stream_decoder(); "".join(dec.feed(i) for i in ids) + dec.flush()

Encoding (src/llama-vocab.cpp impl::tokenize): the text is first cut around special tokens (user-defined
tokens always, control tokens only with parse_special), then each raw fragment is tokenized on its own. For
SentencePiece vocabularies a space is put in front of a fragment at the start or right after a special token
(add_space_prefix) and spaces become '▁'; BPE fragments go through the pre-tokenizer regexes.
"""

from __future__ import annotations

import codecs
from typing import Any, Iterable, Mapping, Sequence

from ..errors import InputError
from .bpe import BpeEncoder, word_engine
from .spm import SPACE, SpmEncoder
from .unicode import byte_decode_table
from .vocab import Attr, Vocab, load_vocab

# plain ints: IntFlag arithmetic is slow in loops
_SPECIAL = int(Attr.CONTROL | Attr.UNKNOWN)
_USER = int(Attr.USER_DEFINED)
_NORMAL = int(Attr.NORMAL)
_BYTE = int(Attr.BYTE)
_LSTRIP = int(Attr.LSTRIP)
_RSTRIP = int(Attr.RSTRIP)
_C_SPACE = " \t\n\v\f\r"  # C isspace() in the "C" locale


class Tokenizer:
    """A vocabulary plus the matching tokenizer; immutable apart from internal caches."""

    def __init__(self, vocab: Vocab, chat_template: str | None = None, engine: str = "auto") -> None:
        self.vocab = vocab
        self.chat_template = chat_template  # tokenizer.chat_template (Jinja source), if the model has one
        self._pieces: list[bytes] | None = None
        if vocab.model == "llama":
            self._spm = SpmEncoder(vocab.token_to_id, vocab.scores)
            self.engine = "python-spm"
        else:
            try:
                word_enc, self.engine = word_engine(vocab.token_to_id, vocab.merges, vocab.ignore_merges, engine)
            except ValueError as e:
                raise InputError(f"engine='rust' cannot reproduce llama.cpp for this vocabulary: {e}") from None
            self._bpe = BpeEncoder(word_enc)
            vocab.pre_tokenizer.compile()  # type: ignore[union-attr]

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], engine: str = "auto") -> "Tokenizer":
        """Build from the `GGUFReader.metadata` dict (only `tokenizer.*` and `general.name` are read).

        engine: "auto" (Rust `tokenizers` BPE when it reproduces llama.cpp), "rust" or "python" (BPE only).
        """
        tmpl = metadata.get("tokenizer.chat_template")
        return cls(load_vocab(metadata), chat_template=str(tmpl) if tmpl else None, engine=engine)

    # ----------------------------------------------------------------------------------------------- ids
    @property
    def n_vocab(self) -> int:
        return self.vocab.n_vocab

    @property
    def bos_id(self) -> int | None:
        return self.vocab.special["bos"]

    @property
    def eos_id(self) -> int | None:
        return self.vocab.special["eos"]

    @property
    def eot_id(self) -> int | None:
        return self.vocab.special["eot"]

    @property
    def eom_id(self) -> int | None:
        return self.vocab.special["eom"]

    @property
    def unk_id(self) -> int | None:
        return self.vocab.special["unk"]

    @property
    def pad_id(self) -> int | None:
        return self.vocab.special["pad"]

    @property
    def add_bos(self) -> bool:
        return self.vocab.add_bos

    @property
    def add_eos(self) -> bool:
        return self.vocab.add_eos

    @property
    def add_space_prefix(self) -> bool:
        return self.vocab.add_space_prefix

    @property
    def eog_ids(self) -> frozenset[int]:
        """End-of-generation ids (llama_vocab_is_eog): eos, eot, eom, and <|im_end|>, <|eot_id|>... by text."""
        return self.vocab.eog_ids

    @property
    def model(self) -> str:
        return self.vocab.model

    @property
    def pre(self) -> str:
        return self.vocab.pre

    def is_eog(self, token_id: int) -> bool:
        return token_id in self.vocab.eog_ids

    def is_control(self, token_id: int) -> bool:
        return bool(self.vocab.attrs[self._check(token_id)] & Attr.CONTROL)

    def attr(self, token_id: int) -> Attr:
        return Attr(self.vocab.attrs[self._check(token_id)])

    def token_text(self, token_id: int) -> str:
        """The raw vocabulary entry (llama_vocab_get_text), e.g. '▁Hello' or 'ĠHello'."""
        return self.vocab.texts[self._check(token_id)]

    def token_id(self, text: str) -> int | None:
        """The id of a vocabulary entry given its raw text, or None."""
        return self.vocab.token_to_id.get(text)

    def _check(self, token_id: int) -> int:
        if not 0 <= token_id < self.vocab.n_vocab:
            raise InputError(f"token id {token_id} is outside the vocabulary (0..{self.vocab.n_vocab - 1})")
        return token_id

    # ------------------------------------------------------------------------------------------ encode
    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids for `text`, as llama_tokenize(vocab, text, add_special, parse_special) returns them.

        add_special adds BOS/EOS where the model asks for them (tokenizer.ggml.add_bos_token/add_eos_token);
        parse_special lets control tokens written in the text (e.g. '<|im_start|>') become single tokens.
        """
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InputError(f"the text is not valid Unicode (unpaired surrogate at {e.start}): "
                             "decode input files as UTF-8") from None
        v = self.vocab
        out: list[int] = []
        fragments = self._partition(text, parse_special) if text else []
        if add_special and v.add_bos:
            if v.special["bos"] is None:
                raise InputError("the model asks for a BOS token but its vocabulary defines none")
            out.append(v.special["bos"])
        if v.model == "llama":
            prev_special = True  # a space is prefixed at the start and after each special token
            for frag in fragments:
                if isinstance(frag, int):
                    out.append(frag)
                    prev_special = True
                    continue
                if v.add_space_prefix and prev_special:
                    frag = " " + frag
                self._spm.encode(frag.replace(" ", SPACE), out)
                prev_special = False
        else:
            split = v.pre_tokenizer.split  # type: ignore[union-attr]
            for frag in fragments:
                if isinstance(frag, int):
                    out.append(frag)
                else:
                    self._bpe.encode(split(frag), out)
        if add_special and v.add_eos:
            if v.special["eos"] is None:
                raise InputError("the model asks for an EOS token but its vocabulary defines none")
            out.append(v.special["eos"])
        return out

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """tokenizer_st_partition: cut `text` around special tokens, longest token text first.

        Fragments are (start, end) ranges into `text` until the end, so LSTRIP/RSTRIP trimming and the search
        bounds follow llama.cpp's offsets exactly.
        """
        v = self.vocab
        frags: list[tuple[int, int] | int] = [(0, len(text))]
        for tid in v.special_cache:
            attr = v.attrs[tid]
            if not parse_special and attr & _SPECIAL:
                continue  # control and unknown tokens are only parsed on request; user-defined always
            t = v.texts[tid]
            if t not in text:
                continue
            tl = len(t)
            new: list[tuple[int, int] | int] = []
            for f in frags:
                if isinstance(f, int):
                    new.append(f)
                    continue
                base, end = f
                while True:
                    m = text.find(t, base, end)
                    if m < 0:
                        break
                    left_end = m
                    if attr & _LSTRIP:
                        while left_end > base and text[left_end - 1] in _C_SPACE:
                            left_end -= 1
                    if left_end > base:
                        new.append((base, left_end))
                    new.append(tid)
                    base = m + tl
                    if attr & _RSTRIP:
                        while base < end and text[base] in _C_SPACE:
                            base += 1
                if base < end:
                    new.append((base, end))
            frags = new
        return [f if isinstance(f, int) else text[f[0] : f[1]] for f in frags]

    # ------------------------------------------------------------------------------------------ decode
    def token_to_piece(self, token_id: int, special: bool = False) -> bytes:
        """llama_token_to_piece(vocab, id, buf, len, lstrip=0, special): the bytes a token stands for.

        Control and unknown tokens give b'' unless `special`; user-defined tokens give their text; SPM
        '▁' becomes a space and <0xNN> the byte; BPE byte characters become their bytes.
        """
        attr = self.vocab.attrs[self._check(token_id)]
        if not special and attr & _SPECIAL:
            return b""
        return self._piece_table()[token_id]

    def _piece_table(self) -> list[bytes]:
        """Every token's piece with special=True (llama.cpp's cache_token_to_piece), built on first use."""
        if self._pieces is None:
            v = self.vocab
            pieces: list[bytes] = []
            bpe = v.model == "gpt2"
            if bpe:
                # byte characters -> their byte value; any other character below U+0100 -> U+FFFF so that
                # encoding to latin-1 fails for every token that is not made of byte characters only
                dec = dict(byte_decode_table())
                for c in range(256):
                    dec.setdefault(c, 0xFFFF)
            for text, attr in zip(v.texts, v.attrs):
                if attr & (_SPECIAL | _USER):
                    pieces.append(text.encode("utf-8"))
                elif attr & _NORMAL:
                    if not bpe:
                        pieces.append(text.replace(SPACE, " ").encode("utf-8"))
                    else:
                        try:
                            pieces.append(text.translate(dec).encode("latin-1"))
                        except UnicodeEncodeError:
                            pieces.append(_decode_text_slow(text))
                elif attr & _BYTE and not bpe:
                    pieces.append(bytes([int(text[3:5], 16)]))
                else:
                    pieces.append(b"")
            self._pieces = pieces
        return self._pieces

    def detokenize(self, ids: Iterable[int], special: bool = False, remove_special: bool = False,
                   clean_spaces: bool | None = None) -> bytes:
        """llama_detokenize(vocab, ids, remove_special, unparse_special=special) as bytes.

        The first piece loses one leading space when the vocabulary adds a space prefix (SentencePiece);
        remove_special drops a leading BOS / trailing EOS the model adds; BPE vocabularies with clean_spaces
        then remove the space before ? ! . , and in some English contractions (clean_spaces: None = as the
        vocabulary says, True/False to force).
        """
        v = self.vocab
        ids = list(ids)
        remove_space = v.add_space_prefix
        if remove_special and v.add_bos and ids and ids[0] == v.special["bos"]:
            remove_space = False
            ids = ids[1:]
        if remove_special and v.add_eos and ids and ids[-1] == v.special["eos"]:
            ids = ids[:-1]
        parts: list[bytes] = []
        for tid in ids:
            piece = self.token_to_piece(tid, special)
            if remove_space and piece.startswith(b" "):
                piece = piece[1:]
            remove_space = False
            parts.append(piece)
        data = b"".join(parts)
        if v.clean_spaces if clean_spaces is None else clean_spaces:
            data = _clean_spaces(data)
        return data

    def decode(self, ids: Iterable[int], special: bool = False, remove_special: bool = False,
               clean_spaces: bool | None = None) -> str:
        """detokenize() as text; bytes that are not valid UTF-8 become U+FFFD."""
        return self.detokenize(ids, special, remove_special, clean_spaces).decode("utf-8", errors="replace")

    def stream_decoder(self, special: bool = False, strip_leading_space: bool | None = None) -> "StreamDecoder":
        """A decoder fed one id at a time (for printing tokens as they are generated).

        strip_leading_space: drop one leading space of the first piece (SentencePiece's rule, what decode()
        does); None means "when the vocabulary adds a space prefix". Pass False when continuing a prompt.
        """
        if strip_leading_space is None:
            strip_leading_space = self.vocab.add_space_prefix
        return StreamDecoder(self, special, strip_leading_space)

    # -------------------------------------------------------------------------------------------- chat
    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                            template: str | None = None, warn: Any = None, **extra: Any) -> str:
        """Render the model's chat template (or `template`, or ChatML when there is none) for `messages`.

        A BOS text at the start (EOS text at the end) is removed when the model adds that token itself, so
        that encode(result, add_special=True, parse_special=True) has exactly one (see chat.py).
        """
        from .chat import render_chat

        bos = self.token_to_piece(self.bos_id, True).decode("utf-8", "replace") if self.bos_id is not None else ""
        eos = self.token_to_piece(self.eos_id, True).decode("utf-8", "replace") if self.eos_id is not None else ""
        return render_chat(template if template is not None else self.chat_template, messages,
                           add_generation_prompt, bos, eos, self.add_bos, self.add_eos, warn, **extra)


class StreamDecoder:
    """Turns ids into text piece by piece; an incomplete UTF-8 sequence waits for the bytes that finish it."""

    def __init__(self, tok: Tokenizer, special: bool, strip_leading_space: bool) -> None:
        self._tok = tok
        self._special = special
        self._strip = strip_leading_space
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        """The text that became complete with this token ('' while a character is still incomplete)."""
        piece = self._tok.token_to_piece(token_id, self._special)
        if self._strip:
            self._strip = False
            if piece.startswith(b" "):
                piece = piece[1:]
        return self._utf8.decode(piece)

    def flush(self) -> str:
        """Whatever is held back, with an incomplete sequence as U+FFFD (call at the end)."""
        return self._utf8.decode(b"", final=True)


def _decode_text_slow(text: str) -> bytes:
    """llama_decode_text for a token with characters outside GPT-2's byte table (kept as llama.cpp does)."""
    dec = byte_decode_table()
    out = bytearray()
    for ch in text:
        b = dec.get(ord(ch))
        if b is not None:
            out.append(b)
        else:
            utf8 = ch.encode("utf-8")
            out += b"[UNK_BYTE_0x" + utf8.hex().encode() + text.encode("utf-8") + b"]"
    return bytes(out)


def _clean_spaces(data: bytes) -> bytes:
    """The three clean-up passes of llama_detokenize (clean_up_tokenization_spaces), in place as written there.

    1. drop a space before ? ! . ,   2. " ' " -> "'"   3. drop the space before 's 'm 're 've
    Each pass compacts the buffer while reading it, so later reads can see already-moved bytes; kept as is.
    """
    t = bytearray(data)
    sp, ap = 0x20, 0x27
    # pass 1
    total1 = len(t)
    total = 1 if total1 else 0
    for i in range(1, total1):
        x = t[i]
        if t[i - 1] == sp and x in b"?!.,":
            total -= 1
        t[total] = x
        total += 1
    # pass 2
    total2 = total
    total = 1 if total2 else 0
    i = 1
    while i < total2:
        x = t[i]
        if x == ap and i + 1 < total2 and t[i - 1] == sp and t[i + 1] == sp:
            total -= 1
            i += 1
            t[i] = 0
        t[total] = x
        total += 1
        i += 1
    # pass 3
    total3 = total
    total = 1 if total3 else 0
    for i in range(1, total3):
        x = t[i]
        if t[i - 1] == sp and x == ap and i + 1 < total3:
            x1 = t[i + 1]
            if x1 in b"sm":
                total -= 1
            elif x1 not in b"td" and i + 2 < total3:
                x2 = t[i + 2]
                if (x1, x2) in ((0x72, 0x65), (0x76, 0x65)):  # 're 've
                    total -= 1
        t[total] = x
        total += 1
    return bytes(t[:total])
