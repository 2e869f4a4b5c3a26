"""How many syntheses an engine runs at once when SYNTHESIS_CONCURRENCY is not set.

On the CPU: one per core. An engine on a GPU may say better (`gpu_slots`: CosyVoice
derives it from the free GPU memory and the size of its model, see the README table).
"""

from __future__ import annotations

import os
from typing import Any


def cpu_cores() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)


def default_concurrency(engine: Any) -> int:
    gpu_slots = getattr(engine, "gpu_slots", None)
    slots = gpu_slots() if callable(gpu_slots) else None
    return slots if slots else cpu_cores()
