"""What the machine can hold: checks that refuse impossible sizes before any work starts.

A recipe can ask for 10**12 chains or a 10**11-dimensional latent and still be valid YAML of the
right types. Such requests are refused here, in milliseconds, with the key to change, instead of
failing after training or after the machine has started swapping.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import AesamplerError, quoted

#: Share of the memory available now that one allocation aesampler plans may take.
MEMORY_SHARE = 0.8


class ResourceError(AesamplerError):
    """A requested size cannot fit on this machine."""


def physical_memory() -> int:
    """Bytes of physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def model_memory_limit() -> int:
    """The most parameter and buffer bytes one model may hold: half of the physical memory."""
    try:
        return physical_memory() // 2
    except (AttributeError, OSError, ValueError):  # no sysconf (Windows): assume 16 GiB
        return 8 * 2**30


def available_memory() -> int:
    """Bytes of memory available to a new allocation now (MemAvailable, else physical)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return physical_memory()


def format_bytes(count: float) -> str:
    """``12.6 GB``-style sizes (powers of 1000), exact below a kilobyte."""
    for unit in ("bytes", "kB", "MB", "GB", "TB", "PB"):
        if count < 1000 or unit == "PB":
            return f"{count:,} {unit}" if unit == "bytes" else f"{count:,.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def check_memory(nbytes: int, what: str) -> None:
    """Raise a ResourceError when ``nbytes`` would not fit in the memory available now."""
    budget = int(MEMORY_SHARE * available_memory())
    if nbytes > budget:
        raise ResourceError(
            f"{what} needs about {format_bytes(nbytes)} of memory, but "
            f"{format_bytes(budget)} is available ({round(100 * MEMORY_SHARE)}% of what this "
            "machine has free); lower it"
        )


def free_disk(path: str | Path) -> int | None:
    """Bytes free on the file system that holds ``path`` (or would: its nearest existing folder).

    None for a file system that reports no size at all (``/proc``, ``/sys``): not a disk, and
    writing there fails with its own message.
    """
    place = Path(path).expanduser().absolute()
    while not place.exists() and place != place.parent:
        place = place.parent
    usage = shutil.disk_usage(place)
    return usage.free if usage.total > 0 else None


def check_disk(nbytes: int, path: str | Path, what: str) -> None:
    """Raise a ResourceError when ``nbytes`` of files would not fit on the disk of ``path``."""
    free = free_disk(path)
    if free is not None and nbytes > free:
        raise ResourceError(
            f"{what} needs about {format_bytes(nbytes)} on disk, but the disk of "
            f"{quoted(path)} has {format_bytes(free)} free; lower it, or choose another "
            "output.dir (--out)"
        )
