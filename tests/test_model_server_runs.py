"""Runs through model servers, as users start them (pytester, in subprocesses, under xdist):
the embedded server with Gemma 3 270M, an external OpenAI-compatible server
(`python -m llama_cpp.server`), and servers that are unreachable, do not know the model,
answer nonsense or die mid-run. `--model=gemma-270m` is given everywhere: the project's
default model may be one CI must never download.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from test_model_server import _Fake
from test_plugin import TOY_SUITE

from pytest_codegen.models import ModelPool

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
HUMANEVAL = str(REPO / "benchmarks" / "humaneval")


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def verdicts(result) -> dict[str, int]:
    return {k: v for k, v in result.parseoutcomes().items() if k in ("passed", "failed", "errors")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_humaneval_through_the_embedded_server_then_from_the_cache(pytester):
    """The embedded server under -n 2, decoding one sequence at a time; then the old
    per-process backend answers the same requests from the cache, identically: both key on
    the weights, not on where they ran. (Batched outputs have an identity of their own:
    test_model_server.py::test_batched_decoding_has_a_cache_identity_of_its_own.)"""
    args = [HUMANEVAL, "--pipeline=single", "--model=gemma-270m", "--max-tokens=32",
            "--problems=HumanEval/0,HumanEval/2", f"--codegen-cache={pytester.path / 'cache'}",
            "-p", "no:cacheprovider", "-n", "2"]
    first = pytester.runpytest_subprocess(*args, "--codegen-results=first.jsonl", "--decode=sequential")
    first.stdout.fnmatch_lines(["codegen: models: one embedded server for the session (sequential decoding)"])
    assert sum(verdicts(first).get(k, 0) for k in ("passed", "failed")) == 2, first.stdout.str()
    made = records(pytester.path / "first.jsonl")
    assert all(not r["rounds"][0]["cached"] and r["rounds"][0]["completion_tokens"] > 0 for r in made)

    again = pytester.runpytest_subprocess(*args, "--codegen-results=again.jsonl",
                                          "--model-server=in-process")
    again.stdout.fnmatch_lines(["codegen: models: in-process*"])
    cached = records(pytester.path / "again.jsonl")
    assert all(r["rounds"][0]["cached"] for r in cached)
    assert sorted((r["problem_id"], r["program"], r["rounds"][0]["text"]) for r in cached) == sorted(
        (r["problem_id"], r["program"], r["rounds"][0]["text"]) for r in made)
    assert verdicts(again) == verdicts(first)


@pytest.fixture(scope="module")
def llama_cpp_server():
    """`python -m llama_cpp.server` (llama-cpp-python's [server] extra) on a free port."""
    try:
        import fastapi  # noqa: F401
        import pydantic_settings  # noqa: F401
        import sse_starlette  # noqa: F401
        import starlette_context  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        pytest.skip(f"llama-cpp-python[server] is not installed ({error.name}): "
                    "pip install 'pytest-codegen[dev]'")
    path = ModelPool().locate("gemma-270m")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--model_alias",
         "gemma-ext", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
         "--n_threads", "2", "--verbose", "False"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "/models", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"llama_cpp.server did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.3)
    yield url
    proc.terminate()
    proc.wait(timeout=20)
    proc.stderr.close()


def test_an_external_openai_compatible_server(pytester, llama_cpp_server):
    result = pytester.runpytest_subprocess(
        HUMANEVAL, "--pipeline=single", f"--model-server={llama_cpp_server}",
        "--model=gemma-ext:completion", "--max-tokens=32", "--problems=HumanEval/0,HumanEval/2",
        f"--codegen-cache={pytester.path / 'cache'}", "--codegen-results=ext.jsonl",
        "-p", "no:cacheprovider", "-n", "2")
    result.stdout.fnmatch_lines([f"codegen: models: external server {llama_cpp_server}"])
    assert sum(verdicts(result).get(k, 0) for k in ("passed", "failed")) == 2, result.stdout.str()
    made = records(pytester.path / "ext.jsonl")
    assert {r["problem_id"] for r in made} == {"HumanEval/0", "HumanEval/2"}
    assert all(r["rounds"][0]["model"] == "gemma-ext:completion" for r in made)
    assert all(r["rounds"][0]["completion_tokens"] > 0 for r in made)


@pytest.fixture
def fake_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("case", ["unreachable", "unknown model", "malformed"])
def test_server_failures_are_clear_per_item_errors(pytester, fake_server, case):
    pytester.makepyfile(test_toy=TOY_SUITE)
    _Fake.status, _Fake.body = 200, b'{"choices": [{"message": {}}]}'
    url = {"unreachable": f"http://127.0.0.1:{free_port()}/v1"}.get(case, fake_server)
    model = "nope" if case == "unknown model" else "fake"
    message = {"unreachable": "*unreachable after * attempt(s)*is it running?*",
               "unknown model": "*'nope' is not served by * it serves: fake*",
               "malformed": "*malformed response from *KeyError*"}[case]
    result = pytester.runpytest_subprocess(
        "--pipeline=single", f"--model-server={url}", f"--model={model}", "-n", "2",
        "--codegen-results=r.jsonl", f"--codegen-cache={pytester.path / 'cache'}", "-rE")
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines([message, "toy * 3 * 0 * 0.000 * 3"])
    assert (pytester.path / "r.jsonl").read_text() == ""  # errors are retried by a resumed run


KILL_ONCE = '''
import os, signal
from pathlib import Path

def pytest_runtest_teardown(item):
    """The first item to finish kills the model server (once, whichever worker it is on)."""
    pid = getattr(item.config, "workerinput", {}).get("codegen_model_server_pid")
    flag = Path(__file__).parent / "killed"
    try:
        fd = os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, str(pid).encode())
    os.close(fd)
    os.kill(pid, signal.SIGKILL)
'''


def test_a_server_killed_mid_run_is_restarted_and_nothing_is_lost(pytester, monkeypatch):
    pytester.makepyfile(killer=KILL_ONCE)
    monkeypatch.setenv("PYTHONPATH", str(pytester.path))
    result = pytester.runpytest_subprocess(
        HUMANEVAL, "--pipeline=single", "--model=gemma-270m", "--max-tokens=16",
        "--problems=HumanEval/0,HumanEval/2,HumanEval/4,HumanEval/7", "--no-codegen-cache",
        "--codegen-results=r.jsonl", "-p", "no:cacheprovider", "-p", "killer", "-n", "2")
    assert (pytester.path / "killed").exists()
    assert sum(verdicts(result).get(k, 0) for k in ("passed", "failed")) == 4, result.stdout.str()
    assert len(records(pytester.path / "r.jsonl")) == 4


def test_a_bad_model_server_value_is_a_usage_error(pytester):
    pytester.makepyfile(test_toy=TOY_SUITE)
    result = pytester.runpytest_subprocess("--pipeline=single", "--model-server=ollama")
    result.stderr.fnmatch_lines(["*--model-server 'ollama': expected 'embedded', 'in-process' or*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR
