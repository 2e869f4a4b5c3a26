"""The per-call synthesis loop around upstream CosyVoice's LLM, flow and vocoder.

Upstream's `CosyVoice2Model.tts` (also CosyVoice3's) keeps the stream hop on the shared
model object: every stream doubles `token_hop_len` and never resets it, so concurrent and
later streams get each other's (growing) first chunks. Its LLM thread's errors are lost,
which makes a stream wait forever; and a call closed early leaves its entries behind.

`CallLoop` replaces `tts` on the model *instance* (upstream's files stay untouched): the
same steps as upstream's pinned code (see `PINNED_UPSTREAM`), with the hop in a local
variable, the LLM thread's error raised in the caller, a condition variable instead of
upstream's 0.1 s polling, and the call's entries removed however it ends. Upstream's
`llm_job`, `token2wav` and `vc_job` do the actual work.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import textwrap
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import EngineNotReady, SynthesisFailed

logger = logging.getLogger(__name__)

# The upstream code this loop re-implements: FunAudioLLM/CosyVoice at this commit.
PINNED_COMMIT = "ace7c47f (FunAudioLLM/CosyVoice, 2026-03-16)"
# sha256 of the source of the model class's `tts`, `token2wav` and `llm_job` (dedented),
# per model class at the pinned commit. A different upstream may chunk or clean up
# differently from this loop, so loading refuses it rather than guessing.
PINNED_UPSTREAM: dict[str, str] = {
    "CosyVoice3Model": "7e85df4539cac335216fb66b50eec2467a0b2b30bc1cac88bb6181775a2b0a50",
    "CosyVoice2Model": "ae6ea9bb37a4c33b9e5fc41444cb8e55f31ebc144187b45c4ad7619c3397a11c",
}
_FINGERPRINTED = ("tts", "token2wav", "llm_job")
_SESSION_TABLES = ("tts_speech_token_dict", "llm_end_dict", "hift_cache_dict")


def upstream_fingerprint(model_class: type) -> str:
    """What `PINNED_UPSTREAM` records for a model class."""
    digest = hashlib.sha256()
    for name in _FINGERPRINTED:
        source = inspect.getsource(getattr(model_class, name))
        digest.update(textwrap.dedent(source).encode())
    return digest.hexdigest()


def check_pinned_upstream(inner: Any, pinned: dict[str, str] | None = None) -> None:
    """EngineNotReady unless the model's code is the upstream version this loop copies."""
    pinned = PINNED_UPSTREAM if pinned is None else pinned
    model_class = type(inner)
    name = model_class.__name__
    try:
        found = upstream_fingerprint(model_class)
    except (AttributeError, OSError, TypeError) as exc:
        raise EngineNotReady(
            f"the upstream CosyVoice model code is not readable ({exc}); "
            f"the supported version is commit {PINNED_COMMIT}"
        ) from exc
    if pinned.get(name) != found:
        module = inspect.getsourcefile(model_class) or model_class.__module__
        raise EngineNotReady(
            f"the upstream CosyVoice code in {module} is not the supported version: "
            f"{name}.tts/token2wav/llm_job differ from commit {PINNED_COMMIT}; "
            "check out that commit in COSYVOICE_HOME"
        )


class _Stopped(Exception):
    """Raised into the LLM thread when the call it feeds has ended."""


class _Tokens(list[Any]):
    """The call's speech tokens: upstream's LLM thread appends, the loop waits on them.

    The loop is woken only when the count it waits for is there (`wanted`), not for
    every token: each wake-up would take the GIL from the LLM thread for nothing.
    """

    def __init__(self, changed: threading.Condition) -> None:
        super().__init__()
        self._changed = changed
        self.stopped = False
        self.wanted: float = math.inf  # set by the waiter, under the condition's lock

    def append(self, token: Any) -> None:
        if self.stopped:
            raise _Stopped  # ends upstream's LLM loop: nobody reads its tokens any more
        with self._changed:
            super().append(token)
            if len(self) >= self.wanted:
                self._changed.notify_all()


class CallLoop:
    """`model.tts` with all streaming state per call (installed by `install`)."""

    def __init__(self, inner: Any, torch: Any) -> None:
        self._inner = inner
        self._torch = torch
        # Read once, before any call can change them: upstream mutates token_hop_len.
        self.first_hop = int(inner.token_hop_len)
        self.max_hop = int(inner.token_max_hop_len)
        self.scale = int(inner.stream_scale_factor)
        self.lookahead = int(inner.flow.pre_lookahead_len)

    @classmethod
    def install(cls, inner: Any, torch: Any) -> CallLoop:
        loop = cls(inner, torch)
        inner.tts = loop
        return loop

    def __call__(
        self,
        text: Any = None,
        flow_embedding: Any = None,
        llm_embedding: Any = None,
        prompt_text: Any = None,
        llm_prompt_speech_token: Any = None,
        flow_prompt_speech_token: Any = None,
        prompt_speech_feat: Any = None,
        source_speech_token: Any = None,
        stream: bool = False,
        speed: float = 1.0,
        **_: Any,
    ) -> Iterator[dict[str, Any]]:
        # Upstream's defaults, for inputs a mode leaves out (cross-lingual has no prompt text).
        text = _or(text, self._zeros(1, 0))
        flow_embedding = _or(flow_embedding, self._zeros(0, 192, floating=True))
        llm_embedding = _or(llm_embedding, self._zeros(0, 192, floating=True))
        prompt_text = _or(prompt_text, self._zeros(1, 0))
        llm_prompt_speech_token = _or(llm_prompt_speech_token, self._zeros(1, 0))
        flow_prompt_speech_token = _or(flow_prompt_speech_token, self._zeros(1, 0))
        prompt_speech_feat = _or(prompt_speech_feat, self._zeros(1, 0, 80, floating=True))
        source_speech_token = _or(source_speech_token, self._zeros(1, 0))
        session = _Session(self._inner, self._torch)
        session.start(
            (text, prompt_text, llm_prompt_speech_token, llm_embedding), source_speech_token
        )
        flow_inputs = {
            "prompt_token": flow_prompt_speech_token,
            "prompt_feat": prompt_speech_feat,
            "embedding": flow_embedding,
        }
        try:
            if stream:
                yield from self._stream(session, flow_inputs, flow_prompt_speech_token.shape[1])
            else:
                session.wait_for(math.inf)
                speech = session.token2wav(flow_inputs, offset=0, finalize=True, speed=speed)
                yield {"tts_speech": speech.cpu()}
        finally:
            session.end()

    def _stream(
        self, session: _Session, flow_inputs: dict[str, Any], prompt_tokens: int
    ) -> Iterator[dict[str, Any]]:
        hop = self.first_hop
        # The first hop is padded so that prompt plus hop fill whole chunks (as upstream).
        pad = math.ceil(prompt_tokens / hop) * hop - prompt_tokens
        offset = 0
        while True:
            this_hop = hop + pad if offset == 0 else hop
            wanted = offset + this_hop + self.lookahead
            ready = session.wait_for(wanted)
            if ready >= wanted:
                speech = session.token2wav(
                    flow_inputs, offset=offset, finalize=False, upto=wanted, stream=True
                )
                offset += this_hop
                hop = min(self.max_hop, hop * self.scale)
                yield {"tts_speech": speech.cpu()}
            elif session.llm_done:
                break
        yield {"tts_speech": session.token2wav(flow_inputs, offset=offset, finalize=True).cpu()}

    def _zeros(self, *shape: int, floating: bool = False) -> Any:
        if self._torch is None:
            return np.zeros(shape, dtype=np.float32 if floating else np.int32)
        dtype = self._torch.float32 if floating else self._torch.int32
        return self._torch.zeros(*shape, dtype=dtype)


class _Session:
    """One call's entries in upstream's per-request tables, and its LLM thread."""

    def __init__(self, inner: Any, torch: Any) -> None:
        self._inner = inner
        self._torch = torch
        self.id = str(uuid.uuid4())
        self._changed = threading.Condition()
        self.tokens = _Tokens(self._changed)
        self.llm_done = False
        self._failure: BaseException | None = None
        self._ended = False

    def start(self, llm_inputs: tuple[Any, ...], source_speech_token: Any) -> None:
        inner = self._inner
        with inner.lock:
            inner.tts_speech_token_dict[self.id] = self.tokens
            inner.llm_end_dict[self.id] = False
            inner.hift_cache_dict[self.id] = None
        if source_speech_token.shape[1] == 0:
            job, args = inner.llm_job, (*llm_inputs, self.id)
        else:
            job, args = inner.vc_job, (source_speech_token, self.id)
        threading.Thread(
            target=self._produce, args=(job, args), name="cosyvoice-llm", daemon=True
        ).start()

    def _produce(self, job: Any, args: tuple[Any, ...]) -> None:
        try:
            job(*args)
            produced = self._inner.tts_speech_token_dict.get(self.id)
            if produced is not None and produced is not self.tokens:
                with self._changed:  # vc_job replaces the list instead of appending
                    list.extend(self.tokens, produced)
        except BaseException as exc:
            if not self.tokens.stopped:
                logger.error("CosyVoice LLM thread failed: %s: %s", type(exc).__name__, exc)
                self._failure = exc
        finally:
            with self._changed:
                self.llm_done = True
                self._changed.notify_all()
            if self._ended:  # upstream's llm_job marks its end after the call was gone
                with self._inner.lock:
                    self._inner.llm_end_dict.pop(self.id, None)

    def wait_for(self, count: float) -> int:
        """Tokens available once `count` are there or the LLM has finished."""
        with self._changed:
            self.tokens.wanted = count
            self._changed.wait_for(lambda: self.llm_done or len(self.tokens) >= count)
            self.tokens.wanted = math.inf
            available = len(self.tokens)
        if self.llm_done and self._failure is not None:
            failure = self._failure
            raise SynthesisFailed(
                f"CosyVoice's LLM stage failed: {type(failure).__name__}: {failure}"
            ) from failure
        return available

    def token2wav(
        self,
        flow_inputs: dict[str, Any],
        *,
        offset: int,
        finalize: bool,
        upto: int | None = None,
        stream: bool = False,
        speed: float = 1.0,
    ) -> Any:
        with self._changed:
            tokens = list(self.tokens if upto is None else self.tokens[:upto])
        return self._inner.token2wav(
            token=self._token_tensor(tokens),
            **flow_inputs,
            token_offset=offset,
            uuid=self.id,
            stream=stream,
            finalize=finalize,
            speed=speed,
        )

    def end(self) -> None:
        self.tokens.stopped = True
        inner = self._inner
        with inner.lock:
            self._ended = True
            for name in _SESSION_TABLES:
                getattr(inner, name).pop(self.id, None)
        if self._torch is not None and self._torch.cuda.is_available():
            self._torch.cuda.empty_cache()  # as upstream does after every call

    def _token_tensor(self, tokens: list[Any]) -> Any:
        if self._torch is None:
            return np.asarray(tokens, dtype=np.int64).reshape(1, -1)
        return self._torch.tensor(tokens, dtype=self._torch.int64).reshape(1, -1)


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value
