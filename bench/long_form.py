"""Wall time of one long-form task on one render pod versus on three.

    python -m bench.long_form [--chars 20000] [--pods 1 3]

Runs the function topology as processes (tests/render_pods.py: NATS, the API rendering
nothing itself, and N render functions each fed by its own JetStream source) with the
espeak engine (`ENGINE` cannot select the no-op engine in a process), submits one task of
`chars` characters, and times it from the submission to `completed`. The task becomes
segment jobs of SEGMENT_MAX_CHARS characters that the pods share; one assembly joins them.
Prints a table and the ratio of the first row's time to the last's. The pods share this
machine's cores, so the speed-up is bounded by them, not by the number of pods.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from tests.conftest import TESTDATA
from tests.render_pods import render_pods
from tests.speech import ENGLISH

SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river bank today. "


def one_task(root: Path, pods: int, chars: int) -> tuple[float, float, list[int]]:
    """(seconds from submission to completed, seconds of audio, segments per pod)."""
    text = (SENTENCE * (chars // len(SENTENCE) + 1))[:chars].strip()
    with (
        render_pods(root, pods) as topology,
        httpx.Client(base_url=topology.api.url, timeout=60) as http,
    ):
        voice = f"bench_{uuid.uuid4().hex[:8]}"
        clip = (TESTDATA / ENGLISH.filename).read_bytes()
        reply = http.post(
            "/api/v3/voices/",
            data={"voice_id": voice, "name": "Bench", "voice_type": "cross_lingual"},
            files={"audio_file": ("en.wav", clip, "audio/wav")},
        )
        reply.raise_for_status()
        started = time.perf_counter()
        created = http.post("/api/v3/cross-lingual/task", json={"text": text, "voice_id": voice})
        created.raise_for_status()
        task_id = created.json()["task_id"]
        while (status := http.get(f"/api/v3/cross-lingual/task/{task_id}").json())[
            "status"
        ] not in ("completed", "failed", "cancelled"):
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        if status["status"] != "completed":
            raise SystemExit(f"the task ended {status['status']}: {status.get('error')}")
        shares = [len(indexes) for indexes in topology.segments_rendered(task_id)]
        return elapsed, status["duration"], shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chars", type=int, default=20_000)
    parser.add_argument("--pods", type=int, nargs="+", default=[1, 3])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for pods in args.pods:
            rows.append((pods, *one_task(Path(folder) / f"pods-{pods}", pods, args.chars)))
    print(f"one task of {args.chars} characters, espeak engine")
    print(f"{'pods':>4} | {'wall s':>7} | {'audio s':>7} | segments per pod")
    for pods, elapsed, audio, shares in rows:
        print(f"{pods:>4} | {elapsed:>7.1f} | {audio:>7.0f} | {shares}")
    print(f"speed-up {rows[0][0]} → {rows[-1][0]} pods: {rows[0][1] / rows[-1][1]:.2f}x")


if __name__ == "__main__":
    main()
