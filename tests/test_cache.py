"""The generation cache: what makes two requests the same, and that hits never load a model."""

import threading

from pytest_codegen.models.backend import GenerationRequest, GenerationResponse, Message
from pytest_codegen.models.cache import CachedBackend, GenerationCache


class CountingModel:
    alias, mode = "counting", "completion"

    def __init__(self):
        self.calls = 0

    def generate(self, request):
        self.calls += 1
        return GenerationResponse(f"reply {self.calls}", 3, 2, 0.01)

    def close(self):
        pass


def request(**changes):
    fields = dict(prompt="def f():", temperature=0.2, max_tokens=16, seed=1, stop=("\n",))
    fields.update(changes)
    return GenerationRequest(**fields)


def test_every_request_field_and_the_model_identity_key_the_cache(tmp_path):
    cache = GenerationCache(tmp_path)
    cache.put("model-a", request(), GenerationResponse("cached", 3, 2, 0.5, "stop"))
    assert cache.get("model-a", request()) == GenerationResponse("cached", 3, 2, 0.5, "stop", cached=True)
    for other in (request(seed=2), request(temperature=0.3), request(max_tokens=17),
                  request(prompt="def g():"), request(stop=()), request(top_p=0.5)):
        assert cache.get("model-a", other) is None
    assert cache.get("model-b", request()) is None
    chat = GenerationRequest(messages=(Message("user", "def f():"),), temperature=0.2, max_tokens=16, seed=1)
    assert cache.get("model-a", chat) is None


def test_a_greedy_request_is_the_same_whatever_its_seed(tmp_path):
    """At temperature 0 the seed changes nothing the model does: a refinement round that repeats
    an earlier round's request with its own seed is a hit. Sampled requests keep their seed."""
    cache = GenerationCache(tmp_path)
    cache.put("model-a", request(temperature=0.0, seed=1), GenerationResponse("greedy", 3, 2, 0.5, "stop"))
    assert cache.get("model-a", request(temperature=0.0, seed=7)).text == "greedy"
    assert cache.get("model-a", request(temperature=0.0, seed=7, max_tokens=17)) is None
    cache.put("model-a", request(seed=1), GenerationResponse("sampled", 3, 2, 0.5, "stop"))
    assert cache.get("model-a", request(seed=7)) is None


def test_greedy_entries_written_with_their_seed_are_still_found(tmp_path):
    """Caches (and exports) made before greedy keys dropped the seed still answer the exact request."""
    cache = GenerationCache(tmp_path)
    old = request(temperature=0.0, seed=5)
    row = (GenerationCache.key("model-a", old, seeded=True), "model-a", "{}", "old", 3, 2, 0.5, "stop", 0.0)
    cache._db.execute("INSERT INTO generations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
    assert cache.get("model-a", old).text == "old"
    assert cache.get("model-a", request(temperature=0.0, seed=6)) is None


def test_a_fully_cached_run_never_loads_the_model(tmp_path):
    loads = []
    model = CountingModel()

    def load():
        loads.append(1)
        return model

    first = CachedBackend("m", "completion", "id", load, GenerationCache(tmp_path))
    assert first.generate(request()).text == "reply 1"
    assert first.generate(request()).cached and model.calls == 1
    second = CachedBackend("m", "completion", "id", load, GenerationCache(tmp_path))
    assert second.generate(request()).text == "reply 1"
    assert loads == [1] and second.calls == 0


def test_concurrent_writers_share_one_cache(tmp_path):
    """xdist workers write the same file at once: WAL and a busy timeout keep every row."""
    def writer(worker):
        cache = GenerationCache(tmp_path)
        for i in range(50):
            cache.put("m", request(seed=worker * 1000 + i), GenerationResponse(str(i), 1, 1, 0.0))
        cache.close()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cache = GenerationCache(tmp_path)
    assert all(cache.get("m", request(seed=w * 1000 + i)) for w in range(4) for i in range(50))


def test_workers_opening_a_new_cache_at_once_all_get_it(tmp_path):
    """xdist workers open the same fresh cache together: switching it to WAL takes a lock for
    which SQLite does not wait on the busy timeout, so a loser must retry, not fail its item."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    for attempt in range(20):
        directory = tmp_path / str(attempt)
        barrier, modes = context.Barrier(4), context.Queue()
        workers = [context.Process(target=_open_cache, args=(directory, barrier, modes)) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert sorted(modes.get(timeout=5) for _ in workers) == ["wal"] * 4


def _open_cache(directory, barrier, modes) -> None:
    barrier.wait()
    try:
        cache = GenerationCache(directory)
        modes.put(cache._db.execute("PRAGMA journal_mode").fetchone()[0])
        cache.close()
    except Exception as error:
        modes.put(repr(error))


def test_an_export_carries_the_cache_to_a_machine_without_it(tmp_path):
    import gzip

    import pytest

    made = GenerationCache(tmp_path / "here")
    made.put("model-a", request(), GenerationResponse("one", 3, 2, 0.5, "stop"))
    made.put("model-a", request(seed=2), GenerationResponse("two", 3, 4, 0.7, "length"))
    export = tmp_path / "generations.jsonl.gz"
    assert made.export_to(export) == 2
    first_bytes = export.read_bytes()
    assert made.export_to(export) == 2 and export.read_bytes() == first_bytes  # same cache, same bytes

    elsewhere = GenerationCache(tmp_path / "elsewhere")
    elsewhere.put("model-a", request(), GenerationResponse("kept", 1, 1, 0.1, "stop"))
    assert elsewhere.import_from(export) == 1  # what it had stays
    assert elsewhere.get("model-a", request()).text == "kept"
    carried = elsewhere.get("model-a", request(seed=2))
    assert (carried.text, carried.completion_tokens, carried.finish_reason) == ("two", 4, "length")
    assert carried.cached
    assert elsewhere.import_from(export) == 0

    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(gzip.compress(b'{"key": "k"}\n'))
    with pytest.raises(ValueError, match="broken.jsonl.gz: not a generation cache export"):
        elsewhere.import_from(broken)
