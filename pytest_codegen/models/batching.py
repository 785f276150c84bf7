"""Continuous batching: many sequences decoded together over one model and one context.

`BatchingEngine` schedules; a `Decoder` does the arithmetic (`llama_decoder.LlamaDecoder` over
llama-cpp-python's low-level API, or a scripted stand-in in tests). The context has `slots`
sequence slots. A request waits in a queue until a slot is free; then its prompt is processed,
in chunks that share each `decode` call with the other slots' work, and every later step
decodes one new token of every generating sequence in the same call. Each request has its own
sampler (temperature, top_p, seed), stop strings and token budget; a finished sequence's KV
cells are cleared and its slot goes to the next request at once.

What batching changes: a sequence's logits are computed in a batch whose size and companions
depend on what else is running, and llama.cpp's kernels may round differently for different
batch shapes, so a greedy output can differ from the one-at-a-time output in rare tokens. With
`sequential=True` the engine decodes one sequence at a time (prompt in `n_batch` chunks, then
token by token), exactly as `llama_cpp.Llama` does, for runs that must be bit-reproducible
from scratch. `benchmarks/perf/bench_batching_determinism.py` measures the difference.

Text rules follow `llama_cpp.Llama.create_completion`, so that a request gives the same text
here as through the in-process backend: the output ends at an end-of-generation token, at the
first stop string found (in the order given, not included), or after `max_tokens`, which is cut
to what the context has room for; stop strings are not looked for while the output ends inside
a multi-byte UTF-8 character.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Protocol


class PromptTooLong(ValueError):
    """The prompt does not fit the per-sequence context."""


class EngineError(RuntimeError):
    """llama.cpp failed while decoding; the requests in flight fail with it."""


class EngineClosed(RuntimeError):
    """The engine was closed before the request finished."""


@dataclass(frozen=True)
class Sampling:
    """How one request is sampled and when it stops."""

    temperature: float = 0.0
    top_p: float = 0.95
    seed: int = 0
    max_tokens: int = 512
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" or "length"
    seconds: float  # from admission to a slot to the last token
    queued_seconds: float = 0.0  # waiting for a slot


@dataclass(frozen=True)
class Entry:
    """One token of a `decode` call."""

    token: int
    pos: int
    seq: int
    logits: bool


class Decoder(Protocol):
    """The arithmetic the engine schedules; one instance per context, one thread at a time."""

    n_batch: int  # most tokens one decode call takes
    n_ctx_seq: int  # most tokens (prompt + output) one sequence may hold

    def decode(self, entries: Sequence[Entry]) -> None:
        """Evaluate the entries; raises EngineError."""

    def new_sampler(self, sampling: Sampling) -> Any: ...

    def free_sampler(self, sampler: Any) -> None: ...

    def sample(self, sampler: Any, index: int) -> int:
        """The token sampled from the logits of the `index`-th entry of the last decode."""

    def is_eog(self, token: int) -> bool: ...

    def detokenize(self, tokens: Sequence[int]) -> bytes: ...

    def clear(self, seq: int) -> None:
        """Forget every KV cell of sequence `seq`."""

    def close(self) -> None: ...


@dataclass
class _Job:
    tokens: list[int]
    sampling: Sampling
    stops: tuple[bytes, ...]
    max_tokens: int
    future: Future
    submitted: float
    admitted: float = 0.0


@dataclass
class _Slot:
    seq: int
    job: _Job | None = None
    sampler: Any = None
    pending: list[int] = field(default_factory=list)  # prompt tokens not yet decoded
    n_past: int = 0  # tokens of this sequence in the KV cache
    output: list[int] = field(default_factory=list)
    next_token: int | None = None  # sampled, to be decoded in the next step
    multibyte_fix: int = 0  # tokens still to wait for before looking for stop strings


@dataclass
class EngineStats:
    decode_calls: int = 0
    tokens_decoded: int = 0  # prompt and generated tokens that went through decode
    generated: int = 0
    max_sequences_in_a_call: int = 0
    busy_seconds: float = 0.0


class BatchingEngine:
    """Serves completions from one `Decoder` with `slots` sequences decoded together.

    `submit` is thread-safe and returns a Future of `Completion`; a single engine thread runs
    the decode loop. `sequential=True` admits one request at a time.
    """

    def __init__(self, decoder: Decoder, *, slots: int = 4, sequential: bool = False) -> None:
        if slots < 1:
            raise ValueError("an engine needs at least one slot")
        self.decoder = decoder
        self.sequential = sequential
        self.slots = [_Slot(seq) for seq in range(1 if sequential else slots)]
        self.stats = EngineStats()
        self._queue: deque[_Job] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._error: EngineError | None = None
        self._abandoned: set[Future] = set()
        self._thread = threading.Thread(target=self._run, name="batching-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ requests

    def submit(self, tokens: Sequence[int], sampling: Sampling) -> Future:
        """Queue a prompt; raises PromptTooLong at once when it cannot fit."""
        n_ctx = self.decoder.n_ctx_seq
        if not tokens:
            raise ValueError("the prompt has no tokens")
        if len(tokens) >= n_ctx:
            raise PromptTooLong(
                f"the prompt has {len(tokens)} tokens; the context holds {n_ctx} per sequence"
            )
        max_tokens = sampling.max_tokens
        if max_tokens <= 0 or max_tokens + len(tokens) >= n_ctx:
            max_tokens = n_ctx - len(tokens)  # as llama_cpp.Llama cuts it
        job = _Job(
            list(tokens), sampling, tuple(s.encode() for s in sampling.stop if s), max_tokens,
            Future(), time.perf_counter(),
        )
        with self._wake:
            if self._error is not None:
                raise EngineError(str(self._error)) from self._error.__cause__
            if self._closed:
                raise EngineClosed("the engine is closed")
            self._queue.append(job)
            self._wake.notify()
        return job.future

    def abandon(self, future: Future) -> None:
        """The caller no longer wants `future` (it timed out or went away): a queued request
        is dropped, a running one stops decoding at the next step and frees its slot."""
        if future.cancel():
            return  # still queued: `_admit` skips it
        with self._wake:
            if not future.done():
                self._abandoned.add(future)
                self._wake.notify()

    @property
    def error(self) -> EngineError | None:
        """Why the engine thread stopped, if it did (None: it runs or was closed normally)."""
        return self._error

    def close(self) -> None:
        """Stop the loop; requests still queued or running fail with EngineClosed."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()
        try:
            self._fail_all(EngineClosed("the engine was closed before the request finished"))
        finally:
            self.decoder.close()

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        try:
            while True:
                with self._wake:
                    while not self._closed and not self._queue and not self._busy():
                        self._wake.wait()
                    if self._closed:
                        return
                    self._drop_abandoned()
                    self._admit()
                self._step()
        except BaseException as error:  # anything but a failed decode stops the engine:
            # the slots' state is unknown (a KV cache not cleared), so every request fails
            failure = EngineError(f"the batching engine stopped: {error!r}")
            failure.__cause__ = error
            with self._wake:
                self._closed = True
                self._error = failure
            self._fail_all(failure)
            if not isinstance(error, Exception):
                raise

    def _fail_all(self, error: Exception) -> None:
        """Fail every running and queued request with `error`, then free what they held."""
        with self._wake:
            queued = list(self._queue)
            self._queue.clear()
        for job in queued:
            _settle(job.future, error=error)
        cleanup: BaseException | None = None
        for slot in self.slots:
            if slot.job is not None:
                try:
                    self._release(slot, error=error)
                except BaseException as failed:  # keep freeing the others
                    cleanup = cleanup or failed
        if cleanup is not None and self._error is None:
            raise cleanup

    def _busy(self) -> bool:
        return any(slot.job is not None for slot in self.slots)

    def _drop_abandoned(self) -> None:
        """Free the slots of requests whose caller went away (called with the lock held)."""
        if not self._abandoned:
            return
        for slot in self.slots:
            if slot.job is not None and slot.job.future in self._abandoned:
                self._release(slot, error=EngineClosed("the request was abandoned"))
        self._abandoned.clear()

    def _admit(self) -> None:
        """Give free slots to queued requests (called with the lock held)."""
        for slot in self.slots:
            if not self._queue:
                return
            if slot.job is not None:
                continue
            job = self._queue.popleft()
            # From here on `cancel()` fails, so `_release` never races it; `abandon` stops it.
            if not job.future.set_running_or_notify_cancel():
                continue
            job.admitted = time.perf_counter()
            slot.job, slot.pending, slot.n_past = job, list(job.tokens), 0
            slot.output, slot.next_token, slot.multibyte_fix = [], None, 0
            slot.sampler = self.decoder.new_sampler(job.sampling)

    def _step(self) -> None:
        """One decode call: a token of every generating sequence, then prompt chunks."""
        entries: list[Entry] = []
        readers: list[tuple[_Slot, int]] = []  # whose logits to sample, at which entry
        for slot in self.slots:
            if slot.job is not None and slot.next_token is not None:
                entries.append(Entry(slot.next_token, slot.n_past, slot.seq, True))
                readers.append((slot, len(entries) - 1))
                slot.n_past += 1
                slot.next_token = None
        room = self.decoder.n_batch - len(entries)
        for slot in sorted(self._prefilling(), key=lambda s: s.job.admitted):  # type: ignore[union-attr]
            if room <= 0:
                break
            chunk, slot.pending = slot.pending[:room], slot.pending[room:]
            for i, token in enumerate(chunk):
                last = not slot.pending and i == len(chunk) - 1
                entries.append(Entry(token, slot.n_past + i, slot.seq, last))
            slot.n_past += len(chunk)
            room -= len(chunk)
            if not slot.pending:
                readers.append((slot, len(entries) - 1))
        if not entries:
            return
        start = time.perf_counter()
        try:
            self.decoder.decode(entries)
        except EngineError as error:  # a failed decode fails what is in flight, not the engine
            for slot in self.slots:
                if slot.job is not None:
                    self._release(slot, error=error)
            return
        stats = self.stats
        stats.busy_seconds += time.perf_counter() - start
        stats.decode_calls += 1
        stats.tokens_decoded += len(entries)
        stats.max_sequences_in_a_call = max(
            stats.max_sequences_in_a_call, len({e.seq for e in entries}))
        for slot, index in readers:
            token = self.decoder.sample(slot.sampler, index)
            stats.generated += 1
            self._accept(slot, token)

    def _prefilling(self) -> list[_Slot]:
        return [s for s in self.slots if s.job is not None and s.pending]

    def _accept(self, slot: _Slot, token: int) -> None:
        job = slot.job
        assert job is not None
        if self.decoder.is_eog(token):
            self._release(slot, text=self.decoder.detokenize(slot.output), reason="stop")
            return
        slot.output.append(token)
        text = self.decoder.detokenize(slot.output)
        # While the text ends inside a multi-byte character, wait (as llama_cpp.Llama does).
        tail = text[-3:]
        for k, byte in enumerate(tail):
            missing_after = 3 - k
            for width, lead in ((2, 0xC0), (3, 0xE0), (4, 0xF0)):
                if width > missing_after and byte & lead == lead:
                    slot.multibyte_fix = width - missing_after
        room_left = len(slot.output) < self.decoder.n_ctx_seq - len(job.tokens)
        if slot.multibyte_fix > 0 and room_left:
            slot.multibyte_fix -= 1
            slot.next_token = token
            return
        found = [stop for stop in job.stops if stop in text]
        if found:
            self._release(slot, text=text[: text.index(found[0])], reason="stop")
        elif len(slot.output) >= job.max_tokens or not room_left:
            self._release(slot, text=text, reason="length")
        else:
            slot.next_token = token

    def _release(
        self, slot: _Slot, *, text: bytes = b"", reason: str = "", error: Exception | None = None
    ) -> None:
        """Complete the slot's request, then clear its KV cells and free its sampler."""
        job = slot.job
        assert job is not None
        if error is not None:
            _settle(job.future, error=error)
        else:
            now = time.perf_counter()
            _settle(job.future, result=Completion(
                text=text.decode("utf-8", errors="ignore"),
                prompt_tokens=len(job.tokens),
                completion_tokens=len(slot.output),
                finish_reason=reason,
                seconds=now - job.admitted,
                queued_seconds=job.admitted - job.submitted,
            ))
        sampler = slot.sampler
        slot.job, slot.sampler, slot.pending, slot.next_token = None, None, [], None
        try:
            self.decoder.clear(slot.seq)
        finally:
            if sampler is not None:
                self.decoder.free_sampler(sampler)


def _settle(future: Future, *, result: Any = None, error: BaseException | None = None) -> None:
    """Complete `future` unless it is done already (a queued one may be cancelled meanwhile)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass
