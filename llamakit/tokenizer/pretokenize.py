r"""BPE pre-tokenizers: `tokenizer.ggml.pre` name -> the list of regexes llama.cpp splits text with.

How llama.cpp applies them (src/unicode.cpp, unicode_regex_split): the text starts as one chunk; each regex in
turn splits every chunk into matches and the gaps between them (both kept, in order). The words that come out
are byte-level encoded and merged one by one.

llama.cpp runs the GPT-2 and Llama-3 regexes through hand-written scanners and the others through std::regex
on a "collapsed" text where each non-ASCII code point stands for its category. Both agree with the plain
regex read with llama.cpp's classes (`\p{L}` letters, `\p{N}` numbers, `\s` = Unicode White_Space, ...; see
unicode.py), which is what we compile for Python's `re`:
  * GPT-2: the scanner mirrors each alternative of `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|
    \s+(?!\S)|\s+` in order; every code point is covered by some alternative, so there are no gaps.
  * Llama-3: the `(?i:'s|...)` part only lower-cases with llama.cpp's own table, so it is written `'[sS]|...`
    (as llama.cpp's own copy of the regex does).
  * std::regex: `$` means end of chunk (`\Z` here); `\s` is ASCII whitespace plus non-ASCII White_Space.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from .unicode import collapse_astral, expand

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
         r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# DeepSeek LLM's letter class from its tokenizer.json (the string llama.cpp uses), as escapes: several of its
# characters have canonical equivalents (U+1F7D vs U+03CE, U+212A KELVIN SIGN vs 'K', ...) that an editor may
# silently normalise.
_DEEPSEEK_LETTERS = (
    "A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373"
    "\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481"
    "\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b"
    "\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b"
    "\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb"
    "\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128"
    "\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4"
    "\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf"
    "\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
    "\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943")
_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
_PORO = " ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+"
_DEEPSEEK_PUNCT = "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+"

_REGEXES: dict[str, tuple[str, ...]] = {
    "default": (r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"),
    "gpt2": (GPT2,),
    "llama3": (LLAMA3,),
    "qwen2": (QWEN2,),
    "starcoder": (r"\p{N}", GPT2),
    "falcon": (r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"),  # falcon's class has '`', default's not
    "deepseek-llm": ("[\r\n]", rf"\s?[{_DEEPSEEK_LETTERS}]+", _DEEPSEEK_PUNCT, r"\s+\Z", _CJK,
                     r"\p{N}+"),
    "deepseek-v3": (r"\p{N}{1,3}", "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
                    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
                    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
    "deepseek-coder": ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}"),
    "poro": (_PORO,),
    "viking": (_PORO, r"\p{N}"),
    "tekken": (r"[^\r\n\p{L}\p{N}]?(?:(?=[\p{L}])(?:[^a-z]))*(?:(?=[\p{L}])(?:[^A-Z]))+"
               r"|[^\r\n\p{L}\p{N}]?(?:(?=[\p{L}])(?:[^a-z]))+(?:(?=[\p{L}])(?:[^A-Z]))*"
               r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",),
    "chameleon": (r"<sentinel:[0-9]+>", r"(?:IMGIMG)(?:(?:A|B|C|D|E|F|G|H|I){1,4})Z", r"(?:[\t\n]|    |  )",
                  r"\p{N}", r"[\p{P}!-/:-@\[-`{-~]", GPT2),
}


@dataclass(frozen=True)
class PreTokenizer:
    """One `tokenizer.ggml.pre` family: its regexes and the flags llama.cpp sets for it."""

    family: str  # key of _REGEXES
    clean_spaces: bool = True  # decode: remove spaces before ?!., and in contractions
    ignore_merges: bool = False  # a word that is a whole token is not merged (Llama 3, Tekken)
    add_bos: bool = False
    no_bos: bool = False  # chatglm-bpe: no BOS token at all

    @property
    def regexes(self) -> tuple[str, ...]:
        return _REGEXES[self.family]

    def split(self, text: str) -> list[str]:
        """The words of `text`, in order; their concatenation is `text`."""
        patterns, bmp_only = _compiled(self.family)
        probe = collapse_astral(text) if bmp_only else text
        chunks = [probe]
        for pat in patterns:
            if len(chunks) == 1:
                chunks = [w for w in pat.split(chunks[0]) if w]
                continue
            out: list[str] = []
            for c in chunks:
                out.extend(pat.split(c))
            chunks = [w for w in out if w]  # drop the empty gaps re.split leaves around matches
        if probe is text:
            return chunks
        words, pos = [], 0  # same lengths: cut the original text where the collapsed one was cut
        for c in chunks:
            words.append(text[pos : pos + len(c)])
            pos += len(c)
        return words

    def compile(self) -> None:
        """Compile the regexes now (a few hundred ms for the big Unicode classes) rather than on first use."""
        _compiled(self.family)


@functools.lru_cache(maxsize=None)
def _compiled(family: str) -> tuple[tuple[re.Pattern[str], ...], bool]:
    """The compiled regexes and whether they expect collapse_astral()'d text.

    Classes are limited to the BMP (fast in `re`) unless a regex spells out astral code points itself
    (DeepSeek LLM's letter list), which collapsing would break. One capturing group wraps each regex so that
    re.split returns gap, match, gap, match, ..., gap.
    """
    regexes = _REGEXES[family]
    bmp_only = not any(ord(ch) > 0xFFFF for r in regexes for ch in r)
    return tuple(re.compile(f"({expand(r, bmp_only)})") for r in regexes), bmp_only


def _p(family: str, **kw: bool) -> PreTokenizer:
    return PreTokenizer(family, **kw)


# tokenizer.ggml.pre -> pre-tokenizer, as in llama-vocab.cpp impl::load (flags) and llm_tokenizer_bpe (regexes).
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "default": _p("default"),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3"), _p("llama3", ignore_merges=True, add_bos=True)),
    "deepseek-llm": _p("deepseek-llm", clean_spaces=False),
    "deepseek-coder": _p("deepseek-coder", clean_spaces=False),
    "deepseek-v3": _p("deepseek-v3", clean_spaces=False),
    "falcon": _p("falcon"),
    "mpt": _p("gpt2"),
    "starcoder": _p("starcoder"),
    **dict.fromkeys(("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v1-en", "jina-v2-es", "jina-v2-de",
                     "jina-v2-code", "roberta-bpe"), _p("gpt2")),
    "refact": _p("starcoder"),
    "command-r": _p("starcoder", clean_spaces=False),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen"), _p("qwen2", clean_spaces=False)),
    "stablelm2": _p("qwen2"),
    "olmo": _p("gpt2"),
    "dbrx": _p("llama3"),
    "smaug-bpe": _p("llama3"),
    "poro-chat": _p("poro", clean_spaces=False),
    "chatglm-bpe": _p("llama3", no_bos=True),
    "viking": _p("viking", clean_spaces=False),
    "jais": _p("gpt2"),
    "tekken": _p("tekken", clean_spaces=False, ignore_merges=True, add_bos=True),
    "smollm": _p("starcoder", clean_spaces=False),
    "codeshell": _p("starcoder"),
    "bloom": _p("poro"),
    "gpt3-finnish": _p("poro"),
    "exaone": _p("starcoder"),
    "chameleon": _p("chameleon", add_bos=True, clean_spaces=False),
    "minerva-7b": _p("starcoder"),
    "megrez": _p("qwen2"),
}
