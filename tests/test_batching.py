"""The continuous-batching scheduler against a scripted decoder (no model, exact arithmetic).

The scripted decoder is a toy language model whose tokens are bytes: for a prompt it
"generates" a scripted byte string, then an end-of-generation token. It checks what llama.cpp
would reject (positions out of order, a batch over `n_batch`, a slot reused without clearing its
KV cells) and records every decode call, so tests can see which sequences shared a call.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from pytest_codegen.models.batching import (
    BatchingEngine,
    EngineClosed,
    EngineError,
    Entry,
    PromptTooLong,
    Sampling,
)

EOG = 0


class ScriptedDecoder:
    def __init__(self, script: dict[bytes, bytes], *, n_batch: int = 64, n_ctx_seq: int = 256,
                 fail_on: bytes | None = None) -> None:
        self.script = script
        self.n_batch, self.n_ctx_seq = n_batch, n_ctx_seq
        self.kv: dict[int, list[int]] = {}
        self.calls: list[list[Entry]] = []
        self.cleared: list[int] = []
        self.samplers: set[int] = set()
        self.fail_on = fail_on
        self._outputs: dict[int, int] = {}
        self._next_sampler = 0
        self.gate = threading.Event()
        self.gate.set()

    def decode(self, entries: Sequence[Entry]) -> None:
        self.gate.wait(5)
        assert 0 < len(entries) <= self.n_batch
        self.calls.append(list(entries))
        self._outputs = {}
        for index, entry in enumerate(entries):
            kv = self.kv.setdefault(entry.seq, [])
            assert entry.pos == len(kv), "positions follow the sequence's KV cells"
            kv.append(entry.token)
            if entry.logits:
                self._outputs[index] = self._next(kv)
        if self.fail_on is not None and any(bytes(self.kv[e.seq]).startswith(self.fail_on)
                                            for e in entries):
            raise EngineError("scripted failure")

    def _next(self, kv: list[int]) -> int:
        for prompt, text in self.script.items():
            if bytes(kv[: len(prompt)]) == prompt:
                produced = len(kv) - len(prompt)
                return text[produced] if produced < len(text) else EOG
        raise AssertionError(f"no script for {bytes(kv)!r}")

    def new_sampler(self, sampling: Sampling) -> int:
        self._next_sampler += 1
        self.samplers.add(self._next_sampler)
        return self._next_sampler

    def free_sampler(self, sampler: int) -> None:
        self.samplers.remove(sampler)

    def sample(self, sampler: int, index: int) -> int:
        assert sampler in self.samplers
        return self._outputs[index]

    def is_eog(self, token: int) -> bool:
        return token == EOG

    def detokenize(self, tokens: Sequence[int]) -> bytes:
        return bytes(tokens)

    def clear(self, seq: int) -> None:
        self.cleared.append(seq)
        self.kv[seq] = []

    def close(self) -> None:
        pass


def run(engine: BatchingEngine, prompts: list[bytes], **sampling) -> list:
    futures = [engine.submit(list(p), Sampling(**sampling)) for p in prompts]
    return [f.result(timeout=10) for f in futures]


SCRIPT = {b"A:": b"alpha", b"B:": b"bravo!", b"C:": b"charlie", b"D:": b"delta", b"E:": b"echo"}


@pytest.fixture
def engine_factory():
    engines = []

    def make(decoder, **kwargs):
        engine = BatchingEngine(decoder, **kwargs)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def test_sequences_share_decode_calls_and_each_gets_its_own_text(engine_factory):
    decoder = ScriptedDecoder(SCRIPT)
    decoder.gate.clear()  # hold the loop until all three are queued
    engine = engine_factory(decoder, slots=3)
    futures = [engine.submit(list(p), Sampling()) for p in (b"A:", b"B:", b"C:")]
    decoder.gate.set()
    results = [f.result(timeout=10) for f in futures]
    assert [r.text for r in results] == ["alpha", "bravo!", "charlie"]
    assert [r.finish_reason for r in results] == ["stop"] * 3
    assert [r.completion_tokens for r in results] == [5, 6, 7]
    assert all(r.prompt_tokens == 2 for r in results)
    assert engine.stats.max_sequences_in_a_call == 3
    # after the prompts, each call carries one token per generating sequence
    assert any(len(call) == 3 and {e.seq for e in call} == {0, 1, 2} for call in decoder.calls)
    assert not decoder.samplers  # every sampler freed


def test_long_prompts_are_processed_in_chunks_alongside_generation(engine_factory):
    script = {b"x" * 10 + b":": b"long", b"y" * 9 + b":": b"other"}
    decoder = ScriptedDecoder(script, n_batch=4)
    engine = engine_factory(decoder, slots=2)
    results = run(engine, list(script))
    assert [r.text for r in results] == ["long", "other"]
    assert max(len(call) for call in decoder.calls) <= 4
    # only the last token of a prompt asks for logits
    prompt_entries = [e for call in decoder.calls for e in call if e.token in b"xy"]
    assert not any(e.logits for e in prompt_entries)


def test_a_finished_sequence_frees_its_slot_for_the_next_request(engine_factory):
    decoder = ScriptedDecoder(SCRIPT)
    engine = engine_factory(decoder, slots=2)
    results = run(engine, [b"A:", b"B:", b"C:", b"D:", b"E:"])
    assert [r.text for r in results] == ["alpha", "bravo!", "charlie", "delta", "echo"]
    assert {e.seq for call in decoder.calls for e in call} == {0, 1}
    assert len(decoder.cleared) == 5  # each finished sequence's KV cells are cleared


def test_stop_strings_max_tokens_and_context_limits(engine_factory):
    decoder = ScriptedDecoder({b"P:": b"one\ntwo\nthree"}, n_ctx_seq=8)
    engine = engine_factory(decoder, slots=2)
    stopped = engine.submit(list(b"P:"), Sampling(stop=("two", "\n"))).result(timeout=10)
    assert (stopped.text, stopped.finish_reason) == ("one", "stop")  # the first match, in order
    cut = engine.submit(list(b"P:"), Sampling(max_tokens=3)).result(timeout=10)
    assert (cut.text, cut.finish_reason, cut.completion_tokens) == ("one", "length", 3)
    # the context holds 8 tokens: 2 of prompt leave room for 6, whatever max_tokens says
    full = engine.submit(list(b"P:"), Sampling(max_tokens=100)).result(timeout=10)
    assert (full.text, full.finish_reason) == ("one\ntw", "length")
    with pytest.raises(PromptTooLong, match="8 tokens"):
        engine.submit(list(b"P:234567"), Sampling())


def test_stop_strings_wait_for_a_whole_utf8_character(engine_factory):
    snow = "☃".encode()  # three bytes: the stop is only looked for once it is complete
    decoder = ScriptedDecoder({b"S:": b"ab" + snow + b"cd"})
    engine = engine_factory(decoder, slots=1)
    result = engine.submit(list(b"S:"), Sampling(stop=("☃",))).result(timeout=10)
    assert (result.text, result.finish_reason) == ("ab", "stop")


def test_sequential_mode_decodes_one_sequence_at_a_time(engine_factory):
    decoder = ScriptedDecoder(SCRIPT)
    engine = engine_factory(decoder, slots=4, sequential=True)
    results = run(engine, [b"A:", b"B:", b"C:"])
    assert [r.text for r in results] == ["alpha", "bravo!", "charlie"]
    assert engine.stats.max_sequences_in_a_call == 1
    assert all(len({e.seq for e in call}) == 1 for call in decoder.calls)


def test_a_failed_decode_fails_the_requests_in_flight_and_the_engine_goes_on(engine_factory):
    decoder = ScriptedDecoder({**SCRIPT, b"F:": b"fail"}, fail_on=b"F:")
    engine = engine_factory(decoder, slots=2)
    with pytest.raises(EngineError, match="scripted failure"):
        engine.submit(list(b"F:"), Sampling()).result(timeout=10)
    assert run(engine, [b"A:"])[0].text == "alpha"
    assert not decoder.samplers


def test_close_fails_what_is_queued():
    decoder = ScriptedDecoder(SCRIPT)
    decoder.gate.clear()
    engine = BatchingEngine(decoder, slots=1)
    futures = [engine.submit(list(p), Sampling()) for p in (b"A:", b"B:")]
    closer = threading.Thread(target=engine.close)
    closer.start()
    decoder.gate.set()
    closer.join(10)
    outcomes = []
    for future in futures:
        try:
            outcomes.append(future.result(timeout=10).text)
        except RuntimeError as error:
            outcomes.append(type(error).__name__)
    assert "EngineClosed" in outcomes


class BreakingDecoder(ScriptedDecoder):
    """A scripted decoder whose sampler creation or KV clearing raises (a bug, not EngineError)."""

    def __init__(self, *args, break_sampler_at: int = 0, break_clear: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.break_sampler_at, self.break_clear = break_sampler_at, break_clear

    def new_sampler(self, sampling: Sampling) -> int:
        if self.break_sampler_at and self._next_sampler + 1 >= self.break_sampler_at:
            raise MemoryError("no sampler")
        return super().new_sampler(sampling)

    def clear(self, seq: int) -> None:
        if self.break_clear:
            raise RuntimeError("clear broke")
        super().clear(seq)


def test_an_error_while_admitting_fails_every_request_and_closes_the_engine(engine_factory):
    decoder = BreakingDecoder(SCRIPT, break_sampler_at=2)
    decoder.gate.clear()  # the first request is decoding when the second is admitted
    engine = engine_factory(decoder, slots=2)
    first = engine.submit(list(b"A:"), Sampling())
    second = engine.submit(list(b"B:"), Sampling())
    decoder.gate.set()
    for future in (first, second):
        with pytest.raises(EngineError, match="MemoryError"):
            future.result(timeout=10)  # not a hang: the engine thread died
    assert engine.error is not None
    with pytest.raises(EngineError, match="no sampler"):
        engine.submit(list(b"C:"), Sampling())  # at once, not queued forever


def test_a_failing_clear_completes_the_request_first_then_fails_the_rest(engine_factory):
    decoder = BreakingDecoder(SCRIPT, break_clear=True)
    decoder.gate.clear()
    engine = engine_factory(decoder, slots=1)
    done = engine.submit(list(b"A:"), Sampling())
    queued = engine.submit(list(b"B:"), Sampling())
    decoder.gate.set()
    assert done.result(timeout=10).text == "alpha"  # its answer was ready before the cleanup
    with pytest.raises(EngineError, match="clear broke"):
        queued.result(timeout=10)
    assert "clear broke" in str(engine.error)
    assert not engine._thread.is_alive()


def test_a_failing_clear_while_recovering_from_a_failed_decode_fails_everything(engine_factory):
    decoder = BreakingDecoder({**SCRIPT, b"F:": b"fail"}, fail_on=b"F:", break_clear=True)
    decoder.gate.clear()
    engine = engine_factory(decoder, slots=2)
    futures = [engine.submit(list(p), Sampling()) for p in (b"F:", b"A:", b"B:")]
    decoder.gate.set()
    for future in futures:
        with pytest.raises(EngineError):
            future.result(timeout=10)
    with pytest.raises(EngineError):
        engine.submit(list(b"A:"), Sampling())


def test_an_abandoned_request_stops_decoding_and_frees_its_slot(engine_factory):
    class Pausing(ScriptedDecoder):
        def decode(self, entries):
            super().decode(entries)
            self.gate.clear()  # each call waits for the test to let it go

    decoder = Pausing({b"L:": b"x" * 200, **SCRIPT}, n_ctx_seq=512)
    decoder.gate.clear()
    engine = engine_factory(decoder, slots=1)
    long = engine.submit(list(b"L:"), Sampling())
    waiting = engine.submit(list(b"A:"), Sampling())
    dropped = engine.submit(list(b"B:"), Sampling())
    engine.abandon(dropped)  # still queued: cancelled, never decoded
    assert dropped.cancelled()
    decoder.gate.set()
    while len(decoder.calls) < 3:
        threading.Event().wait(0.01)
        decoder.gate.set()
    engine.abandon(long)  # running: it cannot be cancelled, the engine drops it
    assert not long.cancelled()
    for _ in range(100):  # let every later call through
        decoder.gate.set()
        if waiting.done():
            break
        threading.Event().wait(0.02)
    assert waiting.result(timeout=10).text == "alpha"
    with pytest.raises(EngineClosed, match="abandoned"):
        long.result(timeout=0)
    generated_for_long = sum(1 for call in decoder.calls for e in call if e.seq == 0 and e.token == ord("x"))
    assert generated_for_long < 200
    assert not any(e.token in b"B" for call in decoder.calls for e in call)
    assert not decoder.samplers
