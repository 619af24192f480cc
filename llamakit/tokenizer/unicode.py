"""Unicode facts the tokenizers need, in the shape llama.cpp uses them.

llama.cpp classifies every code point into one coarse category (src/unicode.h, unicode_cpt_flags):

    NUMBER = \\p{N} (Nd Nl No)      LETTER = \\p{L} (Lu Ll Lt Lm Lo)   MARK = \\p{M} (Mn Mc Me)
    PUNCTUATION = \\p{P} (P*)       SYMBOL = \\p{S} (S*)               SEPARATOR = Z*, CONTROL = C* except Cn
    UNDEFINED = Cn                  plus a separate whitespace flag: the Unicode White_Space list

and its pre-tokenizer regexes only ever ask those questions. We turn the same classes into character classes
for the standard `re` module.

Unicode version: llama.cpp c392e50's tables are Unicode 15.1, so ours are too, whatever the Python:
_unicode_data.py is generated from Python 3.13's unicodedata (15.1) by scripts/gen_unicode_tables.py. (Python
3.11 has 14.0, where ~5 100 code points of 15.0/15.1, e.g. CJK extensions H and I, are unassigned.)
"""

from __future__ import annotations

import bisect
import functools
import re

from ._unicode_data import RANGES

MAX_CODEPOINT = 0x110000

# Unicode White_Space (PropList.txt), the set llama.cpp uses for `\s`. Python's str.isspace() is NOT this
# (it also accepts U+001C..U+001F), so the list is spelled out.
WHITESPACE: tuple[int, ...] = (
    *range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000,
)

# In llama.cpp's generic regex path (std::regex over a "collapsed" text, src/unicode.cpp unicode_regex_split)
# ASCII characters keep their own value and `\p{S}` expands to the ASCII list `$+<=>^`|` only: '~' (U+007E,
# Sm) is missing there. The other ASCII lists agree with Unicode. We reproduce that: `\p{S}` never matches '~'.
_SYMBOL_ASCII_EXCLUDED = 0x7E


def _parse(spec: str) -> list[tuple[int, int]]:
    out = []
    for item in spec.split():
        a, _, b = item.partition("-")
        out.append((int(a, 16), int(b or a, 16)))
    return out


@functools.lru_cache(maxsize=1)
def category_ranges() -> dict[str, tuple[tuple[int, int], ...]]:
    """{'L'|'N'|'P'|'S'|'M'|'WS': ((first, last), ...)} inclusive code point ranges, sorted."""
    out = {g: _parse("".join(spec)) for g, spec in RANGES.items()}
    sym = []
    for a, b in out["S"]:
        if a <= _SYMBOL_ASCII_EXCLUDED <= b:
            sym += [r for r in ((a, _SYMBOL_ASCII_EXCLUDED - 1), (_SYMBOL_ASCII_EXCLUDED + 1, b)) if r[0] <= r[1]]
        else:
            sym.append((a, b))
    out["S"] = sym
    ws: list[list[int]] = []
    for cp in WHITESPACE:
        if ws and ws[-1][1] == cp - 1:
            ws[-1][1] = cp
        else:
            ws.append([cp, cp])
    out["WS"] = [(a, b) for a, b in ws]
    return {k: tuple(v) for k, v in out.items()}


@functools.lru_cache(maxsize=1)
def _group_index() -> tuple[list[int], list[tuple[int, str]]]:
    spans = sorted((a, b, g) for g, rs in category_ranges().items() if g != "WS" for a, b in rs)
    return [a for a, _, _ in spans], [(b, g) for _, b, g in spans]


def category_group(cp: int) -> str | None:
    """'L', 'N', 'P', 'S' or 'M' for a code point (Unicode 15.1; '~' is not 'S'), None for the rest."""
    starts, ends = _group_index()
    i = bisect.bisect_right(starts, cp) - 1
    if i >= 0 and cp <= ends[i][0]:
        return ends[i][1]
    return None


def _esc(cp: int) -> str:
    return f"\\U{cp:08x}"


@functools.lru_cache(maxsize=None)
def class_body(name: str, bmp_only: bool = False) -> str:
    """The inside of a `[...]` class for 'L', 'N', 'P', 'S', 'M' or 'WS' (escaped for `re`).

    bmp_only drops code points above U+FFFF: `re` tests those ranges one by one (slow), while the BMP part
    compiles to a lookup table. Text is then passed through collapse_astral() first.
    """
    parts = []
    for a, b in category_ranges()[name]:
        if bmp_only:
            if a > 0xFFFF:
                continue
            b = min(b, 0xFFFF)
        parts.append(_esc(a) if a == b else f"{_esc(a)}-{_esc(b)}")
    return "".join(parts)


# One BMP stand-in per category group for collapse_astral(); each lies outside every literal range used by
# the pre-tokenizer regexes whose classes are built with bmp_only.
_STAND_IN = {"L": "\u00aa", "N": "\u00b2", "P": "\u00a1", "S": "\u00a2", "M": "\u0300"}
_OTHER_STAND_IN = "\u00ad"  # Cf: not a letter, number, punctuation, symbol, mark or whitespace
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def _stand_in(m: re.Match[str]) -> str:
    return _STAND_IN.get(category_group(ord(m.group())) or "", _OTHER_STAND_IN)


def collapse_astral(text: str) -> str:
    """Replace each code point above U+FFFF by a BMP character of the same category group (no astral code
    point is whitespace). Lengths and every class answer are unchanged, so split positions carry over."""
    if text.isascii() or not _ASTRAL.search(text):
        return text
    return _ASTRAL.sub(_stand_in, text)


def expand(pattern: str, bmp_only: bool = False) -> str:
    r"""Rewrite a pre-tokenizer regex written with `\p{L}`, `\p{N}`, `\p{P}`, `\p{S}`, `\p{M}`, `\s`, `\S`
    into a pattern for Python's `re` with those classes spelled out as llama.cpp defines them.

    Inside `[...]` the class body is inserted; outside, it is wrapped in brackets. Everything else is kept.
    """
    out: list[str] = []
    inside = False
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            if nxt == "p" and pattern.startswith("{", i + 2) and pattern.find("}", i + 3) == i + 4:
                body = class_body(pattern[i + 3], bmp_only)
                out.append(body if inside else f"[{body}]")
                i += 5
                continue
            if nxt == "s":
                body = class_body("WS", bmp_only)
                out.append(body if inside else f"[{body}]")
                i += 2
                continue
            if nxt == "S":
                if inside:
                    raise ValueError(r"\S inside a character class is not supported")
                out.append(f"[^{class_body('WS', bmp_only)}]")
                i += 2
                continue
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if c == "[" and not inside:
            inside = True
        elif c == "]" and inside and not (out and out[-1] == "["):
            inside = False
        out.append(c)
        i += 1
    return "".join(out)


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> tuple[str, ...]:
    """GPT-2's byte -> printable character table (src/unicode.cpp unicode_byte_to_utf8_map).

    Printable Latin-1 bytes map to themselves (0x21-0x7E, 0xA1-0xAC, 0xAE-0xFF); the other 68 bytes map, in
    increasing order, to U+0100, U+0101, ... So b' ' -> 'Ġ' (U+0120), b'\\n' -> 'Ċ' (U+010A).
    """
    keep = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table: list[str] = []
    n = 0
    for b in range(256):
        if b in keep:
            table.append(chr(b))
        else:
            table.append(chr(256 + n))
            n += 1
    return tuple(table)


@functools.lru_cache(maxsize=1)
def byte_encode_table() -> dict[int, str]:
    """str.translate table: a latin-1 decoded byte string -> GPT-2 byte characters."""
    return {b: ch for b, ch in enumerate(bytes_to_unicode())}


@functools.lru_cache(maxsize=1)
def byte_decode_table() -> dict[int, int]:
    """str.translate table: GPT-2 byte characters -> the code point equal to the byte (then .encode('latin-1'))."""
    return {ord(ch): b for b, ch in enumerate(bytes_to_unicode())}
