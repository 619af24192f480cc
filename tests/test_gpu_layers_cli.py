"""The device flags of run / bench on a machine without CUDA: parsing errors are one line, -ngl N > 0
warns once and runs on the CPU, auto runs on the CPU silently."""

from __future__ import annotations

from typer.testing import CliRunner

from llamakit.cli import app

from .conftest import TINY_GGUF

Q4 = str(TINY_GGUF / "quantize-Q4_0.gguf")


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args))


def test_bad_device_flags_are_one_line_errors() -> None:
    base = ("run", "-m", Q4, "-p", "Hi", "-n", "1", "-c", "64")
    for flags, msg in ((("-ngl", "lots"), "-ngl lots: give a layer count"), (("-ngl", "-3"), "-ngl -3"),
                       (("--tensor-split", "3,x"), "--tensor-split 3,x"), (("--split-mode", "row"), "--split-mode row"),
                       (("--fit-margin", "-5"), "--fit-margin")):
        r = invoke(*base, *flags)
        assert r.exit_code == 1, flags
        assert msg in r.output and "Traceback" not in r.output and r.output.count("\n") == 1


def test_ngl_without_cuda_warns_once_and_runs_on_cpu() -> None:
    r = invoke("run", "-m", Q4, "-p", "Hi", "-n", "2", "-c", "64", "-ngl", "3", "--temp", "0")
    assert r.exit_code == 0
    warn = [x for x in r.output.splitlines() if x.startswith("warning: -ngl")]
    assert len(warn) == 1 and "running everything on the CPU" in warn[0]
    assert "offloaded 0/5 layers to GPU" in r.output
    auto = invoke("run", "-m", Q4, "-p", "Hi", "-n", "2", "-c", "64", "--temp", "0")
    assert auto.exit_code == 0 and "warning: -ngl" not in auto.output
    none = invoke("run", "-m", Q4, "-p", "Hi", "-n", "2", "-c", "64", "--device", "none", "-ngl", "3")
    assert none.exit_code == 0 and "no accelerator" in none.output


def test_bench_takes_an_ngl_list() -> None:
    r = invoke("bench", "-m", Q4, "-p", "8", "-n", "2", "-r", "1", "-ngl", "0,2")
    assert r.exit_code == 0, r.output
    rows = [x for x in r.output.splitlines() if x.startswith("| llama")]
    assert len(rows) == 4 and all("| CPU " in x and "|   0 |" in x for x in rows)  # no GPU here: ngl 0
