"""FLAC streaming: one continuous stream over HTTP, a complete small file per SSE/WS chunk."""

from __future__ import annotations

import io
import time

import numpy as np
import soundfile as sf

from core.audio.stream import _SentBytes, open_stream_encoder, self_contained_chunk

RATE = 22050
PIECE = int(RATE * 0.3)


def speechlike(seconds: float) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(
        np.float32
    )


def decode_open_length(data: bytes) -> tuple[np.ndarray, int]:
    """libsndfile decodes every frame but cannot seek to an unknown end: read as a stream."""
    with sf.SoundFile(io.BytesIO(data)) as flac:
        flac.seekable = lambda: False
        blocks = []
        while len(block := flac.read(65536, dtype="float32")):
            blocks.append(block)
        return np.concatenate(blocks), flac.samplerate


def test_flac_stream_sends_frames_as_they_fill_and_decodes_to_the_input() -> None:
    audio = speechlike(2.0)
    encoder = open_stream_encoder("flac", RATE)
    assert encoder.content_type == "audio/flac"
    sent = [encoder.header()]
    sent += [encoder.encode(audio[i : i + PIECE]) for i in range(0, len(audio), PIECE)]
    sent.append(encoder.finish())
    assert sent[1][:4] == b"fLaC"  # the header leaves with the first audio
    assert all(sent[1:-1]), "every piece of 0.3 s completes at least one frame"
    decoded, rate = decode_open_length(b"".join(sent))
    assert rate == RATE
    assert len(decoded) == len(audio)
    assert np.abs(decoded - audio).max() < 1e-3  # lossless 16-bit


def test_the_streamed_header_leaves_the_length_unknown() -> None:
    encoder = open_stream_encoder("flac", RATE)
    data = encoder.encode(speechlike(1.0)) + encoder.finish()
    streaminfo = data[8 : 8 + 34]
    total_samples = int.from_bytes(streaminfo[10:18], "big") & ((1 << 36) - 1)
    assert total_samples == 0  # "unknown", as a stream's STREAMINFO may say
    assert streaminfo[18:34] == bytes(16)  # no MD5: it is only known at the end


def test_rewrites_of_bytes_already_sent_are_dropped_and_others_land() -> None:
    sink = _SentBytes()
    sink.write(b"abcdef")
    assert sink.take() == b"abcdef"
    sink.write(b"gh")
    sink.seek(1)
    sink.write(b"XX")  # already sent: dropped
    sink.seek(6)
    sink.write(b"Y")  # not yet taken: lands
    sink.seek(0, io.SEEK_END)
    assert sink.tell() == 8
    assert sink.take() == b"Yh"


def test_sse_and_websocket_chunks_are_complete_flac_files() -> None:
    audio = speechlike(0.3)
    data = self_contained_chunk(audio, RATE, "flac")
    samples, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == RATE and len(samples) == len(audio)


def test_encoding_a_chunk_does_not_hold_the_event_loop() -> None:
    encoder = open_stream_encoder("flac", RATE)
    audio = speechlike(0.3)
    encoder.encode(audio)
    started = time.perf_counter()
    for _ in range(20):
        encoder.encode(audio)
    per_chunk = (time.perf_counter() - started) / 20
    assert per_chunk < 0.02, f"{per_chunk * 1000:.1f} ms per 0.3 s chunk"
