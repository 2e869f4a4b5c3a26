"""The frames between a server and its engine process, over a real socket pair."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from core.engines.channel import Channel


@pytest.fixture
def pair() -> Iterator[tuple[Channel, Channel]]:
    ours, theirs = socket.socketpair()
    parent, child = Channel(ours), Channel(theirs)
    yield parent, child
    parent.close()
    child.close()


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_a_message_and_its_audio_arrive_as_sent(
    pair: tuple[Channel, Channel], dtype: type[np.generic]
) -> None:
    parent, child = pair
    audio = (np.arange(1000) % 200 - 100).astype(dtype)
    child.send(("chunk", 7), audio)
    child.send(("end", 7))
    message, received = parent.receive()
    assert message == ("chunk", 7)
    assert received is not None and received.dtype == dtype
    np.testing.assert_array_equal(received, audio)
    assert parent.receive() == (("end", 7), None)


def test_audio_larger_than_the_sockets_buffer_arrives_whole(
    pair: tuple[Channel, Channel],
) -> None:
    """The sender blocks until the reader has taken it all (8 MB against a buffer of a
    few hundred KB)."""
    parent, child = pair
    audio = np.random.default_rng(1).standard_normal(2_000_000).astype(np.float32)
    sender = threading.Thread(target=child.send, args=(("chunk", 1), audio))
    sender.start()
    message, received = parent.receive()
    sender.join(5)
    assert message == ("chunk", 1) and received is not None
    np.testing.assert_array_equal(received, audio)


def test_poll_says_whether_a_message_is_there(pair: tuple[Channel, Channel]) -> None:
    parent, child = pair
    assert not parent.poll(0)
    child.send(("next", 3))
    assert parent.poll(1)
    assert parent.receive() == (("next", 3), None)
    assert not parent.poll(0.05)


def test_the_other_ends_close_ends_a_read(pair: tuple[Channel, Channel]) -> None:
    parent, child = pair
    child.send(("start", 1), np.ones(10, dtype=np.float32))
    child.close()
    assert parent.receive()[0] == ("start", 1)  # what was sent before is still read
    with pytest.raises(EOFError):
        parent.receive()


def test_shutdown_wakes_a_read_blocked_in_another_thread(pair: tuple[Channel, Channel]) -> None:
    parent, _ = pair
    failures: list[BaseException] = []

    def read() -> None:
        try:
            parent.receive()
        except (EOFError, OSError) as exc:
            failures.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    reader.join(0.2)
    assert reader.is_alive()  # blocked: nothing was sent
    parent.shutdown()
    reader.join(5)
    assert not reader.is_alive() and len(failures) == 1
