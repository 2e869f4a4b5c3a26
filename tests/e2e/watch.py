"""Watch a server while it is attacked: its peak memory and whether /health keeps answering.

    with ServerWatch(server) as watch:
        ...  # the attack
    watch.assert_healthy(max_rss_mb=400, max_health_s=1.0)

Memory is the kernel's own high-water mark (`VmHWM` in /proc) of the server and of its
engine process (the development engine runs in one of its own), summed, each reset when
the watch starts (`clear_refs`), so a spike between two samples is never missed.
Responsiveness is measured by a thread that asks `/health` back to back on a fresh
connection and records the slowest answer (a request that gets no answer within the
limit counts as the whole wait).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Protocol

import httpx


class Watched(Protocol):
    @property
    def url(self) -> str: ...

    @property
    def pid(self) -> int: ...


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmRSS") / 1024


def peak_rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmHWM") / 1024


def process_tree(pid: int) -> list[int]:
    """A process and its descendants, alive now (Linux)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue  # the thread ended meanwhile
        for child in children:
            found += process_tree(int(child))
    return found


def gone(pid: int, seconds: float) -> bool:
    """Whether the process `pid` has ended, waiting up to `seconds` for it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def reset_peak(pid: int) -> None:
    """Set the high-water mark back to the current RSS (Linux: write 5 to clear_refs)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass  # not permitted here: the peak then covers the process's whole life


class ServerWatch:
    def __init__(self, server: Watched, *, probe_timeout: float = 10.0) -> None:
        self.server = server
        self.pid = server.pid
        self.probe_timeout = probe_timeout
        self.slowest_health = 0.0
        self.health_failures: list[str] = []
        self.probes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._probe, name="health-probe", daemon=True)
        self.peak_mb = 0.0
        self.baseline_mb = 0.0
        self._pids: list[int] = []

    def __enter__(self) -> ServerWatch:
        self._pids = process_tree(self.pid)
        for pid in self._pids:
            reset_peak(pid)
        self.baseline_mb = sum(map(rss_mb, self._pids))
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(self.probe_timeout + 5)
        self.peak_mb = sum(map(peak_rss_mb, [p for p in self._pids if Path(f"/proc/{p}").exists()]))

    def _probe(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                # A fresh connection each time: a stalled accept loop must show too.
                with httpx.Client(timeout=self.probe_timeout) as http:
                    reply = http.get(f"{self.server.url}/health")
                if reply.status_code != 200:
                    self.health_failures.append(f"/health answered {reply.status_code}")
            except httpx.HTTPError as exc:
                self.health_failures.append(f"/health failed: {type(exc).__name__}")
            self.slowest_health = max(self.slowest_health, time.monotonic() - started)
            self.probes += 1
            self._stop.wait(0.05)

    def assert_healthy(self, *, max_rss_mb: float = 400.0, max_health_s: float = 1.0) -> None:
        assert self.probes > 0, "the health probe never ran"
        assert not self.health_failures, self.health_failures[:5]
        assert self.slowest_health < max_health_s, (
            f"/health took {self.slowest_health:.2f} s (limit {max_health_s} s)"
        )
        assert self.peak_mb < max_rss_mb, (
            f"peak memory {self.peak_mb:.0f} MB (limit {max_rss_mb} MB, "
            f"{self.baseline_mb:.0f} MB at the start)"
        )
