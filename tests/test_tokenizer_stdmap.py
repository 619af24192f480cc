"""libstdc++ unordered_map iteration order (which EOT candidate llama.cpp picks on Linux builds).

The expected values were printed by a small g++ 12.2 program that inserts the same keys with `m[key] = i` and
iterates the map, and by std::hash<std::string>{}(...) in the same build.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from llamakit.tokenizer.stdmap import iteration_order, std_hash, std_hashes


def test_std_hash() -> None:
    assert std_hash(b"abc") == 3663726644998027833
    assert std_hash(b"hello world, this is long") == 2369277252547399713  # 8-byte words + a 1-byte tail


def test_iteration_order_with_repeats_and_rehashes() -> None:
    keys = [(b"k0" if i % 9 == 0 else b"k%d" % i) for i in range(40)]  # 13 -> 29 -> 59 buckets
    assert iteration_order(keys) == [38, 37, 35, 34, 33, 36, 10, 17, 20, 7, 3, 32, 22, 39, 6, 1, 21, 31, 12, 14,
                                     11, 2, 15, 16, 19, 4, 26, 25, 28, 8, 29, 13, 24, 5, 23, 30]
    assert iteration_order([]) == []


def test_smollm2_vocabulary_order(smollm2_gguf) -> None:
    from llamakit.gguf import GGUFReader

    with GGUFReader(smollm2_gguf) as r:
        keys = [t.encode() for t in r.metadata["tokenizer.ggml.tokens"]]
    order = iteration_order(keys)
    assert order[:12] == [49151, 49149, 49148, 49147, 49145, 49144, 49143, 49142, 49141, 49140, 49139, 49136]
    assert order[-5:] == [42031, 9597, 42033, 42036, 42042]
    assert order.index(0) == 20758 and order.index(2) == 22934  # so <|endoftext|> is met before <|im_end|>


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=60))
def test_vectorised_hash_equals_scalar(keys: list[bytes]) -> None:
    assert [int(h) for h in std_hashes(keys)] == [std_hash(k) for k in keys]
