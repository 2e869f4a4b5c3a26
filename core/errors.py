"""The platform's error tree. Errors carry data, never HTTP.

    CosyVoiceError
    ├── InvalidInput              bad parameter or payload
    │   └── PayloadTooLarge       upload over the byte limit
    ├── AudioRejected             clip undecodable, empty, silent, too short or too long
    ├── NotFound                  a voice, task or audio file that does not exist
    │   ├── VoiceNotFound
    │   ├── TaskNotFound
    │   └── AudioNotFound
    ├── Conflict                  the resource exists or is in the wrong state
    │   ├── VoiceAlreadyExists
    │   ├── InvalidTransition     a task state change that lost a race or is not allowed
    │   └── LeaseHeld             a live worker holds the task: come back after its lease
    ├── Unavailable               something we depend on cannot answer right now
    │   ├── EngineNotReady
    │   ├── BackendUnavailable    database, object store, event bus or predictor
    │   └── Busy                  a concurrency cap is reached
    │       └── Overloaded        the synthesis queue is full (with a retry estimate)
    └── SynthesisFailed           the engine raised while rendering

The router maps each class to a status code in one table (`router/errors.py`); the
functions and the predictor map the same tree to their own protocols.
"""

from __future__ import annotations


class CosyVoiceError(Exception):
    """Base of every error the platform raises on purpose."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidInput(CosyVoiceError):
    pass


class PayloadTooLarge(InvalidInput):
    pass


class AudioRejected(CosyVoiceError):
    pass


class NotFound(CosyVoiceError):
    pass


class VoiceNotFound(NotFound):
    def __init__(self, voice_id: str) -> None:
        super().__init__(f"Voice {voice_id} not found")
        self.voice_id = voice_id


class TaskNotFound(NotFound):
    def __init__(self, task_id: str) -> None:
        super().__init__(f"Task {task_id} not found")
        self.task_id = task_id


class AudioNotFound(NotFound):
    def __init__(self, filename: str) -> None:
        super().__init__(f"Audio file {filename} not found")
        self.filename = filename


class Conflict(CosyVoiceError):
    pass


class VoiceAlreadyExists(Conflict):
    def __init__(self, voice_id: str) -> None:
        super().__init__(f"Voice {voice_id} already exists")
        self.voice_id = voice_id


class InvalidTransition(Conflict):
    pass


class LeaseHeld(Conflict):
    """A render event for a task another worker is rendering under a live lease.

    Not a failure of the event: it should come back after `retry_after_seconds` (when
    the lease runs out unless its owner renews it) and then finds the task ended, or
    retakes it from an owner that died."""

    def __init__(self, task_id: str, retry_after_seconds: float) -> None:
        super().__init__(f"Task {task_id} is being rendered by another worker")
        self.task_id = task_id
        self.retry_after_seconds = max(retry_after_seconds, 0.05)


class Unavailable(CosyVoiceError):
    pass


class EngineNotReady(Unavailable):
    pass


class BackendUnavailable(Unavailable):
    pass


class Busy(Unavailable):
    pass


class Overloaded(Busy):
    """Refused at once because the synthesis queue is full; `retry_after` is the wait,
    in seconds, after which a slot is likely free (the HTTP `Retry-After`)."""

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = max(retry_after, 1.0)


class SynthesisFailed(CosyVoiceError):
    pass


def as_synthesis_error(exc: BaseException) -> CosyVoiceError:
    """What an engine raised, as the platform reports it: its own errors as they are,
    anything else as SynthesisFailed with the engine's message."""
    if isinstance(exc, CosyVoiceError):
        return exc
    message = str(exc).strip() or type(exc).__name__
    error = SynthesisFailed(f"synthesis failed: {message}")
    error.__cause__ = exc
    return error
