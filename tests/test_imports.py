"""The import direction of architecture.md, checked by parsing every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "llamakit"

# unit -> llamakit units it may import (a unit is a subpackage or a top-level module)
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "gguf.constants": set(),
    "gguf": {"gguf.constants", "errors"},
    "quants": {"gguf.constants", "errors"},
    "kernels": {"quants", "gguf.constants", "errors"},
    "tokenizer": {"errors"},
    "model": {"kernels", "quants", "gguf.constants", "errors"},
    "convert": {"gguf", "gguf.constants", "quants", "tokenizer", "errors"},
    "quantize": {"gguf", "gguf.constants", "quants", "kernels", "errors"},
    "runtime": {"model", "kernels", "quants", "gguf", "gguf.constants", "tokenizer", "errors"},
    "api": {"runtime", "convert", "quantize", "tokenizer", "errors", "gguf", "gguf.constants"},
    # server -> runtime: each slot runs the API's completion core (runtime/completion.py) over its sequence of
    # the engine's multi-sequence Context; tokenizer: the slots' prompts and pieces
    "server": {"api", "runtime", "tokenizer", "errors"},
    "cli": {"*"},
    "__init__": {"api", "errors"},  # lazily, from module __getattr__
}


def unit_of(module: str) -> str:
    """'llamakit.gguf.reader' -> 'gguf'; 'llamakit.gguf.constants' -> 'gguf.constants'."""
    parts = module.split(".")[1:]
    if parts[:2] == ["gguf", "constants"]:
        return "gguf.constants"
    return parts[0] if parts else "__init__"


def imports_of(path: Path, source: str | None = None) -> set[str]:
    mod = "llamakit." + ".".join(path.relative_to(PKG).with_suffix("").parts)
    if mod.endswith(".__init__"):
        mod = mod[: -len(".__init__")]
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("llamakit")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
                found |= set(names)
            elif node.module and node.module.startswith("llamakit"):
                found.add(node.module)
    return found


def test_imports_follow_the_architecture() -> None:
    bad = []
    files = sorted(PKG.rglob("*.py"))
    assert len(files) > 10
    for path in files:
        mod = "llamakit." + ".".join(path.relative_to(PKG).with_suffix("").parts)
        me = unit_of(mod.replace(".__init__", ""))
        allowed = ALLOWED.get(me)
        allowed = None if allowed is None else allowed
        assert allowed is not None, f"{path}: unit {me!r} is not in the import table; add it to architecture.md"
        for imp in imports_of(path):
            other = unit_of(imp)
            if other == me or "*" in allowed:
                continue
            if other not in allowed:
                bad.append(f"{path.relative_to(PKG.parent)} ({me}) imports {imp} ({other})")
    assert not bad, "\n".join(bad)


def test_checker_resolves_relative_imports() -> None:
    """model/ importing runtime through a relative import is seen as a runtime import."""
    probe = PKG / "model" / "probe.py"
    assert {unit_of(m) for m in imports_of(probe, "from ..runtime import loader\n")} == {"runtime"}
    assert {unit_of(m) for m in imports_of(probe, "from . import layers\nimport llamakit.gguf.reader\n")} == \
        {"model", "gguf"}
    assert "runtime" not in ALLOWED["model"] and "gguf" not in ALLOWED["model"]
