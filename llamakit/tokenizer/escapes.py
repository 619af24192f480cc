"""Prompt escapes as llama.cpp's tools process them (common/common.cpp string_process_escapes).

\\n \\r \\t \\' \\" \\\\ and \\xHH become the character / byte; any other backslash pair is kept as written.
Works on bytes because \\xHH can produce bytes that are not UTF-8 on their own.
"""

from __future__ import annotations

_SIMPLE = {ord("n"): 0x0A, ord("r"): 0x0D, ord("t"): 0x09, ord("'"): 0x27, ord('"'): 0x22, ord("\\"): 0x5C}
_HEX = b"0123456789abcdefABCDEF"
_C_SPACE = b" \t\n\v\f\r"


def _strtol2(a: int, b: int) -> int | None:
    """strtol(x, &end, 16) on the two bytes `ab` when it consumes both of them (else None)."""
    if a in _HEX and b in _HEX:
        return int(bytes((a, b)), 16)
    if b in _HEX and a in _C_SPACE:
        return int(bytes((b,)), 16)  # leading space skipped
    if b in _HEX and a in b"+-":
        v = int(bytes((b,)), 16)
        return -v if a == ord("-") else v
    return None


def process_escapes(data: bytes) -> bytes:
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        c = data[i]
        if c == 0x5C and i + 1 < n:
            i += 1
            e = data[i]
            if e in _SIMPLE:
                out.append(_SIMPLE[e])
            elif e == ord("x") and i + 2 < n and (v := _strtol2(data[i + 1], data[i + 2])) is not None:
                out.append(v & 0xFF)
                i += 2
            else:
                out += bytes((0x5C, e))
        else:
            out.append(c)
        i += 1
    return bytes(out)
