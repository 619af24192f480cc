"""`llamakit plan`: the tensors it predicts for a Hugging Face directory are the ones llama.cpp's
convert + llama-quantize wrote (types and bytes, tensor by tensor), its rows agree with placement, and
the cost model's arithmetic on a hand-made case; the CLI table and JSON (no probe: given bandwidths)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from llamakit.cli import app
from llamakit.errors import InputError
from llamakit.gguf.constants import GGMLType
from llamakit.runtime.costmodel import DeviceSpeed, EngineRates, LayerCost, Speeds, TensorCost, predict
from llamakit.runtime.placement import HOST, MiB, PlacementOptions
from llamakit.runtime.plan import (engine_shape, layer_costs, machine_speeds, parse_size, plan, shape_from_gguf,
                                   shape_from_hf)
from llamakit.runtime.probe_native import native_ok

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
    """The generic form (what a GPU and --cpu-bw use): bytes at a bandwidth, flops of a batch, a fixed
    cost per layer, attention as the larger of its KV bytes and its flops, boundary crossings."""
    blk = LayerCost((TensorCost(GGMLType.Q4_0, 10**9, 2 * 10**9),), n_embd_kv=1000, n_embd_q=4000)
    out = LayerCost((TensorCost(GGMLType.Q6_K, 10**8, 10**8),))
    speeds = Speeds(cpu=DeviceSpeed(10e9, 100e9, 1e-3), gpu=DeviceSpeed(100e9, 1e12, 1e-4),
                    link_bandwidth=1e20, link_latency=1e-3)
    cpu = predict([blk, blk, out], [HOST, HOST, HOST], 1, speeds, kv_bytes=2, depth=99)
    kv = 2 * 100 * 1000 * 2 / 10e9  # K and V of 100 slots: more than 4 * 100 * 4000 flops take here
    per_blk = 0.1 + kv + 1e-3
    assert cpu.tg == pytest.approx(1 / (2 * per_blk + 0.01 + 1e-3))
    assert cpu.tg_device_s == (pytest.approx(2 * per_blk + 0.011), 0.0) and cpu.tg_sampled == pytest.approx(cpu.tg)
    split = predict([blk, blk, out], [HOST, 0, 0], 1, speeds, kv_bytes=2, depth=99)  # 2 crossings
    gpu_blk = 0.01 + 2 * 100 * 1000 * 2 / 100e9 + 1e-4
    assert split.tg == pytest.approx(1 / (per_blk + gpu_blk + 0.001 + 1e-4 + 2e-3))
    # a 100-token prompt in one step: weights once, 2 params flops per token, causal attention over
    # 100 * 101 / 2 slots; the output layer once, for the last token
    pp = predict([blk, out], [HOST, HOST], 1, speeds, n_ubatch=100)
    attn = 4 * (100 * 101 // 2) * 4000 / 100e9
    assert pp.pp == pytest.approx(100 / (0.1 + 2 * 100 * 2e9 / 100e9 + attn + 1e-3 + 0.01 + 1e-3))
    # two steps of 50: the weights twice, attention over 1275 then 50 * 50 + 1275 slots, logits once
    pp2 = predict([blk, out], [HOST, HOST], 1, speeds, n_ubatch=50, n_prompt=100)
    attn2 = 4 * (1275 + 2500 + 1275) * 4000 / 100e9
    assert pp2.pp == pytest.approx(100 / (2 * (0.1 + 2 * 50 * 2e9 / 100e9 + 1e-3) + attn2 + 0.01 + 1e-3))

    # decode replays CUDA graphs: a GPU block's one-token step costs graph_layer_overhead instead (the
    # output layer, outside the graph, and prompt steps keep the eager figure)
    graphed = Speeds(cpu=speeds.cpu, gpu=DeviceSpeed(100e9, 1e12, 1e-4, graph_layer_overhead=1e-5),
                     link_bandwidth=1e20, link_latency=1e-3)
    split_g = predict([blk, blk, out], [HOST, 0, 0], 1, graphed, kv_bytes=2, depth=99)
    assert split_g.tg == pytest.approx(1 / (per_blk + gpu_blk - 1e-4 + 1e-5 + 0.001 + 1e-4 + 2e-3))
    assert predict([blk, out], [0, 0], 1, graphed, n_ubatch=100).pp == \
        pytest.approx(predict([blk, out], [0, 0], 1, speeds, n_ubatch=100).pp)


def test_graph_step_overhead_probe_runs_here() -> None:
    """The probe of a decode step as CUDA graphs replay it: on the CPU the same Block.step, eagerly."""
    from llamakit.runtime.probe import layer_overhead

    types = dict.fromkeys(("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"),
                          GGMLType.F32)
    assert 0 < layer_overhead(types, torch.device("cpu"), graph=True) < 0.5


def _rates(rows: int, rate: float, layer: float, attn: float, step: float, sample: float = 0.0) -> EngineRates:
    return EngineRates(rows, {(GGMLType.Q4_0, 1000, 2000): rate, (GGMLType.Q6_K, 500, 2000): rate / 2},
                       layer, attn, step, sample)


def test_cost_model_with_measured_engine_rates() -> None:
    """A probed CPU: per-shape matmul rates per step kind, the block's other work, attention at its
    measured rate, the per-step overhead once, the output layer at one row, prompts in the engine's
    physical batch (rows) whatever -ub says, and sampling kept out of tg."""
    blk = LayerCost((TensorCost(GGMLType.Q4_0, 1_125_000, 2_000_000, 1000),), n_embd_kv=64, n_embd_q=256)
    out = LayerCost((TensorCost(GGMLType.Q6_K, 820_000, 1_000_000, 500),))
    dec, pro = _rates(1, 1e9, 1e-4, 1e9, 5e-4, sample=2e-3), _rates(32, 8e9, 3e-4, 2e9, 6e-4)
    cpu = DeviceSpeed(1e9, 1e10, 9.0, decode=dec, prompt=pro, source="probe")  # 9 s: generic terms unused
    speeds = Speeds(cpu=cpu, gpu=DeviceSpeed(100e9, 1e12, 1e-5), link_latency=0.0, link_bandwidth=1e30)
    layers, slots = [blk, blk, out], [HOST, HOST, HOST]
    p = predict(layers, slots, 256, speeds, depth=63)
    per_blk = 2e6 / 1e9 + 1e-4 + 4 * 64 * 256 / 1e9
    tg_s = 2 * per_blk + 1e6 / 0.5e9 + 5e-4
    assert p.tg == pytest.approx(1 / tg_s) and p.tg_sampled == pytest.approx(1 / (tg_s + 2e-3))
    # pp128 at -ub 512: 4 steps of 32 (the rows of the measured prompt rates); logits once at one row
    q = predict(layers, slots, 256, speeds, n_ubatch=512, n_prompt=128)
    attn_slots = sum(32 * p0 + 32 * 33 // 2 for p0 in (0, 32, 64, 96))
    pp_s = 4 * (2 * (32 * 2e6 / 8e9 + 3e-4) + 6e-4) + 2 * 4 * attn_slots * 256 / 2e9 + 1e6 / 0.5e9
    assert q.pp == pytest.approx(128 / pp_s)
    # every block on the GPU: no fused CPU block, so prompts go in -ub steps (one here)
    r = predict(layers, [0, 0, HOST], 256, speeds, n_ubatch=512, n_prompt=128)
    assert r.pp > q.pp and r.tg > p.tg
    # the rates are per shape: a shape that was not measured falls back to the generic bytes/bandwidth
    odd = LayerCost((TensorCost(GGMLType.Q4_0, 1_125_000, 2_000_000, 999),), n_embd_kv=64, n_embd_q=256)
    s = predict([odd, out], [HOST, HOST], 256, speeds, depth=63)
    assert 1 / s.tg == pytest.approx(1_125_000 / 1e9 + 1e-4 + 4 * 64 * 256 / 1e9 + 1e6 / 0.5e9 + 5e-4)


def test_engine_shape_lists_the_cpu_matmuls() -> None:
    m = shape_from_gguf(TINY_GGUF / "quantize-Q4_K_M.gguf")
    e = engine_shape(m)
    mats = {n: (t, s) for n, (t, s) in m.tensors.items() if len(s) == 2 and n != "token_embd.weight"}
    # the blocks' Q4_K and the mix's Q6_K attn_v / ffn_down, and the output layer
    assert set(e.matmuls) == {(t, s[0], s[1]) for t, s in mats.values()} and len(e.matmuls) == 7
    assert dict(e.block_types) == {n: GGMLType.Q4_K for n in ("attn_q", "attn_k", "attn_v", "attn_output",
                                                               "ffn_gate", "ffn_up", "ffn_down")}
    assert e.weight_bytes == sum(m.nbytes(n) for n in mats)
    assert (e.n_layer, e.n_embd, e.n_head, e.n_head_kv, e.head_dim, e.n_ff) == (4, 256, 8, 4, 32, 768)
    assert layer_costs(m)[0].tensors[1].rows == 256 and layer_costs(m)[0].tensors[0].rows == 0  # attn_q; a norm


def test_probe_rings_are_valid_prepared_matrices() -> None:
    """The probe's matrices are runs of x16 records (16 rows x one block) of one buffer: each is the
    matrix of the file rows it repeats, as NativeKernel.prepare makes it, whatever its shape."""
    from llamakit.kernels.native import NativeKernel
    from llamakit.kernels.registry import native_status
    from llamakit.runtime.probe_native import _Ring

    st = native_status()
    if not st.ok:  # the probe is not used without the library (machine_speeds takes the torch probe)
        assert not native_ok(engine_shape(shape_from_gguf(TINY_GGUF / "quantize-Q4_0.gguf")))
        return
    for t, cols in ((GGMLType.Q4_0, 512), (GGMLType.Q6_K, 512), (GGMLType.Q4_K, 768)):
        ring = _Ring(st.lib, t, 1 << 16)
        k = NativeKernel(t)
        x = torch.randn(3, cols)
        nb = cols // ring.block
        for rows, index in ((40, 1), (16, 3)):
            w = ring.view(rows, cols, index)
            g = -(-rows // 16)
            start = (index * g) % (ring.buf.numel() // ring.group(cols) - g + 1) * nb  # in records
            # record r holds rows 0-15 (r even) or 16-31 (r odd) of the 32 source rows, for one block
            src = torch.stack([torch.cat([ring.src[16 * ((start + (r // 16) * nb + b) % 2) + r % 16]
                                          for b in range(nb)]) for r in range(rows)])
            assert torch.equal(k.linear(x, w, cols), k.linear(x, k.prepare(src), cols))
        size = 3 * ring.group(cols)
        assert ring.copies(40, cols, 1 << 15) == [ring.buf.data_ptr() + i * size for i in range((1 << 15) // size)]


def test_native_probe_measures_every_shape_and_the_model_uses_it() -> None:
    """A real probe (no timing asserted): rates for every matmul shape at both step kinds, the threads
    given, the process's thread settings left alone; the prediction is built from exactly these terms."""
    from llamakit.kernels.registry import native_status
    from llamakit.runtime.costmodel import DEFAULT_GPU
    from llamakit.runtime.generate import FUSED_UBATCH
    from llamakit.runtime.probe_native import probe_native

    m = shape_from_gguf(TINY_GGUF / "quantize-Q4_K_M.gguf")
    e = engine_shape(m)
    if not native_ok(e):
        d = machine_speeds(m, cpu_bw=None, gpu_bw=None, probe=True, n_threads=1).cpu
        assert d.source == "probe" and d.decode is None and d.bandwidth > 0  # the torch engine's probe
        return
    lib = native_status().lib
    before = (lib.get_threads(), torch.get_num_threads())
    d = probe_native(e, 1, 2, FUSED_UBATCH)
    assert (lib.get_threads(), torch.get_num_threads()) == before
    assert d.source == "probe" and d.threads == 1 and d.decode is not None and d.prompt is not None
    assert (d.decode.rows, d.prompt.rows) == (1, FUSED_UBATCH)
    for r in (d.decode, d.prompt):
        assert set(r.matmul) == set(e.matmuls) and all(0 < v < 1e14 for v in r.matmul.values())
        assert r.layer >= 0 and r.step >= 0 and 0 < r.attn_flops < 1e14
    assert d.decode.sample > 0 and d.prompt.sample == 0 and set(d.by_type) == {GGMLType.Q4_K, GGMLType.Q6_K}
    p = plan(m, n_ctx=512, speeds=Speeds(d, DEFAULT_GPU))
    r, layers = d.decode, layer_costs(m)
    mm = sum(t.params / r.matmul[(t.ggml_type, t.rows, t.params // t.rows)]
             for L in layers for t in L.tensors if t.rows)
    vec = sum(t.nbytes / d.bw(t.ggml_type) for L in layers for t in L.tensors if not t.rows)  # the norms
    attn = max(2 * 65 * m.n_embd_kv * 2 / d.bandwidth, 4 * 65 * m.n_embd_q / r.attn_flops)
    assert p.rows[0].prediction.tg == pytest.approx(1 / (mm + vec + m.n_layer * (r.layer + attn) + r.step))


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
    assert d["speeds"]["cpu_decode"] is None and d["speeds"]["cpu_source"] == "default"
    probed = CliRunner().invoke(app, ["plan", "-m", str(TINY_GGUF / "quantize-Q4_0.gguf"), "--json", "-c", "512",
                                      "-t", "1"])
    assert probed.exit_code == 0, probed.output
    sp = json.loads(probed.output)["speeds"]
    assert sp["cpu_source"] == "probe" and sp["cpu_threads"] == 1
    if sp["cpu_decode"] is not None:  # the native engine's rates: every matmul shape of the model
        assert set(sp["cpu_decode"]["matmul_gws"]) == {"Q4_0 128x256", "Q4_0 256x256", "Q4_0 256x768",
                                                        "Q4_0 768x256", "Q6_K 1000x256"}
        assert sp["cpu_prompt"]["rows"] == 32 and sp["cpu_decode"]["sample_us"] > 0
    bad_t = CliRunner().invoke(app, ["plan", "-m", str(TINY_GGUF / "quantize-Q4_0.gguf"), "-t", "0"])
    assert bad_t.exit_code == 1 and "--threads 0" in bad_t.output
    bad = CliRunner().invoke(app, ["plan", "-m", str(TINY_GGUF / "quantize-Q4_0.gguf"), "--type", "q4_0"])
    assert bad.exit_code == 1 and "--type applies to a Hugging Face directory" in bad.output


def test_plan_reports_a_model_that_fits_nowhere() -> None:
    m = shape_from_gguf(TINY_GGUF / "convert-f32.gguf")
    p = plan(m, n_ctx=512, vram=[0], ram=1 * MiB, speeds=SPEEDS, opts=PlacementOptions(fit_margin=0))
    assert p.auto is None and "does not fit" in p.auto_note and all(r.fits is False for r in p.rows)
