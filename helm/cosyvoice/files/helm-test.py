# `helm test`: the release answers and speaks. Standard library only (runs in the API image).
# 1. GET /health?deep=true must say "healthy". A predictor scaled to zero reads as not
#    ready until it has started, and deep=true wakes it: while that is the only problem,
#    wait for it (at most SYNTHESIS_TIMEOUT). A backing service or an in-process engine
#    that is down fails at once.
# 2. POST a short text with a generated reference clip to with-audio, stream=true (the audio
#    comes back in the answer; nothing is stored) and expect WAV bytes.
import json
import math
import os
import struct
import sys
import time
import urllib.error
import urllib.request
import uuid
import wave
from io import BytesIO

URL = os.environ["ROUTER_URL"].rstrip("/")
KEY = os.environ.get("API_KEY", "")
AUTH = {"Authorization": f"Bearer {KEY}"} if KEY else {}


def call(method, path, body=None, headers=None, timeout=30.0):
    request = urllib.request.Request(
        URL + path, data=body, method=method, headers={**AUTH, **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def health():
    # The router may still be starting right after an install: retry connection errors.
    for _ in range(10):
        try:
            return call("GET", "/health?deep=true")
        except OSError as error:
            print(f"/health: {error}; retrying", flush=True)
            time.sleep(3)
    sys.exit("FAIL: /health did not answer")


def starting_predictors(report):
    """Versions whose only problem is a remote predictor that is not up yet; None if
    anything else is wrong."""
    if not all(service.get("ok") for service in report.get("services", {}).values()):
        return None
    waiting = []
    for version in ("v2", "v3"):
        engine = report.get(version)
        if isinstance(engine, dict) and not engine.get("ready"):
            if not engine.get("remote"):
                return None
            waiting.append(version)
    return waiting or None


def healthy_or_exit(budget):
    deadline = time.monotonic() + budget
    while True:
        status, body = health()
        print(f"GET /health?deep=true -> {status} {body.decode(errors='replace')}", flush=True)
        try:
            report = json.loads(body)
        except ValueError:
            report = {}
        state = report.get("status")
        if status == 200 and state == "healthy":
            return
        waiting = starting_predictors(report) if status == 200 else None
        if waiting is None or time.monotonic() > deadline:
            sys.exit(f'FAIL: /health says {state!r} (HTTP {status}); the release needs "healthy"')
        print(f"waiting for the {', '.join(waiting)} predictor to start", flush=True)
        time.sleep(min(10.0, max(1.0, budget / 10)))


def reference_clip(seconds=2.0, rate=16000):
    # A voiced, vowel-like tone (harmonics of 140 Hz with a syllable rhythm): loud enough
    # not to count as silence, long enough for the 1 s minimum.
    frames = bytearray()
    for n in range(int(seconds * rate)):
        t = n / rate
        envelope = 0.5 + 0.5 * math.sin(2 * math.pi * 3 * t)
        sample = sum(math.sin(2 * math.pi * 140 * k * t) / k for k in range(1, 6))
        frames += struct.pack("<h", int(8000 * envelope * sample))
    buffer = BytesIO()
    with wave.open(buffer, "wb") as clip:
        clip.setnchannels(1)
        clip.setsampwidth(2)
        clip.setframerate(rate)
        clip.writeframes(bytes(frames))
    return buffer.getvalue()


def multipart(fields, files):
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        head = f'Content-Disposition: form-data; name="{name}"'
        parts.append(f"--{boundary}\r\n{head}\r\n\r\n{value}\r\n".encode())
    for name, (filename, content, kind) in files.items():
        head = f'Content-Disposition: form-data; name="{name}"; filename="{filename}"'
        parts.append(
            f"--{boundary}\r\n{head}\r\nContent-Type: {kind}\r\n\r\n".encode() + content + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


budget = float(os.environ.get("SYNTHESIS_TIMEOUT", "570"))
healthy_or_exit(budget)

path = os.environ.get("SYNTHESIS_PATH", "")
if path:
    body, content_type = multipart(
        {"text": os.environ["SYNTHESIS_TEXT"], "format": "wav", "stream": "true"},
        {"prompt_audio": ("reference.wav", reference_clip(), "audio/wav")},
    )
    started = time.monotonic()
    status, audio = call(
        "POST",
        path,
        body,
        {"Content-Type": content_type},
        timeout=budget,
    )
    took = time.monotonic() - started
    print(f"POST {path} -> {status}, {len(audio)} bytes in {took:.1f} s", flush=True)
    if status != 200:
        sys.exit(f"FAIL: synthesis answered {status}: {audio[:500].decode(errors='replace')}")
    if audio[:4] != b"RIFF" or audio[8:12] != b"WAVE" or len(audio) <= 44:
        sys.exit(f"FAIL: synthesis returned no WAV audio (starts with {audio[:12]!r})")
print("PASS", flush=True)
