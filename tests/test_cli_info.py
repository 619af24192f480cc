"""`llamakit info` through typer's CliRunner, and the CLI's error contract."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from llamakit import __version__
from llamakit.cli import app

from .conftest import VOCAB

runner = CliRunner()


def test_version() -> None:
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output


def test_help_does_not_import_torch() -> None:
    code = "import sys; from llamakit.cli import app; sys.argv=['llamakit','--help']\n" \
           "try: app()\nexcept SystemExit: pass\nassert 'torch' not in sys.modules, 'torch imported at startup'"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_info_reference_model(tiny_gguf: Path) -> None:
    res = runner.invoke(app, ["info", str(tiny_gguf / "quantize-Q4_K_M.gguf")])
    assert res.exit_code == 0, res.output
    for text in ("llama", "Q4_K_M", "4 layers", "8 heads, 4 kv heads", "1000 tokens", "Q6_K", "Q4_K", "F32"):
        assert text in res.output, text


def test_info_tensors_and_json(tiny_gguf: Path) -> None:
    res = runner.invoke(app, ["info", "--tensors", str(tiny_gguf / "convert-f16.gguf")])
    assert res.exit_code == 0 and "blk.3.ffn_down.weight" in res.output
    res = runner.invoke(app, ["info", "--json", str(tiny_gguf / "convert-f16.gguf")])
    d = json.loads(res.output)
    assert d["summary"]["parameters"] == sum(t["shape"][0] * (t["shape"][1] if len(t["shape"]) > 1 else 1)
                                             for t in d["tensors"])
    assert d["metadata"]["llama.block_count"] == 4
    assert d["metadata"]["tokenizer.ggml.tokens"]["array_length"] == 1000
    assert len(d["tensors"]) == 39


def test_info_vocab_only() -> None:
    res = runner.invoke(app, ["info", str(VOCAB / "ggml-vocab-llama-spm.gguf")])
    assert res.exit_code == 0, res.output
    assert "0 tensors" in res.output and "32000 tokens" in res.output


def test_info_smollm2(smollm2_gguf: Path) -> None:
    res = runner.invoke(app, ["info", str(smollm2_gguf)])
    assert res.exit_code == 0
    for text in ("30 layers", "pre smollm", "49152 tokens", "Q4_1"):
        assert text in res.output, text
    assert re.search(r"chat template\s+yes", res.output)


def test_info_broken_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 8)
    res = runner.invoke(app, ["info", str(bad)])
    assert res.exit_code == 1
    assert "broken.gguf" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_info_missing_file(tmp_path: Path) -> None:
    res = runner.invoke(app, ["info", str(tmp_path / "nope.gguf")])
    assert res.exit_code == 1 and "no such file" in res.output


def test_native_variant_env_forces_a_path() -> None:
    """LLAMAKIT_NATIVE_VARIANT picks the variant the engine loads (scalar runs on every CPU); an unknown one
    is refused with a message naming what the CPU runs, and the kernels fall back to torch."""
    import os

    env = {**os.environ, "LLAMAKIT_NATIVE_VARIANT": "scalar", "PYTHONPATH": str(Path(__file__).parents[1])}
    code = "from llamakit.kernels.native import native_library as n; print(n().variant())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "scalar"
    env["LLAMAKIT_NATIVE_VARIANT"] = "neon9000"
    code = ("from llamakit.kernels.native import native_library as n\nfrom llamakit.kernels.native.build import NativeBuildError\n"
            "try:\n    n()\nexcept NativeBuildError as e:\n    print('refused:', e)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refused: this CPU cannot run the neon9000 native kernels (it runs: ")
