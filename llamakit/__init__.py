"""llamakit: convert, quantize and run llama-family GGUF models, byte-compatible with llama.cpp.

    from llamakit import Llama, convert, quantize, LlamakitError

The public API lives in llamakit/api.py and is imported on first use (module __getattr__), so that
`llamakit --help` and `import llamakit` stay instant and do not import torch.

`convert` and `quantize` are functions here, although llamakit.convert (a package) and llamakit.quantize (a
module) exist too: importing a submodule normally rebinds the package attribute of the same name to the
module, so `from llamakit import convert` would give a module once anything imported llamakit.convert.pipeline.
The package's module class below refuses that one rebinding, so the attributes stay the functions; the
modules are still imported normally and reached with `from llamakit.convert import plan_conversion`,
`from llamakit.quantize import plan_quantize` or `importlib.import_module("llamakit.quantize")` (but not
`import llamakit.quantize as m`, which reads the attribute and gives the function).
"""

from __future__ import annotations

import sys
import types
from typing import Any

__version__ = "0.1.0"

_API = {"Llama": "api", "convert": "api", "quantize": "api", "packaged_prompt": "api",
        "LlamakitError": "errors", "InputError": "errors", "OutOfMemoryError": "errors"}
__all__ = ["Llama", "LlamakitError", "__version__", "convert", "quantize"]


def __getattr__(name: str) -> Any:
    unit = _API.get(name)
    if unit is None:
        raise AttributeError(f"module 'llamakit' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{unit}"), name)
    types.ModuleType.__setattr__(sys.modules[__name__], name, value)
    return value


class _Package(types.ModuleType):
    """Keeps `convert` / `quantize` the API functions when their same-named submodules are imported."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("convert", "quantize") and isinstance(value, types.ModuleType):
            return  # the function comes (lazily) from __getattr__; sys.modules holds the module
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
