"""Descriptive `general.*` keys: name, organization, size label, license, tags, languages.

A subset of gguf-py's Metadata heuristics (metadata.py at llama.cpp c392e50), in the same key order:
name <- model card `name`/`model_name`, else config.json `_name_or_path` (when it looks like `org/model`), else the
directory name, title-cased the way llama.cpp does ("smollm2-135m" -> "Smollm2 135m", "hf" -> "Hf");
organization <- the `org/` part; size_label <- the parameter count ("3.7M", "135M", "8.0B");
license / tags / languages <- the model card's YAML front matter (README.md), read only if PyYAML is installed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..gguf import GGUFValue, GGUFValueType, Keys

T = GGUFValueType


def id_to_title(s: str) -> str:
    """'smollm2-135m-instruct' -> 'Smollm2 135m Instruct'; words that are not all lower case, versions ('v2.1')
    and words starting with a digit are kept as they are."""
    words = s.strip().replace("-", " ").split()
    return " ".join(w.title() if w.islower() and not re.match(r"^(v\d+(?:\.\d+)*|\d.*)$", w) else w for w in words)


def size_label(n_params: int) -> str:
    """Rounded parameter count with at least two significant digits: 3660032 -> '3.7M', 134515008 -> '135M'."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M")):
        if n_params > scale:
            x = n_params / scale
            break
    else:
        x, suffix = n_params / 1e3, "K"
    decimals = max(2 - len(str(round(x)).lstrip("0")), 0)
    return f"{x:.{decimals}f}{suffix}"


def _model_card(directory: Path) -> dict[str, Any]:
    path = directory / "README.md"
    if not path.is_file():
        return {}
    try:
        import yaml  # optional: only for the model card's front matter
    except ImportError:
        return {}
    with open(path, encoding="utf-8", errors="replace") as f:
        if f.readline() != "---\n":
            return {}
        raw = f.read().partition("---\n")[0]
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _as_list(*values: Any) -> list[str] | None:
    out: list[str] = []
    for v in values:
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, list):
            out.extend(str(x) for x in v)
    return out or None


def general_metadata(directory: Path, config: dict[str, Any], n_params: int) -> dict[str, GGUFValue]:
    card = _model_card(directory)
    name = card.get("name") or card.get("model_name")
    org = card.get("organization") or card.get("model_organization")
    name_or_path = config.get("_name_or_path")
    if isinstance(name_or_path, str) and name_or_path.count("/") <= 1 and name_or_path.strip():
        o, _, m = name_or_path.rpartition("/")
        name = name or (m if " " in m else id_to_title(m))
        if o and not o.startswith("."):
            org = org or id_to_title(o)
    name = name or id_to_title(directory.resolve().name) or "model"
    out: dict[str, GGUFValue] = {Keys.NAME: GGUFValue(str(name), T.STRING)}
    if org:
        out["general.organization"] = GGUFValue(str(org), T.STRING)
    if n_params > 0:
        out[Keys.SIZE_LABEL] = GGUFValue(size_label(n_params), T.STRING)
    lic = card.get("license")
    if lic:
        out["general.license"] = GGUFValue(",".join(lic) if isinstance(lic, list) else str(lic), T.STRING)
    tags = _as_list(card.get("tags"), card.get("pipeline_tag"))
    if tags:
        out["general.tags"] = GGUFValue(tags, T.ARRAY, T.STRING)
    langs = _as_list(card.get("languages"), card.get("language"))
    if langs:
        out["general.languages"] = GGUFValue(langs, T.ARRAY, T.STRING)
    return out
