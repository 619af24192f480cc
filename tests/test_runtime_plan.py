"""`llamakit plan`: the tensors it predicts for a Hugging Face directory are the ones llama.cpp's
convert + llama-quantize wrote (types and bytes, tensor by tensor), its rows agree with placement, and
the cost model's arithmetic on a hand-made case; the CLI table and JSON (no probe: given bandwidths)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llamakit.cli import app
from llamakit.errors import InputError
from llamakit.gguf.constants import GGMLType
from llamakit.runtime.costmodel import DeviceSpeed, LayerCost, Speeds, TensorCost, predict
from llamakit.runtime.placement import HOST, MiB, PlacementOptions
from llamakit.runtime.plan import parse_size, plan, shape_from_gguf, shape_from_hf

from .conftest import TINY, TINY_GGUF

HF = TINY / "source" / "hf"
SPEEDS = Speeds(cpu=DeviceSpeed(10e9, 100e9, 1e-4), gpu=DeviceSpeed(100e9, 10e12, 1e-5))


@pytest.mark.parametrize("ftype", ["Q4_0", "Q4_K_M", "Q8_0", "Q3_K_M", "Q5_K_M"])
def test_hf_directory_plans_the_tensors_llama_quantize_wrote(ftype: str) -> None:
    planned = shape_from_hf(HF, ftype.lower())
    written = shape_from_gguf(TINY_GGUF / (f"quantize-{ftype}.gguf" if ftype != "Q8_0" else "convert-q8_0.gguf"))
    assert set(planned.tensors) == set(written.tensors)
    for name, (t, shape) in written.tensors.items():
        assert planned.tensors[name] == (t, shape), name
        assert planned.nbytes(name) == written.nbytes(name)
    assert (planned.n_layer, planned.n_embd_kv, planned.tied_output) == (4, 128, False)


def test_plan_rows_follow_placement() -> None:
    m = shape_from_gguf(TINY_GGUF / "quantize-Q4_0.gguf")
    p = plan(m, n_ctx=512, vram=[1 << 40], ram=1 << 40, speeds=SPEEDS)
    assert p.auto == 5 and [r.n for r in p.rows] == [0, 1, 2, 3, 4, 5]
    assert p.rows[0].vram == (0,) and all(r.fits for r in p.rows)
    # each further block moves its bytes + KV from RAM to VRAM
    step = p.rows[2].vram[0] - p.rows[1].vram[0]
    assert step == p.rows[1].ram - p.rows[2].ram > 0
    # more layers on the 10x faster device: faster generation
    assert [r.prediction.tg for r in p.rows] == sorted(r.prediction.tg for r in p.rows)
    small = plan(m, n_ctx=512, vram=[p.rows[2].vram[0] + 1024 * MiB], speeds=SPEEDS)
    assert small.auto == 2 and [r.fits for r in small.rows] == [True, True, True, False, False, False]


def test_cost_model_arithmetic() -> None:
    layer = LayerCost((TensorCost(GGMLType.Q4_0, 10**9, 2 * 10**9),), n_embd_kv=0, n_embd_q=0)
    speeds = Speeds(cpu=DeviceSpeed(10e9, 100e9, 0.0), gpu=DeviceSpeed(100e9, 1e12, 0.0),
                    link_bandwidth=1e20, link_latency=1e-3)
    cpu = predict([layer, layer], [HOST, HOST], 1, speeds, n_ubatch=1)
    assert cpu.tg == pytest.approx(1 / 0.2) and cpu.tg_device_s == (pytest.approx(0.2), 0.0)
    split = predict([layer, layer], [HOST, 0], 1, speeds, n_ubatch=1)  # 0.1 s + 0.01 s + 2 crossings
    assert split.tg == pytest.approx(1 / (0.1 + 0.01 + 2e-3))
    # the prompt: weights once per ubatch plus 2 * params flops (output layer: one row)
    pp = predict([layer], [HOST], 1, speeds, n_ubatch=100)
    assert pp.pp == pytest.approx(100 / (0.1 + 2 * 2e9 / 100e9))


def test_parse_size() -> None:
    assert parse_size("8G", "--vram") == 8 << 30 == parse_size("8GiB", "--vram") == parse_size("8192M", "--vram")
    assert parse_size("7.5g", "--vram") == int(7.5 * (1 << 30)) and parse_size("24", "--vram") == 24 << 30
    with pytest.raises(InputError):
        parse_size("lots", "--vram")


def test_hf_directory_needs_type(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--type"):
        shape_from_hf(HF, None)
    with pytest.raises(InputError, match="config.json"):
        shape_from_hf(tmp_path, "q4_0")


def test_plan_cli_table_and_json() -> None:
    r = CliRunner().invoke(app, ["plan", "-m", str(HF), "--type", "q4_k_m", "--vram", "1G,1G", "--ram", "8G",
                                 "-c", "512", "--fit-margin", "0", "--cpu-bw", "10", "--gpu-bw", "100"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith("plan: hf Q4_K_M, 4 layers + output, n_ctx 512")
    assert "GPU0 MiB" in lines[1] and "GPU1 MiB" in lines[1] and lines[-4].count("|") == 9
    assert sum("<- auto" in x for x in lines) == 1 and "<- auto" in lines[-4]  # all 5 layers: the last row
    j = CliRunner().invoke(app, ["plan", "-m", str(TINY_GGUF / "quantize-Q4_0.gguf"), "--vram", "8G", "--json",
                                 "--no-probe", "-c", "512"])
    assert j.exit_code == 0, j.output
    d = json.loads(j.output)
    assert d["auto"] == 5 and len(d["rows"]) == 6 and d["speeds"]["gpu_source"] == "default"
    assert d["rows"][0]["vram_bytes"] == [0] and d["rows"][5]["ram_bytes"] < d["rows"][0]["ram_bytes"]
    bad = CliRunner().invoke(app, ["plan", "-m", str(TINY_GGUF / "quantize-Q4_0.gguf"), "--type", "q4_0"])
    assert bad.exit_code == 1 and "--type applies to a Hugging Face directory" in bad.output


def test_plan_reports_a_model_that_fits_nowhere() -> None:
    m = shape_from_gguf(TINY_GGUF / "convert-f32.gguf")
    p = plan(m, n_ctx=512, vram=[0], ram=1 * MiB, speeds=SPEEDS, opts=PlacementOptions(fit_margin=0))
    assert p.auto is None and "does not fit" in p.auto_note and all(r.fits is False for r in p.rows)
