"""The real llama-cpp-python path with the real Gemma 3 270M model (embedded via PyPI)."""

import json
import time
from pathlib import Path

import pytest

from pytest_codegen.models import GenerationRequest, Message, ModelPool
from pytest_codegen.models.llama import LlamaCppBackend, ModelLoadError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def gemma_path(gemma_package):
    return ModelPool().locate("gemma-270m")


@pytest.fixture(scope="module")
def gemma(llama_cpp, gemma_path):
    backend = LlamaCppBackend(gemma_path, alias="gemma-270m", mode="completion", n_ctx=1024, threads=2)
    yield backend
    backend.close()


PROMPT = 'def add(a, b):\n    """Return the sum of a and b."""\n'


@pytest.mark.slow  # runs the real model
def test_greedy_generation_is_deterministic_and_counted(gemma):
    request = GenerationRequest(prompt=PROMPT, temperature=0.0, max_tokens=24, seed=1)
    first, second = gemma.generate(request), gemma.generate(request)
    assert first.text == second.text and first.text.strip()
    assert 0 < first.completion_tokens <= 24 and first.prompt_tokens > 5
    assert first.seconds > 0


@pytest.mark.slow  # runs the real model
def test_seed_is_honoured_when_sampling(gemma):
    def sample(seed):
        return gemma.generate(GenerationRequest(prompt=PROMPT, temperature=1.0, max_tokens=16, seed=seed)).text

    assert sample(7) == sample(7)
    assert len({sample(s) for s in range(4)}) > 1


@pytest.mark.slow  # runs the real model
def test_stop_sequences_end_generation(gemma):
    response = gemma.generate(GenerationRequest(prompt=PROMPT, temperature=0.0, max_tokens=64, stop=("\n",)))
    assert "\n" not in response.text


@pytest.mark.slow  # runs the real model
def test_chat_requests_are_wrapped_in_a_chat_format(gemma):
    """The 270M base model has no template in its GGUF; llama-cpp-python then falls back to a
    generic chat format, so the prompt is longer than the message alone."""
    message = "Say hi."
    request = GenerationRequest(messages=(Message("user", message),), temperature=0.0, max_tokens=8)
    response = gemma.generate(request)
    bare = gemma.generate(GenerationRequest(prompt=message, temperature=0.0, max_tokens=1))
    assert response.prompt_tokens > bare.prompt_tokens
    assert response.finish_reason in ("stop", "length")


def test_a_broken_model_file_is_a_clear_error(llama_cpp, tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ModelLoadError, match="could not load"):
        LlamaCppBackend(bad, alias="broken", mode="completion")


@pytest.mark.slow
@pytest.mark.usefixtures("llama_cpp", "gemma_package")
def test_single_pipeline_with_gemma_through_pytest_then_fully_cached(pytester):
    """`pytest benchmarks/humaneval --pipeline=single --model=gemma-270m` on two problems, twice."""
    args = [str(REPO / "benchmarks" / "humaneval"), "--pipeline=single", "--model=gemma-270m",
            "--problems=HumanEval/0,HumanEval/2", "--max-tokens=96",
            f"--codegen-cache={pytester.path / 'cache'}", "-p", "no:cacheprovider"]
    start = time.perf_counter()
    first = pytester.runpytest_subprocess(*args, "--codegen-results=first.jsonl")
    first_seconds = time.perf_counter() - start
    outcomes = first.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 2
    first.stdout.fnmatch_lines(["*codegen outcomes*", "humaneval*2*"])
    records = [json.loads(x) for x in (pytester.path / "first.jsonl").read_text().splitlines()]
    assert {r["problem_id"] for r in records} == {"HumanEval/0", "HumanEval/2"}
    for record in records:
        (round_,) = record["rounds"]
        assert round_["model"] == "gemma-270m" and not round_["cached"]
        assert round_["completion_tokens"] > 0 and round_["request_hash"]

    start = time.perf_counter()
    # Two workers share the model server; one sequence at a time, it answers from the first
    # run's cache (batched decoding has a cache identity of its own).
    second = pytester.runpytest_subprocess(*args, "--codegen-results=second.jsonl", "-n", "2", "--decode=sequential")
    second_seconds = time.perf_counter() - start
    again = [json.loads(x) for x in (pytester.path / "second.jsonl").read_text().splitlines()]
    assert all(r["rounds"][0]["cached"] for r in again)
    assert sorted((r["problem_id"], r["program"]) for r in again) == sorted(
        (r["problem_id"], r["program"]) for r in records)
    def verdicts(result):
        return {k: v for k, v in result.parseoutcomes().items() if k in ("passed", "failed")}

    assert verdicts(second) == verdicts(first)
    print(f"first run {first_seconds:.1f}s, cached run with -n 2 {second_seconds:.1f}s")


@pytest.mark.slow  # runs the real model
def test_llama_log_is_silent_by_default(llama_cpp, gemma_path, capfd):
    backend = LlamaCppBackend(gemma_path, alias="gemma-270m", mode="completion", n_ctx=512, threads=1)
    backend.generate(GenerationRequest(prompt=PROMPT, max_tokens=2))
    backend.close()
    out, err = capfd.readouterr()
    assert "llama" not in out + err and "ggml" not in out + err


@pytest.mark.parametrize("workers, expected", [(1, 2), (2, 1), (8, 1)])
def test_threads_are_split_between_xdist_workers(monkeypatch, workers, expected):
    """In-process models: the worker count comes from xdist's workerinput, not the environment."""
    from pytest_codegen.models import llama
    from pytest_codegen.serving import ModelService
    from pytest_codegen.settings import RunSettings

    monkeypatch.setattr(llama, "available_cores", lambda: 2)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "99")  # ignored
    assert llama.default_threads(workers) == expected
    service = ModelService.for_worker(RunSettings(model_server="in-process"),
                                      {"workerid": "gw0", "workercount": workers})
    assert service.in_process_threads(RunSettings()) == expected
    assert service.in_process_threads(RunSettings(threads=3)) == 3
