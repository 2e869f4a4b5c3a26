"""An engine in a child process of its own, so that its Python never waits for the server's.

The development engine spends most of a call inside libespeak-ng with the GIL released,
but every call back into Python (espeak's audio callback, the return from C, the hand-off
of a chunk) needs the GIL, which a busy server's event loop holds most of the time: in
one process the engine and the API took turns on one GIL, and the API streamed about half
what the engine alone could. In a process of its own the engine keeps its core; the
server only moves finished chunks. It also keeps a crash in the engine's C code away from
the server.

The child is single-threaded and pull-driven. A call starts with `start`, which says how
many chunks it wants to begin with (and in which form, below), and asks for one more
with `next` as it takes each; the child renders a call's chunk only when it is wanted,
so a slow consumer holds a few chunks, not the call's whole audio. Among the calls that
want a chunk the child serves the earliest deadline first (see `engine_child._Calls`).
Audio comes back raw after its message (`channel`): float32, or 16-bit PCM for a call
that asked for it (a stream at the engine's own rate, whose consumer sends 16-bit audio
anyway): half the bytes, converted in the child, which renders in parallel with the
server.

Only engines that synthesize from their stored features alone belong here (the espeak
engine): the clip stays in the server and the child gets an empty one, which saves
pickling seconds of audio per call. Features are extracted and (de)serialised in the
server by a local instance of the same engine class, which never loads its library.

If the child dies, every call in flight fails with `SynthesisFailed` and the next call
starts a new child. The child ends by itself when the server goes away (its socket
closes), even after a SIGKILL that left it no time to say so.

The hop costs a lone call about 2 ms before its first chunk on a 2-core machine (two
processes waking each other; measured against the engine in the caller's process).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EngineNotReady, SynthesisFailed
from ..ports import Clip, EngineInfo
from .base import Engine, EngineRequest
from .channel import Channel
from .engine_child import factory_path

log = logging.getLogger(__name__)

EngineFactory = Callable[[], Engine]
Deliver = Callable[[str, Any], None]
"""Takes a call's answers in the reader thread: ("chunk", samples), ("end", None) or
("error", exception)."""

_LOAD_TIMEOUT_SECONDS = 60.0
_NO_AUDIO = np.zeros(0, dtype=np.float32)
_NO_CLIP = Clip(samples=_NO_AUDIO, sample_rate=16000)


class EngineProcess:
    """The Engine protocol over an engine that runs in a child process (module text)."""

    def __init__(self, make_engine: EngineFactory) -> None:
        self._make_engine = make_engine
        self._local = make_engine()  # features and their storage; never loaded
        self._child: _Child | None = None
        self._info: EngineInfo | None = None
        self._starting = threading.Lock()

    @property
    def info(self) -> EngineInfo:
        return self._info or self._local.info

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs; None when none does (the runner then
        loads a new one off the event loop)."""
        child = self._child
        return child.pid if child is not None and child.alive else None

    def load(self) -> None:
        self._running_child()

    def close(self) -> None:
        """Stop the child (it also stops by itself when this process ends)."""
        with self._starting:
            child, self._child = self._child, None
        if child is not None:
            child.stop()

    def extract_features(self, clip: Clip, prompt_text: str | None) -> Any:
        return self._local.extract_features(clip, prompt_text)

    def serialize_features(self, features: Any) -> bytes:
        return self._local.serialize_features(features)

    def deserialize_features(self, data: bytes) -> Any:
        return self._local.deserialize_features(data)

    def synthesize(self, request: EngineRequest) -> Iterator[np.ndarray]:
        """The Engine protocol's blocking iterator (warm-up, benchmarks, any caller that
        is not the runner). Nothing starts until the first chunk is asked for."""
        inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        call = self.open_call(request, lambda kind, payload: inbox.put((kind, payload)))
        try:
            while True:
                kind, payload = inbox.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise payload
                call.request_next()
                yield payload
        finally:
            call.stop()

    def open_call(
        self, request: EngineRequest, deliver: Deliver, ahead: int = 1, *, pcm16: bool = False
    ) -> ChildCall:
        """Start a call whose answers go to `deliver`, from the reader thread: ("chunk",
        samples), then ("end", None) or ("error", exception). Its first `ahead` chunks
        are asked for at once; ask for one more with `ChildCall.request_next` as each is
        taken, so that the child renders at most `ahead` chunks ahead of the consumer.
        Samples are float32, or 16-bit PCM (int16) with `pcm16`.

        The server's engine runner uses this directly, so chunks reach the event loop
        without an engine thread between (each thread is one more GIL hand-off).
        """
        if request.features is None:
            request = replace(request, features=self.extract_features(request.clip, None))
        return self._running_child().open_call(
            replace(request, clip=_NO_CLIP), deliver, ahead, pcm16
        )

    def _running_child(self) -> _Child:
        with self._starting:
            child = self._child
            if child is None or not child.alive:
                if child is not None:
                    log.warning("the engine process ended (%s); starting a new one", child.exit)
                child = _Child.start(self._make_engine)
                self._child, self._info = child, child.info
            return child


class _Child:
    """One running child and the calls in flight to it (the parent's side)."""

    def __init__(
        self, process: subprocess.Popen[bytes], channel: Channel, info: EngineInfo
    ) -> None:
        self._process = process
        self._channel = channel
        self.info = info
        self._calls: dict[int, Deliver] = {}
        self._calls_lock = threading.Lock()
        self._numbers = itertools.count(1)
        self.alive = True
        self.exit = "running"
        threading.Thread(target=self._read, name="engine-process-reader", daemon=True).start()

    @property
    def pid(self) -> int:
        return int(self._process.pid)

    @classmethod
    def start(cls, make_engine: EngineFactory) -> _Child:
        # A fresh interpreter (not fork: the server's threads would be copied in whatever
        # state they were in; not multiprocessing's spawn: it runs the caller's main
        # module again), given one end of a socket pair.
        ours, theirs = socket.socketpair()
        with theirs:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "core.engines.engine_child",
                    "--fd",
                    str(theirs.fileno()),
                    "--engine",
                    factory_path(make_engine),
                ],
                pass_fds=(theirs.fileno(),),
                # `python -m` looks in its working directory first: the folder that holds
                # this `core`, wherever the parent found it (an install, a checkout).
                cwd=Path(__file__).resolve().parents[2],
            )
        channel = Channel(ours)
        try:
            info = _loaded_info(channel, process)
        except BaseException:
            channel.close()
            if process.poll() is None:
                process.kill()
            process.wait()
            raise
        return cls(process, channel, info)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._channel.shutdown()  # the child reads its end and exits
        try:
            self._process.wait(5.0)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def open_call(
        self, request: EngineRequest, deliver: Deliver, ahead: int, pcm16: bool
    ) -> ChildCall:
        number = next(self._numbers)
        with self._calls_lock:
            if not self.alive:
                raise SynthesisFailed(f"the engine process ended ({self.exit})")
            self._calls[number] = deliver
        call = ChildCall(self, number)
        try:
            self.send(("start", number, request, ahead, pcm16))
        except BaseException:
            call.stop()
            raise
        return call

    def forget(self, number: int) -> bool:
        """Stop delivering a call's answers; False when it had ended already."""
        with self._calls_lock:
            return self._calls.pop(number, None) is not None

    def send(self, message: tuple[Any, ...]) -> None:
        try:
            self._channel.send(message)
        except OSError:  # closed: the reader reports why to every call
            if message[0] != "stop":
                raise SynthesisFailed(f"the engine process ended ({self.exit})") from None

    def _read(self) -> None:
        """Hands each answer to its call; when the child dies, fails every call."""
        try:
            while True:
                answer, samples = self._channel.receive()
                kind, number = answer[0], answer[1]
                payload: Any
                if kind == "chunk":
                    payload = _NO_AUDIO if samples is None else samples
                else:
                    payload = answer[2] if len(answer) > 2 else None
                with self._calls_lock:
                    deliver = self._calls.get(number)
                    if deliver is not None and kind != "chunk":
                        del self._calls[number]  # its last answer
                if deliver is not None:  # a call that was stopped gets no more answers
                    self._deliver(deliver, kind, payload)
        except (EOFError, OSError):
            pass
        self._channel.close()
        try:
            code: int | None = self._process.wait(5.0)
        except subprocess.TimeoutExpired:
            code = None
        with self._calls_lock:
            self.alive = False
            self.exit = "its socket closed" if code is None else f"exit code {code}"
            calls, self._calls = list(self._calls.values()), {}
        for deliver in calls:
            self._deliver(
                deliver, "error", SynthesisFailed(f"the engine process ended ({self.exit})")
            )

    @staticmethod
    def _deliver(deliver: Deliver, kind: str, payload: Any) -> None:
        try:
            deliver(kind, payload)
        except Exception:  # one caller's fault must not stop the answers to the others
            log.exception("an engine process answer could not be delivered")


class ChildCall:
    """One call in flight to the child, from the parent's side."""

    def __init__(self, child: _Child, number: int) -> None:
        self._child = child
        self._number = number

    def request_next(self) -> None:
        """Ask for the next chunk (the child renders it while this one is handed on)."""
        self._child.send(("next", self._number))

    def stop(self) -> None:
        """No more answers; the child closes the call's generator. Harmless after its end."""
        if self._child.forget(self._number):
            self._child.send(("stop", self._number))


def _loaded_info(channel: Channel, process: subprocess.Popen[bytes]) -> EngineInfo:
    """The child's first answer: its engine's info once loaded, or why it could not load."""
    if not channel.poll(_LOAD_TIMEOUT_SECONDS):
        raise EngineNotReady(f"the engine process did not load within {_LOAD_TIMEOUT_SECONDS:g} s")
    try:
        (kind, payload), _ = channel.receive()
    except (EOFError, OSError):
        raise EngineNotReady(
            f"the engine process exited while loading (code {process.wait()})"
        ) from None
    if kind == "failed":
        raise EngineNotReady(payload)
    info: EngineInfo = payload
    return info
