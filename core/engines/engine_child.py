"""The child side of `engine_process`: load one engine, then answer the parent.

    python -m core.engines.engine_child --fd N --engine package.module:Class

Started by `EngineProcess` with one end of a socket pair as file descriptor N, over
which both speak `channel`'s frames. It sends `("ready", info)` or `("failed", detail)`
once, then answers `start`, `next` and `stop` (see `engine_process`) until the parent's
end closes.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import importlib
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..audio.encode import float_to_pcm16
from ..errors import CosyVoiceError, SynthesisFailed, as_synthesis_error
from .base import Engine, FinalChunk
from .channel import Channel


def load_factory(path: str) -> Callable[[], Engine]:
    """`package.module:Class` (what `factory_path` wrote) as the callable it names."""
    module, _, name = path.partition(":")
    target: Any = importlib.import_module(module)
    for part in name.split("."):
        target = getattr(target, part)
    return target  # type: ignore[no-any-return]


def factory_path(factory: Callable[[], Engine]) -> str:
    return f"{factory.__module__}:{factory.__qualname__}"


def serve(channel: Channel, make_engine: Callable[[], Engine]) -> None:
    """Load, say so, then answer until the parent's end of the socket closes."""
    try:
        engine = make_engine()
        engine.load()
    except Exception as exc:
        detail = exc.detail if isinstance(exc, CosyVoiceError) else f"{type(exc).__name__}: {exc}"
        channel.send(("failed", detail))
        return
    channel.send(("ready", engine.info))
    try:
        _Calls(engine, channel).run()
    except (EOFError, OSError):
        pass  # the parent has gone


@dataclass
class _Call:
    """One call in flight in the child."""

    chunks: Iterator[np.ndarray]
    pcm16: bool  # its chunks go as 16-bit PCM, else float32
    wanted: int  # chunks asked for and not yet sent
    deadline: float  # monotonic seconds: when it started plus the audio it has had


class _Calls:
    """The calls in flight, served one chunk at a time, earliest deadline first.

    A call is ready while it has asked for more chunks than it got. Each turn renders
    one chunk of the ready call whose listener will run out of audio first: its
    deadline is when it started plus the seconds of audio it has had. So a new call's
    first audio (due at once) goes before everyone's next chunk, a call with seconds of
    audio in hand waits for those with less, and a long text gives way to shorter ones
    as its audio piles up. Calls of equal texts also finish in the order they came:
    taking turns round robin, they ended together, and the engine sat idle while all
    their clients came back with new requests.

    A call ends with a `FinalChunk`, when its engine marks one. Otherwise its end is
    found at its next turn, which comes after every call due sooner: a listener, who has
    the call's audio to play meanwhile, does not mind; a client reading the whole stream
    waits for it (about 30 ms with 16 clients on 2 cores).

    Messages are read whenever they are there, and waited for only when no call is ready.
    """

    def __init__(self, engine: Engine, channel: Channel) -> None:
        self._engine = engine
        self._channel = channel
        self._sample_rate = engine.info.sample_rate
        self._calls: dict[int, _Call] = {}
        self._ready: list[tuple[float, int]] = []  # heap of (deadline, number)

    def run(self) -> None:
        while True:
            while not self._ready or self._channel.poll(0):
                self._take(self._channel.receive()[0])
            _, number = heapq.heappop(self._ready)
            call = self._calls.get(number)
            if call is None:
                continue  # stopped while it waited
            answer, samples, final = _next_answer(number, call.chunks, call.pcm16)
            self._channel.send(answer, samples)
            if samples is None:  # ended
                del self._calls[number]
                continue
            if final:  # the engine says so: the call ends now, not at a later turn
                _close(call.chunks)
                self._channel.send(("end", number))
                del self._calls[number]
                continue
            call.deadline += len(samples) / self._sample_rate
            call.wanted -= 1
            if call.wanted:
                heapq.heappush(self._ready, (call.deadline, number))

    def _take(self, message: tuple[Any, ...]) -> None:
        kind, number, *rest = message
        if kind == "start":  # the request, how many chunks it wants first, in which form
            request, wanted, pcm16 = rest
            started = _Call(_chunks(self._engine, request), pcm16, wanted, time.monotonic())
            self._calls[number] = started
            if wanted:
                heapq.heappush(self._ready, (started.deadline, number))
            return
        call = self._calls.get(number)
        if call is None:
            return  # it ended, or was stopped, while the message was on its way
        if kind == "next":
            call.wanted += 1
            if call.wanted == 1:
                heapq.heappush(self._ready, (call.deadline, number))
        elif kind == "stop":
            del self._calls[number]
            _close(call.chunks)


def _chunks(engine: Engine, request: Any) -> Iterator[np.ndarray]:
    # A generator of our own: an engine that fails before its first chunk fails at the
    # first `next`, as an answer, never in `start`.
    yield from engine.synthesize(request)


def _next_answer(
    number: int, chunks: Iterator[np.ndarray], pcm16: bool
) -> tuple[tuple[Any, ...], np.ndarray | None, bool]:
    """The answer to `next`; the chunk's samples when it is a chunk (None: the call has
    ended, with its end or its error), as 16-bit PCM when the call asked for it, else
    float32; whether the engine marked it its last."""
    try:
        samples = next(chunks)
    except StopIteration:
        return ("end", number), None, False
    except Exception as exc:
        return ("error", number, portable_error(exc)), None, False
    final = isinstance(samples, FinalChunk)
    plain = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)  # not a subclass
    return ("chunk", number), float_to_pcm16(plain) if pcm16 else plain, final


def _close(chunks: Iterator[np.ndarray]) -> None:
    """Close a call's generator early: the engine's `finally` blocks run now."""
    close = getattr(chunks, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):  # the call is over either way
            close()


def portable_error(exc: Exception) -> CosyVoiceError:
    """The error as the parent can rebuild it from a pickle (which calls the class with
    the detail alone): the platform's errors with other constructors go as
    SynthesisFailed, with their detail."""
    error = as_synthesis_error(exc)
    if type(error).__init__ is CosyVoiceError.__init__:
        return error
    return SynthesisFailed(error.detail)


NICENESS = 10
"""How much lower the child's CPU priority is than its server's (`nice`). The server's
work per request is short and on the way of every stream's first byte (the request, the
hand-off of each chunk); rendering is long and already ordered by deadline. Sharing two
cores at the same priority, a request waited for the CPU behind the engine: at 16
clients the API's first byte was 27-34 ms p50, and 19-26 ms at niceness 10 (5: 23 ms).
The price, on a saturated machine, is some throughput: the engine waits while the server
works (audio per second within noise in one hour, 2-20 % lower in another). A stream's
first audio is what a listener waits for. Raising one's own niceness needs no privilege,
and in a container it weighs only against the container's other processes."""


def yield_to_the_server() -> None:
    with contextlib.suppress(OSError):  # a platform without it runs at equal priority
        os.nice(NICENESS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--engine", required=True)
    args = parser.parse_args()
    # Ctrl-C reaches the whole process group, and a service manager may send SIGTERM to
    # every process of the service: the server then drains its streams, which need this
    # child, and it ends when the server's end of the socket closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    yield_to_the_server()
    serve(Channel(socket.socket(fileno=args.fd)), load_factory(args.engine))


if __name__ == "__main__":
    main()
