"""Bad inputs to `llamakit convert`: each is one error line naming the problem, exit status 1, and no output file
(nor a temp file) left behind."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from llamakit.cli import app

from .conftest import TINY

SRC = TINY / "source"
runner = CliRunner()


def fails(args: list[str], *expect: str) -> str:
    res = runner.invoke(app, ["convert", *args])
    assert res.exit_code == 1, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for text in expect:
        assert text in lines[0], lines[0]
    assert res.exception is None or isinstance(res.exception, SystemExit)
    return lines[0]


def copy(layout: str, dst: Path) -> Path:
    shutil.copytree(SRC / layout, dst)
    return dst


def no_outputs(d: Path) -> None:
    left = [p.name for p in d.rglob("*") if p.suffix == ".gguf" or ".tmp-" in p.name]
    assert left == [], left


@pytest.mark.parametrize("layout,remove", [("hf", "config.json"), ("meta", "params.json")])
def test_missing_config(tmp_path: Path, layout: str, remove: str) -> None:
    m = copy(layout, tmp_path / "m")
    (m / remove).unlink()
    fails([str(m)], str(m), "neither config.json", "params.json")
    no_outputs(tmp_path)


def test_not_a_directory(tmp_path: Path) -> None:
    fails([str(tmp_path / "nope")], "not a directory")


def test_missing_safetensors_shard(tmp_path: Path) -> None:
    m = copy("hf", tmp_path / "m")
    (m / "model-00002-of-00003.safetensors").unlink()
    fails([str(m)], "missing or incomplete model files", "model-00002-of-00003.safetensors")
    no_outputs(tmp_path)


def test_shard_missing_without_index(tmp_path: Path) -> None:
    m = copy("hf", tmp_path / "m")
    (m / "model.safetensors.index.json").unlink()
    (m / "model-00003-of-00003.safetensors").unlink()
    fails([str(m)], "missing model files", "model-00003-of-00003.safetensors")
    no_outputs(tmp_path)


def test_index_lists_tensors_the_shards_lack(tmp_path: Path) -> None:
    m = copy("hf", tmp_path / "m")
    idx = json.loads((m / "model.safetensors.index.json").read_text())
    idx["weight_map"]["model.layers.9.mlp.up_proj.weight"] = "model-00001-of-00003.safetensors"
    (m / "model.safetensors.index.json").write_text(json.dumps(idx))
    fails([str(m)], "model.safetensors.index.json", "missing tensors: model.layers.9.mlp.up_proj.weight")
    no_outputs(tmp_path)


def test_missing_meta_shard(tmp_path: Path) -> None:
    m = copy("meta-2shard", tmp_path / "m")
    (m / "consolidated.00.pth").unlink()
    fails([str(m)], "missing shard consolidated.00.pth")
    no_outputs(tmp_path)


def _rewrite_header(path: Path, edit) -> None:  # type: ignore[no-untyped-def]
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    edit(header)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])


@pytest.mark.parametrize("lie,expect", [
    ("offsets", "data_offsets span"),  # the shape says more bytes than the offsets hold
    ("past_end", "truncated"),  # offsets point beyond the end of the file
    ("length", "exceeds the file size"),  # the header length itself is a lie
])
def test_lying_safetensors_header(tmp_path: Path, lie: str, expect: str) -> None:
    m = copy("hf", tmp_path / "m")
    part = m / "model-00003-of-00003.safetensors"
    part.chmod(0o644)
    if lie == "offsets":
        _rewrite_header(part, lambda h: h["model.norm.weight"].update(shape=[512]))
    elif lie == "past_end":
        def edit(h):  # type: ignore[no-untyped-def]
            b, e = h["model.norm.weight"]["data_offsets"]
            h["model.norm.weight"]["data_offsets"] = [b + 10_000_000, e + 10_000_000]
        _rewrite_header(part, edit)
    else:
        raw = part.read_bytes()
        part.write_bytes(struct.pack("<Q", len(raw) * 2) + raw[8:])
    fails([str(m)], str(part), "safetensors", expect)
    no_outputs(tmp_path)


def test_truncated_safetensors(tmp_path: Path) -> None:
    m = copy("hf", tmp_path / "m")
    part = m / "model-00001-of-00003.safetensors"
    part.chmod(0o644)
    part.write_bytes(part.read_bytes()[:-1000])
    fails([str(m)], "model-00001-of-00003.safetensors", "truncated")
    no_outputs(tmp_path)


class _Payload:
    """Pickles as a call to exec(): loading it with plain pickle would run code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def test_bin_with_code_is_refused_not_run(tmp_path: Path) -> None:
    m = copy("hf-bin", tmp_path / "m")
    marker = tmp_path / "pwned"
    sd = torch.load(m / "pytorch_model.bin", weights_only=True)
    sd["model.extra"] = _Payload(marker)
    (m / "pytorch_model.bin").chmod(0o644)
    torch.save(sd, m / "pytorch_model.bin")
    fails([str(m)], "pytorch_model.bin", "refused", "never runs code")
    assert not marker.exists()
    no_outputs(tmp_path)


def test_bin_with_non_tensor_entry(tmp_path: Path) -> None:
    m = copy("hf-bin", tmp_path / "m")
    sd = torch.load(m / "pytorch_model.bin", weights_only=True)
    sd["step"] = 1000  # plain data passes weights_only, but it is not a state dict entry
    (m / "pytorch_model.bin").chmod(0o644)
    torch.save(sd, m / "pytorch_model.bin")
    fails([str(m)], "pytorch_model.bin", "'step' is a int, not a tensor")
    no_outputs(tmp_path)


def test_legacy_pickle_bin(tmp_path: Path) -> None:
    m = copy("hf-bin", tmp_path / "m")
    sd = torch.load(m / "pytorch_model.bin", weights_only=True)
    (m / "pytorch_model.bin").chmod(0o644)
    torch.save(sd, m / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    fails([str(m)], "pytorch_model.bin", "zip")
    no_outputs(tmp_path)


def test_unsupported_architecture(tmp_path: Path) -> None:
    m = copy("hf", tmp_path / "m")
    cfg = json.loads((m / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (m / "config.json").chmod(0o644)
    (m / "config.json").write_text(json.dumps(cfg))
    fails([str(m)], "'GPT2LMHeadModel' is not supported", "LlamaForCausalLM", "MistralForCausalLM")
    no_outputs(tmp_path)


def test_outfile_in_missing_directory(tmp_path: Path) -> None:
    fails([str(SRC / "hf"), "--outfile", str(tmp_path / "no" / "such" / "x.gguf")], "does not exist")
    no_outputs(tmp_path)


def test_unknown_outtype(tmp_path: Path) -> None:
    fails([str(SRC / "hf"), "--outtype", "q4_0", "--outfile", str(tmp_path / "x.gguf")], "unknown --outtype 'q4_0'")
    no_outputs(tmp_path)


def test_interrupted_mid_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llamakit.convert import pipeline

    real, calls = pipeline.encode_tensor, []

    def interrupt_on_tenth(t):  # type: ignore[no-untyped-def]
        calls.append(t.name)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return real(t)

    monkeypatch.setattr(pipeline, "encode_tensor", interrupt_on_tenth)
    out = tmp_path / "x.gguf"
    fails([str(SRC / "hf"), "--outfile", str(out)], str(out), "interrupted", "nothing was written")
    assert len(calls) == 10
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temp file


def test_error_mid_write_leaves_nothing(tmp_path: Path) -> None:
    """A tensor whose bytes are unreadable is found only while writing: the partial file is removed."""
    m = copy("hf", tmp_path / "m")
    part = m / "model-00003-of-00003.safetensors"
    part.chmod(0o644)
    raw = bytearray(part.read_bytes())
    part.write_bytes(bytes(raw))
    out = tmp_path / "out"
    out.mkdir()

    from llamakit.convert import plan_conversion, write_gguf
    from llamakit.errors import InputError

    with plan_conversion(m, "f16", out / "x.gguf") as plan:
        part.write_bytes(bytes(raw[: len(raw) // 2]))  # truncated after the header was validated
        with pytest.raises(InputError, match="file ended early"):
            write_gguf(plan)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("name", ["config.json", "tokenizer_config.json", "model.safetensors.index.json"])
def test_json_that_is_not_an_object(tmp_path: Path, name: str) -> None:
    m = copy("hf", tmp_path / "m")
    (m / name).chmod(0o644)
    (m / name).write_text("[1, 2, 3]")
    fails([str(m)], name, "expected a JSON object")
    no_outputs(tmp_path)
