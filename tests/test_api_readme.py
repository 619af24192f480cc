"""Every ```python example of README.md's "Python API" section runs, on SmolLM2 and the tiny llama checkpoint."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from .conftest import ROOT, TINY


def _examples() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_has_the_examples() -> None:
    blocks = _examples()
    assert len(blocks) == 3
    assert "save_session" in blocks[1] and "load_session" in blocks[1] and 'stop=["User:"]' in blocks[1]


@pytest.mark.parametrize("i", range(3))
def test_readme_example_runs(i: int, smollm2_gguf, tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    code = _examples()[i].replace('"SmolLM2-135M-Instruct.Q4_1.gguf"', repr(str(smollm2_gguf)))
    code = code.replace('"./Llama-2-7b-hf"', repr(str(TINY / "source" / "hf")))
    monkeypatch.chdir(tmp_path)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(code, f"README.md example {i + 1}", "exec"), {"__name__": "__readme__"})
    finally:
        torch.set_num_threads(n)
    out = capsys.readouterr().out
    if i == 0:
        assert "Paris" in out and "'prompt_tokens'" in out
        lines = out.splitlines()
        assert lines[-1] == lines[-2]  # the streamed answer equals the non-streamed one (temperature 0)
    elif i == 1:
        assert out.count("Bob:") == 2 and "User:" not in out  # the stop string never leaks
        assert re.search(r"^4 messages restored, \d+ tokens in the context$", out, re.M)
        assert (tmp_path / "bob.lksession").stat().st_size > 0
    else:
        assert (tmp_path / "llama-2-7b-f16.gguf").is_file() and (tmp_path / "llama-2-7b-q4_0.gguf").is_file()
