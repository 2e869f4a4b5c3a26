"""Wait for a task with a live progress bar, then download its audio."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from .api import ApiClient, ApiError
from .command import err

FINISHED = ("completed", "failed", "cancelled")


def wait_for(api: ApiClient, status_path: str, interval: float) -> dict[str, Any]:
    """Poll `status_path` until the task finishes, showing its progress on stderr."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err) as bar:
        job = bar.add_task("registered", total=100)
        while True:
            status = api.json("GET", status_path)
            bar.update(job, completed=100 * status["progress"], description=status["status"])
            if status["status"] in FINISHED:
                break
            time.sleep(interval)
    if status["status"] != "completed":
        reason = status.get("error_message") or "no reason given"
        raise ApiError(f"task {status['task_id']} {status['status']}: {reason}")
    return status


def download_audio(api: ApiClient, status: dict[str, Any], output: str | None) -> Path:
    """Save a completed task's audio: to `output`, else under its own name here."""
    destination = Path(output or status["audio_url"].rsplit("/", 1)[-1])
    size = api.save(destination, "GET", status["audio_url"])
    err.print(
        f"wrote {destination} ({size} bytes, {status.get('duration') or 0:.1f} s of audio)",
        highlight=False,
    )
    return destination
