"""Raw GGUF byte builder for the malformed-file tests: every field written by hand, so a test can lie."""

from __future__ import annotations

import struct


def s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv_u32(key: str, v: int) -> bytes:
    return s(key) + struct.pack("<II", 4, v)


def kv_str(key: str, v: str | bytes) -> bytes:
    return s(key) + struct.pack("<I", 8) + s(v)


def kv_arr_i32(key: str, vals: list[int]) -> bytes:
    return s(key) + struct.pack("<IIQ", 9, 5, len(vals)) + struct.pack(f"<{len(vals)}i", *vals)


def kv_arr_str(key: str, vals: list[str]) -> bytes:
    return s(key) + struct.pack("<IIQ", 9, 8, len(vals)) + b"".join(s(v) for v in vals)


def tinfo(name: str, ne: list[int], gtype: int, offset: int) -> bytes:
    return s(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne) + struct.pack("<IQ", gtype, offset)


def gguf(kvs: list[bytes], infos: list[bytes], data: bytes, *, magic: int = 0x46554747, version: int = 3,
         n_kv: int | None = None, n_tensors: int | None = None, align: int = 32) -> bytes:
    head = struct.pack("<IIQQ", magic, version, len(infos) if n_tensors is None else n_tensors,
                       len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(infos)
    if infos:
        body += bytes(-len(body) % align)
    return body + data


def valid() -> bytes:
    """Two F32 tensors of 8 and 4x8 floats plus a few KVs of different kinds."""
    kvs = [kv_str("general.architecture", "llama"), kv_u32("llama.block_count", 1),
           kv_arr_str("tokenizer.ggml.tokens", ["a", "b", "c"]), kv_arr_i32("tokenizer.ggml.token_type", [1, 1, 3])]
    infos = [tinfo("a.weight", [8], 0, 0), tinfo("b.weight", [8, 4], 0, 32)]
    data = struct.pack("<8f", *range(8)) + struct.pack("<32f", *range(32))
    return gguf(kvs, infos, data)
