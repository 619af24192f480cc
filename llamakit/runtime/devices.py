"""What the hardware offers: CUDA devices with their free memory, and the system RAM available.
The only place (with boundary.py) that asks torch.cuda anything; placement.py decides from these numbers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import InputError, OutOfMemoryError
from .placement import DeviceInfo, Placement, out_of_memory_line, scaled_suggestion

NO_DEVICE = ("none", "cpu")


def cuda_reason() -> str | None:
    """None when CUDA can be used, else why not (one phrase)."""
    if not torch.backends.cuda.is_built():
        return f"this torch ({torch.__version__}) is built without CUDA"
    if not torch.cuda.is_available():
        return "no CUDA device is visible"
    return None


def find_accelerators(names: Sequence[str] = ()) -> tuple[list[DeviceInfo], str | None]:
    """(the accelerators to use, why there are none). `names` is --device: "cuda:1", ...; empty = all CUDA
    devices; "none"/"cpu" = no accelerator."""
    if any(n.lower() in NO_DEVICE for n in names):
        return [], None
    reason = cuda_reason()
    if reason is not None:
        return [], reason
    count = torch.cuda.device_count()
    wanted = list(names) or [f"cuda:{i}" for i in range(count)]
    out = []
    for name in wanted:
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise InputError(f"--device {name}: not a device name (use cuda:0, cuda:1, ... or none)") from None
        if dev.type != "cuda":
            raise InputError(f"--device {name}: llamakit offloads to CUDA devices (cuda:N) or none")
        index = 0 if dev.index is None else dev.index
        if index >= count:
            raise InputError(f"--device {name}: there are {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
        free, total = torch.cuda.mem_get_info(index)
        out.append(DeviceInfo(torch.device("cuda", index), torch.cuda.get_device_name(index), free, total))
    return out, None


def ram_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """MemAvailable in bytes (Linux), None when unknown."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _asked(exc: BaseException) -> int | None:
    """Bytes from torch's 'Tried to allocate 20.00 MiB' (None when absent)."""
    m = re.search(r"Tried to allocate ([0-9.]+) (B|KiB|MiB|GiB|TiB)", str(exc))
    if not m:
        return None
    return int(float(m.group(1)) * 1024 ** ("B", "KiB", "MiB", "GiB", "TiB").index(m.group(2)))


@contextmanager
def cuda_oom(device: torch.device, placement: Placement) -> Iterator[None]:
    """Turn a CUDA out-of-memory error inside the block into one OutOfMemoryError line: the device, what
    was asked (the placement's prediction for it, or torch's request), what was free, an -ngl that fits."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as e:
        if device.type != "cuda" and placement.accelerators:
            device = next((d for d in placement.accelerators if d.type == "cuda"), device)
        slot = next((i for i, d in enumerate(placement.accelerators) if d == device), None)
        asked = placement.usage[slot] if slot is not None and placement.usage else (_asked(e) or 0)
        try:
            free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
        except RuntimeError:
            free = 0
        start_free = placement.free[slot] if slot is not None and placement.free else free
        suggest = scaled_suggestion(placement, slot) if slot is not None else None
        raise OutOfMemoryError(out_of_memory_line(device, asked, start_free, suggest)) from None
