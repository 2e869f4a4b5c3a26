"""The socket between a server and its engine process: messages, some with audio after them.

A frame is a header (the pickled message's length, the audio's length in bytes and its
sample type), the pickled message, then the raw audio (float32, or 16-bit PCM): pickling
a numpy array copied the samples twice. Both sides speak it, each with one `Channel`
over its end of a socket pair.

The reader receives a frame's audio straight into the array it hands on, in one call
that waits for all of it with the GIL released. Read in pieces of whatever had arrived
(as multiprocessing's `Connection` reads), each piece took the GIL back, which a busy
event loop holds for up to the interpreter's switch interval, and the engine process sat
blocked on its full socket meanwhile.

The other end is trusted (the server started it): messages are pickles.
"""

from __future__ import annotations

import pickle
import select
import socket
import struct
import threading
from typing import Any

import numpy as np

_HEADER = struct.Struct("!IIc")  # the message's bytes, the audio's bytes, its dtype.char


class Channel:
    """One end of the socket. `send` may be called from any thread; `receive` and
    `poll` from one thread at a time."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        self._sock = sock
        self._sending = threading.Lock()
        self._poller = select.poll()  # not select.select: a server's descriptors pass 1024
        self._poller.register(sock, select.POLLIN)

    def send(self, message: Any, audio: np.ndarray | None = None) -> None:
        """The message, and `audio` (a contiguous 1-D array) when it carries some."""
        pickled = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        audio_bytes = 0 if audio is None else audio.nbytes
        dtype = b"f" if audio is None else audio.dtype.char.encode()  # read only with audio
        with self._sending:
            self._sock.sendall(_HEADER.pack(len(pickled), audio_bytes, dtype) + pickled)
            if audio is not None and audio_bytes:
                self._sock.sendall(audio.data)

    def receive(self) -> tuple[Any, np.ndarray | None]:
        """The next message and its audio (None when it carries none); EOFError when the
        other end has closed."""
        message_bytes, audio_bytes, dtype_char = _HEADER.unpack(self._exactly(_HEADER.size))
        message = pickle.loads(self._exactly(message_bytes))
        if not audio_bytes:
            return message, None
        dtype = np.dtype(dtype_char.decode())
        audio = np.empty(audio_bytes // dtype.itemsize, dtype=dtype)
        self._fill(audio.data.cast("B"))
        return message, audio

    def poll(self, timeout: float) -> bool:
        """True when a message (or the other end's close) is there to be read."""
        return bool(self._poller.poll(max(timeout, 0.0) * 1000.0))

    def shutdown(self) -> None:
        """End the conversation both ways: a `receive` blocked in another thread returns
        (closing the descriptor would not wake it), and the other end reads its close."""
        self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._sock.close()

    def _exactly(self, size: int) -> bytearray:
        data = bytearray(size)
        self._fill(memoryview(data))
        return data

    def _fill(self, view: memoryview) -> None:
        while view.nbytes:
            received = self._sock.recv_into(view, view.nbytes, socket.MSG_WAITALL)
            if not received:
                raise EOFError("the other end closed the channel")
            view = view[received:]
