"""Block layouts as named fields (llamakit/quants/layouts.py): sizes agree with ggml's table, fields tile the
block, split/join are exact inverses, and the fields hold what the codecs write."""

from __future__ import annotations

import pytest
import torch

from llamakit.gguf.constants import GGML_BLOCK, GGMLType
from llamakit.quants import get_codec
from llamakit.quants import layouts as lay
from llamakit.quants.layouts import LAYOUTS

FORMATS = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "Q8_K"]


@pytest.mark.parametrize("name", FORMATS)
def test_layout_matches_ggml_block_table(name: str) -> None:
    t = GGMLType[name]
    layout = LAYOUTS[t]
    assert layout.ggml_type == t
    assert (layout.block_size, layout.type_size) == tuple(GGML_BLOCK[t])
    assert sum(f.size for f in layout.fields) == GGML_BLOCK[t].type_size


@pytest.mark.parametrize("name", FORMATS)
def test_fields_tile_the_block(name: str) -> None:
    layout = LAYOUTS[GGMLType[name]]
    pos = 0
    for f in layout.fields:
        assert f.offset == pos, f"{name}.{f.name} starts at {f.offset}, expected {pos}"
        assert f.size % torch.empty((), dtype=f.dtype).element_size() == 0
        pos = f.end
    assert len(set(layout.names)) == len(layout.names)


@pytest.mark.parametrize("name", FORMATS)
def test_split_join_roundtrip_without_copies(name: str) -> None:
    layout = LAYOUTS[GGMLType[name]]
    g = torch.Generator().manual_seed(1)
    blocks = torch.randint(0, 256, (7, layout.type_size), dtype=torch.uint8, generator=g)
    parts = layout.split(blocks)
    assert list(parts) == list(layout.names)
    for f in layout.fields:
        assert parts[f.name].shape == (7, f.size)
        assert parts[f.name].data_ptr() == blocks.data_ptr() + f.offset  # a view, not a copy
    assert torch.equal(layout.join(**parts), blocks)
    # leading dimensions pass through
    assert torch.equal(layout.join(**layout.split(blocks.reshape(7, 1, -1))), blocks.reshape(7, 1, -1))


def test_known_offsets() -> None:
    """The offsets ggml-common.h's structs give (spot checks written out by hand)."""
    assert lay.Q3_K["scales"].bytes == slice(96, 108)
    assert lay.Q6_K["scales"].bytes == slice(192, 208) and lay.Q6_K["d"].bytes == slice(208, 210)
    assert lay.Q5_K["qh"].bytes == slice(16, 48) and lay.Q5_K["qs"].bytes == slice(48, 176)
    assert lay.Q2_K.span("d", "dmin") == slice(80, 84)
    assert lay.Q8_K["bsums"].count == 16 and lay.Q8_K["qs"].count == 256
    assert lay.Q6_K["scales"].words(2) == slice(96, 104)  # the int16-word view the kernels use
    assert lay.Q4_K["qs"].words(4) == slice(4, 36)
    with pytest.raises(ValueError):
        lay.Q5_0["qh"].words(4)  # offset 2: not on a 4-byte boundary


def test_fields_hold_what_the_codec_writes() -> None:
    """Q8_0 of a block with max |x| = 127 * 0.5: d = 0.5, qs = x / d; Q4_K's d/dmin are its f16 scales."""
    x = torch.arange(-16, 16, dtype=torch.float32) * (127 * 0.5 / 16)
    b = get_codec(GGMLType.Q8_0).quantize(x[None])
    assert lay.Q8_0.typed(b, "d").item() == pytest.approx(127 * 0.5 / 127)
    assert torch.equal(lay.Q8_0.typed(b, "qs")[0], torch.round(x / 0.5).to(torch.int8))
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 256, generator=g)
    kb = get_codec(GGMLType.Q4_K).quantize(w)
    d = lay.Q4_K.typed(kb, "d").float()
    assert d.shape == (4, 1) and bool((d > 0).all())
    deq = get_codec(GGMLType.Q4_K).dequantize(kb)
    # 4-bit levels over a 32-weight range of ~5: step ~0.33, rms error ~step/sqrt(12); measured 0.076
    assert float((deq - w).pow(2).mean().sqrt()) < 0.1


def test_join_checks_its_parts() -> None:
    d = torch.zeros(3, 2, dtype=torch.uint8)
    with pytest.raises(ValueError, match="need the fields"):
        lay.Q4_0.join(d=d)
    with pytest.raises(ValueError, match="16 bytes"):
        lay.Q4_0.join(d=d, qs=torch.zeros(3, 15, dtype=torch.uint8))
    with pytest.raises(ValueError, match="expected uint8"):
        lay.Q4_0.split(torch.zeros(3, 18, dtype=torch.int8))
    # a part in the field's own C type is accepted and viewed as bytes
    out = lay.Q8_0.join(d=torch.ones(3, 1, dtype=torch.float16), qs=torch.full((3, 32), -1, dtype=torch.int8))
    assert out[0, :2].tolist() == [0x00, 0x3C] and out[0, 2:].tolist() == [0xFF] * 32
