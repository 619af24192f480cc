"""Build a native C library at first use, cached, and load it with ctypes.

No torch headers and no Python headers: each library is plain C with a C ABI, compiled by the system C
compiler once per (sources, flags, compiler) and cached under `~/.cache/llamakit/native/` (or
`$XDG_CACHE_HOME/llamakit/native/`). One shared object is built per instruction-set variant; the variant
is chosen at run time from the CPU's features (`cpu_variants`), and tests load each variant by name.

    variant   compiler flags (x86-64)                              runs on
    scalar    -O3 (baseline x86-64 / aarch64)                      anything
    avx2      + -mavx2 -mfma -mf16c -mbmi2                         Haswell+, Zen+
    avx512    + -mavx512f/bw/vl/dq -mavx512vnni -mavx512bf16       Sapphire Rapids, Zen 4+
              (-mavxvnni too: the 256-bit VNNI forms)

Sources select their code paths with the compiler's own macros (`__AVX2__`, `__AVX512VNNI__`, ...), so one
source serves every variant. A missing compiler or a failed build raises NativeBuildError; callers fall
back to the torch kernels and say so in one line.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

from ...errors import LlamakitError

HERE = Path(__file__).resolve().parent

_X86_BASE = ["-mavx2", "-mfma", "-mf16c", "-mbmi2"]
FLAGS: dict[str, list[str]] = {
    "scalar": [],
    "avx2": _X86_BASE,
    "avx512": _X86_BASE + ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni",
                           "-mavx512bf16", "-mavxvnni"],
}
# the /proc/cpuinfo flags each variant needs
_NEEDS: dict[str, set[str]] = {
    "scalar": set(),
    "avx2": {"avx2", "fma", "f16c", "bmi2"},
    "avx512": {"avx2", "fma", "f16c", "bmi2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni",
               "avx512_bf16", "avx_vnni"},
}
COMMON = ["-O3", "-std=gnu11", "-fPIC", "-shared", "-pthread", "-fno-math-errno", "-fvisibility=hidden",
          "-Wall", "-Wno-unused-function"]


class NativeBuildError(LlamakitError):
    """The native library cannot be built or loaded here (no compiler, build error, unknown CPU)."""


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_variants() -> list[str]:
    """The variants this CPU can run, best first (always ends with "scalar")."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ["scalar"]
    have = _cpu_flags()
    return [v for v in ("avx512", "avx2") if _NEEDS[v] <= have] + ["scalar"]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llamakit" / "native"


def _compiler() -> str:
    for cc in (os.environ.get("CC") or "", "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    raise NativeBuildError("no C compiler found (cc, gcc or clang)")


def build(name: str, sources: list[Path], variant: str, extra_flags: Sequence[str] = ()) -> Path:
    """Compile `sources` (plus every header beside them) into lib<name>-<variant>.so, once; returns its path.
    `extra_flags`: this library's own compiler flags (part of the cache key), e.g. -ffp-contract=off."""
    if variant not in FLAGS:
        raise NativeBuildError(f"unknown native variant {variant!r} (known: {', '.join(FLAGS)})")
    cc = _compiler()
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise NativeBuildError(f"the C compiler {cc} does not run: {e}") from None
    flags = COMMON + (FLAGS[variant] if platform.machine().lower() in ("x86_64", "amd64") else []) + list(extra_flags)
    h = hashlib.sha256()
    for p in sorted(set(sources) | set(HERE.glob("*.h"))):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    h.update(" ".join(flags).encode() + version.encode() + platform.machine().encode())
    out = cache_dir() / f"lib{name}-{variant}-{h.hexdigest()[:16]}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".tmp", dir=out.parent)
    os.close(fd)
    cmd = [cc, *flags, "-I", str(HERE), *map(str, sources), "-o", tmp, "-lm"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            err = (res.stderr.strip().splitlines() or ["(no output)"])
            raise NativeBuildError(f"building the {variant} native library failed: {err[0]}")
        os.replace(tmp, out)  # atomic: a concurrent build of the same key writes the same bytes
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def load(name: str, sources: list[Path], variant: str | None = None,
         extra_flags: Sequence[str] = ()) -> tuple[ctypes.CDLL, str]:
    """The library for `variant` (default: the best this CPU runs); returns (library, variant)."""
    variants = cpu_variants()
    if variant is None:  # LLAMAKIT_NATIVE_VARIANT=avx2 runs a narrower path (benchmarks of what AVX2 users get)
        variant = os.environ.get("LLAMAKIT_NATIVE_VARIANT") or variants[0]
    if variant not in variants:
        raise NativeBuildError(f"this CPU cannot run the {variant} native kernels (it runs: {', '.join(variants)})")
    path = build(name, sources, variant, extra_flags)
    try:
        return ctypes.CDLL(str(path)), variant
    except OSError as e:
        raise NativeBuildError(f"cannot load {path}: {e}") from None
