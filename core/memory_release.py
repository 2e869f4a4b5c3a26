"""Large buffers go back to the operating system when they are freed.

glibc's malloc gives a block above its mmap threshold (128 KiB at start) a mapping of its
own, unmapped when the block is freed. But each time such a block is freed, glibc raises
the threshold to its size (up to 32 MiB): after the first upload of a few megabytes,
later uploads and decoded clips of that size come from the heap, and the heap keeps what
they leave behind. Measured on `cosyvoice-api serve`, forty 19 MB uploads at once
(refused as too long): RSS peaked at 441-548 MB and stayed at 441-477 MB after; with the
threshold fixed at 1 MiB, it peaked at 237-275 MB and went back to 108 MB.

Fixing the threshold (`mallopt(M_MMAP_THRESHOLD, ...)`, what glibc's
`MALLOC_MMAP_THRESHOLD_` variable does at start-up) also turns that raising off, for good.
A process that runs a PyTorch model keeps glibc's own policy: its tensors of a few
megabytes are then reused from the heap instead of mapped and faulted in afresh each
time (the tiny CosyVoice3 on the CPU rendered in 2.9-3.2 s with the threshold fixed,
2.3-2.8 s without, alternating processes). Other C libraries (musl, macOS) have no such
setting; there this does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from collections.abc import Iterable

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD_BYTES = 1024 * 1024  # a block this size or larger has a mapping of its own
TORCH_ENGINES = frozenset({"cosyvoice"})  # `EngineInfo.engine` of the PyTorch engines


def release_large_blocks_when_freed(engines_here: Iterable[str] = ()) -> bool:
    """Fix glibc's mmap threshold unless this process runs a PyTorch engine
    (`engines_here`: each engine's `EngineInfo.engine`); True when it was set."""
    if TORCH_ENGINES.intersection(engines_here) or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    if not done:
        log.debug("the C library did not take an mmap threshold; its own policy applies")
    return done
