"""`llamakit convert`: Hugging Face and Meta llama checkpoints to GGUF, identical to llama.cpp's converter output.

    from llamakit.convert import convert
    convert("path/to/model", outtype="q8_0")          # -> path/to/model/<name>-q8_0.gguf

`plan_conversion` + `write_gguf` split the same work in two (the plan reads headers and configs only).
"""

from .pipeline import (
    OUTTYPES,
    ConversionPlan,
    ConvertResult,
    PlannedTensor,
    convert,
    default_outfile,
    plan_conversion,
    write_gguf,
)

__all__ = ["OUTTYPES", "ConversionPlan", "ConvertResult", "PlannedTensor", "convert", "default_outfile",
           "plan_conversion", "write_gguf"]
