"""Tokenizer vs llama.cpp's own test vectors (ggml-vocab-*.gguf.inp/.out), decode, streaming, engines.

The .inp/.out pairs were produced by llama.cpp (tests/test-tokenizer-0.cpp): inputs are separated by lines
`__ggml_vocab_test__`, and line i of .out holds the ids of input i with add_special=false, parse_special=false.
"""

from __future__ import annotations

import random

import pytest
from .conftest import VOCAB
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamakit.errors import InputError, UnsupportedError
from llamakit.gguf import GGUFReader
from llamakit.tokenizer import Attr, Tokenizer
from llamakit.tokenizer.tokenizer import _clean_spaces

SEP = b"\n__ggml_vocab_test__\n"


def read_cases(name: str) -> list[tuple[str, list[int]]]:
    """Split exactly as read_tests() in llama.cpp's tests/test-tokenizer-0.cpp does."""
    raw = (VOCAB / f"ggml-vocab-{name}.gguf.inp").read_bytes()
    inputs, pos = [], 0
    while pos < len(raw):
        nxt = raw.find(SEP, pos)
        if nxt < 0:
            inputs.append(raw[pos:])
            break
        inputs.append(raw[pos:nxt])
        pos = nxt + len(SEP)
    outputs = (VOCAB / f"ggml-vocab-{name}.gguf.out").read_text().splitlines()
    assert len(inputs) == len(outputs) == 46
    return [(i.decode("utf-8"), [int(x) for x in o.split()]) for i, o in zip(inputs, outputs)]


def load(path, **kw) -> Tokenizer:
    with GGUFReader(path) as r:
        return Tokenizer.from_metadata(r.metadata, **kw)


def metadata(path) -> dict:
    with GGUFReader(path) as r:
        return dict(r.metadata)


@pytest.fixture(scope="module")
def spm() -> Tokenizer:
    return load(VOCAB / "ggml-vocab-llama-spm.gguf")


@pytest.fixture(scope="module")
def gpt2() -> Tokenizer:
    return load(VOCAB / "ggml-vocab-gpt-2.gguf")


@pytest.fixture(scope="module")
def gpt2_py() -> Tokenizer:
    return load(VOCAB / "ggml-vocab-gpt-2.gguf", engine="python")


SPM_CASES = read_cases("llama-spm")
GPT2_CASES = read_cases("gpt-2")


@pytest.mark.parametrize("text,expected", SPM_CASES, ids=[repr(t)[:30] for t, _ in SPM_CASES])
def test_llama_spm_vectors(spm: Tokenizer, text: str, expected: list[int]) -> None:
    assert spm.encode(text, add_special=False) == expected
    # llama.cpp's SPM detokenizer undoes the space prefix, so every vector round-trips
    assert spm.decode(expected, special=True) == text


@pytest.mark.parametrize("text,expected", GPT2_CASES, ids=[repr(t)[:30] for t, _ in GPT2_CASES])
def test_gpt2_vectors(gpt2: Tokenizer, gpt2_py: Tokenizer, text: str, expected: list[int]) -> None:
    assert gpt2.engine == "tokenizers-bpe" and gpt2_py.engine == "python-bpe"
    assert gpt2.encode(text, add_special=False) == expected
    assert gpt2_py.encode(text, add_special=False) == expected
    # The pieces always concatenate to the input; llama_detokenize then applies GPT-2's clean-up of spaces
    # (clean_spaces is on for pre 'gpt-2'), so the decoded text loses e.g. the space of " ?".
    assert gpt2.detokenize(expected, special=True, clean_spaces=False) == text.encode()
    assert gpt2.decode(expected, special=True) == _clean_spaces(text.encode()).decode()


def test_gpt2_decode_cleans_spaces_like_llama_cpp(gpt2: Tokenizer) -> None:
    # The two vectors llama.cpp does not round-trip, by hand from llama_detokenize's three passes.
    ids = gpt2.encode("Hello, y'all! How are you 😁 ?我")
    assert gpt2.decode(ids) == "Hello, y'all! How are you 😁?我"
    assert gpt2.decode(gpt2.encode(" Hello , world ! I 'm here . It 's ' ok ' , do 'nt , we 've , we 'll"), True) == (
        " Hello, world! I'm here. It's'ok ', do 'nt, we've, we 'll")  # "' ," -> "'," then " ' " -> "'"


@pytest.mark.parametrize("raw,clean", [
    (b"a ,b", b"a,b"), (b"x ? y !", b"x? y!"), (b"a ' b", b"a'b"), (b"I 'm", b"I'm"), (b"it 's", b"it's"),
    (b"we 're", b"we're"), (b"you 've", b"you've"), (b"don 't", b"don 't"), (b"he 'd", b"he 'd"),
    (b"we 'll", b"we 'll"), (b" ", b" "), (b"", b""), (b" .", b"."), (b"a  ,", b"a ,"),
])
def test_clean_spaces(raw: bytes, clean: bytes) -> None:
    assert _clean_spaces(raw) == clean


def test_special_ids_and_flags(spm: Tokenizer, gpt2: Tokenizer) -> None:
    assert (spm.bos_id, spm.eos_id, spm.unk_id, spm.eot_id, spm.n_vocab) == (1, 2, 0, None, 32000)
    assert spm.add_bos and not spm.add_eos and spm.add_space_prefix
    assert spm.eog_ids == frozenset({2})
    assert spm.is_control(1) and spm.is_control(2) and not spm.is_control(0) and spm.attr(0) == Attr.UNKNOWN
    assert spm.encode("Hello") == [1, 15043]
    assert spm.encode("") == [1] and spm.encode("", add_special=False) == []
    # GPT-2: <|endoftext|> is bos = eos = eot (found by text) and the only end-of-generation token
    assert (gpt2.bos_id, gpt2.eos_id, gpt2.eot_id, gpt2.n_vocab) == (50256, 50256, 50256, 50257)
    assert not gpt2.add_bos and gpt2.eog_ids == frozenset({50256})


def test_parse_special(spm: Tokenizer, gpt2: Tokenizer) -> None:
    # control tokens in the text are plain text unless parse_special; a space prefix follows a special token
    assert spm.encode("<s>Hi</s>", add_special=False, parse_special=True) == [1, 6324, 2]
    assert spm.encode("<s>Hi</s>", add_special=False)[0] != 1
    assert gpt2.encode("a<|endoftext|>b", add_special=False, parse_special=True) == [64, 50256, 65]
    assert 50256 not in gpt2.encode("a<|endoftext|>b", add_special=False)


def test_user_defined_tokens_always_split() -> None:
    # A USER_DEFINED token is cut out of the text even without parse_special; each fragment after it gets
    # its own SentencePiece space prefix (llama.cpp's is_prev_special rule).
    md = metadata(VOCAB / "ggml-vocab-llama-spm.gguf")
    types = md["tokenizer.ggml.token_type"].copy()
    hello = md["tokenizer.ggml.tokens"].index("▁Hello")
    types[hello] = 4  # USER_DEFINED
    md["tokenizer.ggml.token_type"] = types
    tok = Tokenizer.from_metadata(md)
    ids = tok.encode("x▁Hellox", add_special=False)
    assert hello in ids
    assert ids == tok.encode("x", add_special=False) + [hello] + tok.encode("x", add_special=False)


def test_streaming_holds_back_incomplete_utf8(spm: Tokenizer) -> None:
    ids = spm.encode("Hi 🦙!", add_special=False)  # the llama emoji is spelled with 4 byte tokens
    byte_ids = [i for i in ids if spm.attr(i) == Attr.BYTE]
    assert len(byte_ids) == 4
    dec = spm.stream_decoder()
    out = [dec.feed(i) for i in ids]
    assert out[0] == "Hi"  # the leading space of the first piece is dropped (SentencePiece rule)
    assert "".join(out) + dec.flush() == "Hi 🦙!"
    first_byte = ids.index(byte_ids[0])
    assert out[first_byte : first_byte + 3] == ["", "", ""] and out[first_byte + 3] == "🦙"
    # an unfinished character at the end comes out as U+FFFD on flush
    dec = spm.stream_decoder(strip_leading_space=False)
    assert [dec.feed(i) for i in byte_ids[:2]] == ["", ""]
    assert dec.flush() == "\ufffd"
    # continuing after a prompt: keep the space
    dec = spm.stream_decoder(strip_leading_space=False)
    assert dec.feed(spm.encode("Hello", add_special=False)[0]) == " Hello"


def test_token_to_piece(spm: Tokenizer, gpt2: Tokenizer) -> None:
    assert spm.token_to_piece(15043) == b" Hello"
    assert spm.token_to_piece(1) == b"" and spm.token_to_piece(1, special=True) == b"<s>"
    assert spm.token_to_piece(0) == b"" and spm.token_to_piece(0, special=True) == b"<unk>"
    assert spm.token_to_piece(13) == b"\n"  # <0x0A>
    assert gpt2.token_to_piece(220) == b" " and gpt2.token_to_piece(198) == b"\n"
    assert gpt2.token_to_piece(50256) == b"" and gpt2.token_to_piece(50256, True) == b"<|endoftext|>"
    with pytest.raises(InputError):
        spm.token_to_piece(32000)


# ---------------------------------------------------------------------------------------------- properties
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
# SentencePiece writes spaces as U+2581, so a literal U+2581 decodes to a space (in llama.cpp too)
SPM_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\u2581"), max_size=40)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(SPM_TEXT)
def test_spm_round_trip(spm: Tokenizer, s: str) -> None:
    ids = spm.encode(s, add_special=False)
    assert spm.decode(ids, special=True) == s
    # llama_detokenize keeps the prefix space when it removes a BOS (remove_space = false), and lstrips only the
    # first piece, here the BOS text
    assert spm.decode([1, *ids], special=True, remove_special=True) == (" " + s if s else "")
    assert spm.decode([1, *ids], special=True) == "<s>" + (" " + s if s else "")


@SETTINGS
@given(TEXT)
def test_gpt2_round_trip_and_engines_agree(gpt2: Tokenizer, gpt2_py: Tokenizer, s: str) -> None:
    ids = gpt2.encode(s, add_special=False)
    assert gpt2_py.encode(s, add_special=False) == ids
    assert gpt2.detokenize(ids, special=True, clean_spaces=False) == s.encode()


@SETTINGS
@given(TEXT)
def test_spm_short_and_long_merge_paths_agree(spm: Tokenizer, s: str) -> None:
    enc = spm._spm  # the list-based merge for short pieces vs llama.cpp's priority queue
    esc = ("▁" + s).replace(" ", "▁")
    for piece in enc._pieces(esc):
        assert enc._merge(piece) == enc._merge_heap(piece)


@SETTINGS
@given(TEXT)
def test_spm_pieces_equal_unsplit_merge(spm: Tokenizer, s: str) -> None:
    # cutting before '▁' must not change the result of merging the whole text at once
    esc = ("▁" + s).replace(" ", "▁")
    out: list[int] = []
    spm._spm.encode(esc, out)
    assert tuple(out) == spm._spm._merge_heap(esc)


@SETTINGS
@given(st.lists(st.integers(0, 31999), max_size=30))
def test_stream_equals_decode(spm: Tokenizer, ids: list[int]) -> None:
    dec = spm.stream_decoder(special=True)
    assert "".join(dec.feed(i) for i in ids) + dec.flush() == spm.decode(ids, special=True)


def test_spaces_runs_block_cuts(spm: Tokenizer) -> None:
    # '▁▁▁▁' etc. are tokens: a run of spaces must stay one piece with the word after it
    for n in range(1, 20):
        s = "a" + " " * n + "b"
        esc = ("▁" + s).replace(" ", "▁")
        assert spm.encode(s, add_special=False) == list(spm._spm._merge_heap(esc))


def test_random_long_texts_match_unsplit(spm: Tokenizer) -> None:
    rng = random.Random(5)
    words = ["the", "  ", "▁x", "über", "数学", "🦙", "\n", "\t", "   ", "12", "'s", "<s>"]
    for _ in range(50):
        s = "".join(rng.choice(words) + rng.choice(["", " "]) for _ in range(40))
        esc = ("▁" + s).replace(" ", "▁")
        assert spm.encode(s, add_special=False) == list(spm._spm._merge_heap(esc))


# ------------------------------------------------------------------------------------------------- errors
def test_unsupported_model_and_pre() -> None:
    md = metadata(VOCAB / "ggml-vocab-gpt-2.gguf")
    with pytest.raises(UnsupportedError, match="pre-tokenizer 'no-such-pre'"):
        Tokenizer.from_metadata({**md, "tokenizer.ggml.pre": "no-such-pre"})
    for model in ("bert", "t5", "rwkv", "whatever"):
        with pytest.raises(UnsupportedError, match=repr(model)):
            Tokenizer.from_metadata({**md, "tokenizer.ggml.model": model})
    with pytest.raises(InputError, match="merges"):
        Tokenizer.from_metadata({k: v for k, v in md.items() if k != "tokenizer.ggml.merges"})
    with pytest.raises(InputError, match="tokenizer.ggml.model"):
        Tokenizer.from_metadata({"general.architecture": "llama"})
    with pytest.raises(InputError, match="surrogate"):
        load(VOCAB / "ggml-vocab-llama-spm.gguf").encode("a\ud800")
    tokens = list(md["tokenizer.ggml.tokens"])
    tokens[300] = tokens[299]
    with pytest.raises(InputError, match=r"twice \(ids 299 and 300\)"):  # llama.cpp aborts on this file
        Tokenizer.from_metadata({**md, "tokenizer.ggml.tokens": tokens})


def test_missing_pre_warns_and_uses_default() -> None:
    md = metadata(VOCAB / "ggml-vocab-gpt-2.gguf")
    del md["tokenizer.ggml.pre"]
    with pytest.warns(UserWarning, match="pre is missing"):
        tok = Tokenizer.from_metadata(md)
    assert tok.vocab.pre_tokenizer.family == "default"


def test_ignore_merges_llama3_style() -> None:
    # Llama-3 pre-tokenizers take a word that is a token whole (ignore_merges). Drop the merge that builds
    # 'ĠHello' from GPT-2's list: plain BPE can no longer reach it, ignore_merges still finds it.
    md = metadata(VOCAB / "ggml-vocab-gpt-2.gguf")
    merges = list(md["tokenizer.ggml.merges"])
    last = [m for m in merges if m.replace(" ", "") == "ĠHello"]
    assert len(last) == 1
    merges.remove(last[0])
    md["tokenizer.ggml.merges"] = merges
    for engine in ("auto", "python"):
        plain = Tokenizer.from_metadata(md, engine=engine)
        llama3 = Tokenizer.from_metadata({**md, "tokenizer.ggml.pre": "llama-bpe"}, engine=engine)
        assert llama3.add_bos and not plain.add_bos
        assert len(plain.encode(" Hello", add_special=False)) > 1
        assert llama3.encode(" Hello", add_special=False) == [18435]
        assert llama3.encode(" Hello") == [50256, 18435]  # BOS (= <|endoftext|> here) added for llama-bpe
