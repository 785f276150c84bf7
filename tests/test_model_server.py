"""The model server (`models/server.py`) and its client (`models/openai_backend.py`) with the
real Gemma 3 270M model, and their failures with stand-in servers.

Plugin runs through the server (embedded, external, broken) are in test_model_server_runs.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from pytest_codegen.models import GenerationRequest, Message, ModelPool
from pytest_codegen.models.embedded import EmbeddedModelServer
from pytest_codegen.models.llama import LlamaCppBackend, file_identity
from pytest_codegen.models.openai_backend import ModelServerError, OpenAIBackend
from pytest_codegen.models.server import READY_PREFIX

slow = pytest.mark.slow  # loads the real model in a server process

PROMPT = 'def add(a, b):\n    """Return the sum of a and b."""\n'


@pytest.fixture(scope="module")
def gemma_path():
    return ModelPool().locate("gemma-270m")


@pytest.fixture(scope="module")
def embedded(gemma_path):
    server = EmbeddedModelServer(
        {"gemma-270m": (gemma_path, "completion"), "gemma-too": (gemma_path, "completion")},
        n_ctx=1024, slots=2, threads=2)
    yield server
    server.close()


def client(server, model="gemma-270m", **kwargs) -> OpenAIBackend:
    return OpenAIBackend(server.url, model, mode="completion", **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@slow
def test_models_lists_every_name_with_the_file_identity(embedded, gemma_path):
    listed = httpx.get(embedded.url + "/models").json()["data"]
    assert {m["id"] for m in listed} == {"gemma-270m", "gemma-too"}
    assert all(m["meta"]["file"] == file_identity(gemma_path) for m in listed)
    assert all(m["meta"]["n_ctx"] == 1024 for m in listed)


@slow
def test_server_output_equals_the_in_process_backend(embedded, gemma_path):
    """One request at a time, the server computes what llama_cpp.Llama computes: the same
    tokens for a raw prompt, the same chat formatting for messages."""
    local = LlamaCppBackend(gemma_path, alias="gemma-270m", mode="completion", n_ctx=1024, threads=2)
    remote = client(embedded)
    try:
        for request in (
            GenerationRequest(prompt=PROMPT, temperature=0.0, max_tokens=24),
            GenerationRequest(prompt=PROMPT, temperature=0.9, max_tokens=12, seed=7),
            GenerationRequest(prompt=PROMPT, max_tokens=40, stop=("\n\n",)),
            GenerationRequest(messages=(Message("user", "Say hi."),), max_tokens=8),
        ):
            mine, theirs = remote.generate(request), local.generate(request)
            assert (mine.text, mine.prompt_tokens, mine.completion_tokens, mine.finish_reason) == (
                theirs.text, theirs.prompt_tokens, theirs.completion_tokens, theirs.finish_reason)
    finally:
        local.close()
        remote.close()


@slow
def test_concurrent_requests_are_decoded_together(embedded):
    remote = client(embedded, model="gemma-too")  # another name for the same loaded file
    prompts = [f"def f{i}(x):\n    return x *" for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(
            lambda p: remote.generate(GenerationRequest(prompt=p, max_tokens=8)), prompts))
    assert all(r.completion_tokens > 0 for r in results)
    engines = httpx.get(embedded.url.rsplit("/v1", 1)[0] + "/health").json()["engines"]
    assert engines["gemma-270m"] == engines["gemma-too"]  # one engine for both names
    assert engines["gemma-too"]["max_sequences_in_a_call"] == 2  # the two slots, together
    remote.close()


@slow
def test_unknown_model_and_bad_requests_are_clear_errors(embedded):
    with pytest.raises(ModelServerError, match="'nope' is not served.*gemma-270m, gemma-too"):
        client(embedded, model="nope").generate(GenerationRequest(prompt="x", max_tokens=1))
    with pytest.raises(ModelServerError, match="'nope' is not served by .*it serves: gemma-270m"):
        _ = client(embedded, model="nope").identity
    bad = httpx.post(embedded.url + "/completions", content=b"{oops")
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
    streaming = httpx.post(embedded.url + "/completions",
                           json={"model": "gemma-270m", "prompt": "x", "stream": True})
    assert streaming.status_code == 400
    with pytest.raises(ModelServerError, match="HTTP 400.*context holds 1024"):
        client(embedded).generate(GenerationRequest(prompt="word " * 1100, max_tokens=4))


@slow
def test_identity_of_an_external_server_is_the_name_and_what_it_reports(embedded, gemma_path):
    identity = client(embedded).identity
    assert identity.startswith("openai:gemma-270m:") and file_identity(gemma_path) in identity
    assert '"created"' not in identity  # a server's start time must not change the key


def test_an_unreachable_server_fails_fast_and_clearly():
    remote = OpenAIBackend(f"http://127.0.0.1:{free_port()}/v1", "m", retries=2, backoff=0.05)
    request = GenerationRequest(prompt="x", max_tokens=1)
    with pytest.raises(ModelServerError, match="unreachable after 3 attempt"):
        remote.generate(request)
    start = time.perf_counter()
    with pytest.raises(ModelServerError, match="unreachable after 1 attempt"):
        remote.generate(request)  # known down: one try, no backoff
    assert time.perf_counter() - start < 2


class _Fake(BaseHTTPRequestHandler):
    """Answers /models correctly and completions with whatever the test set."""

    body = b"{}"
    status = 200

    def log_message(self, *args):
        pass

    def _send(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send(200, json.dumps({"data": [{"id": "fake", "created": time.time()}]}).encode())

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._send(type(self).status, type(self).body)


@pytest.fixture
def fake_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("status, body, message", [
    (200, b"not json", "malformed response .*not JSON"),
    (200, b'{"choices": []}', "malformed response .*IndexError"),
    (200, b'{"choices": [{"message": {"content": 3}}]}', "malformed response .*not a string"),
    (500, b'{"error": {"message": "boom"}}', "HTTP 500: boom"),
    (503, b"busy", "unreachable after 2 attempt.*HTTP 503"),
])
def test_malformed_and_failed_responses_are_clear_errors(fake_server, status, body, message):
    _Fake.status, _Fake.body = status, body
    remote = OpenAIBackend(f"http://127.0.0.1:{fake_server.server_port}/v1", "fake",
                           retries=1, backoff=0.01)
    with pytest.raises(ModelServerError, match=message):
        remote.generate(GenerationRequest(messages=(Message("user", "hi"),), max_tokens=1))
    assert remote.identity == 'openai:fake:{"id": "fake"}'  # `created` is left out


@slow
def test_a_killed_server_is_restarted_and_the_request_retried(gemma_path):
    server = EmbeddedModelServer({"g": (gemma_path, "completion")}, n_ctx=512, slots=1, threads=2)
    try:
        remote = OpenAIBackend(server.url, "g", mode="completion")
        request = GenerationRequest(prompt=PROMPT, max_tokens=4)
        first = remote.generate(request)
        old = server.pid
        os.kill(old, signal.SIGKILL)
        again = remote.generate(request)  # connection refused until the watcher restarts it
        assert again.text == first.text
        assert server.restarts == 1 and server.pid != old
    finally:
        server.close()
    with pytest.raises(ProcessLookupError):
        os.kill(old, 0)


@slow
def test_the_server_exits_when_its_starter_goes_away(gemma_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest_codegen.models.server", "--model", f"g={gemma_path}",
         "--port", "0", "--watch-stdin"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().decode().startswith(READY_PREFIX)
        proc.stdin.close()  # what the starter's death does to the pipe
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()


@slow
def test_a_model_that_cannot_load_is_a_clear_error_per_request(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    server = EmbeddedModelServer({"broken": (broken, "chat")}, n_ctx=512, slots=1)
    try:
        remote = OpenAIBackend(server.url, "broken")
        for _ in range(2):  # the failure is remembered, not retried per request
            with pytest.raises(ModelServerError, match="HTTP 500: the model .*broken.gguf could not be loaded"):
                remote.generate(GenerationRequest(messages=(Message("user", "hi"),), max_tokens=1))
    finally:
        server.close()


def test_where_models_run_is_decided_once_and_handed_to_workers(gemma_path):
    """The controller's service serves the pipeline's models; workers get the URL (or the
    reason there is none) through workerinput, and fall back to in-process without one."""
    from pytest_codegen.pipelines.genome import builtin_genome
    from pytest_codegen.serving import ModelService, check_model_server
    from pytest_codegen.settings import RunSettings

    settings = RunSettings(pipeline="single", model="gemma-270m", model_slots=3)
    genome = builtin_genome(settings)
    pool = ModelPool()
    service = ModelService.for_controller(settings, genome, lambda: pool, workers=2)
    assert service.kind == "embedded" and not service.server.started  # started on demand
    assert service.server.models == {"gemma-270m": (gemma_path, "completion")}
    assert service.server.slots == 3
    service.close()

    external = ModelService.for_controller(RunSettings(model_server="http://h:1/v1"), genome,
                                           lambda: pool, workers=2)
    assert external.kind == "external" and external.server is None
    assert ModelService.for_controller(settings, None, lambda: pool, 2).kind == "in-process"

    worker = ModelService.for_worker(settings, {"workercount": 2, "codegen_model_server": "http://u/v1"})
    assert worker.served_url() == "http://u/v1"
    failed = ModelService.for_worker(settings, {"workercount": 2,
                                                "codegen_model_server_error": "it broke"})
    with pytest.raises(ModelServerError, match="it broke"):
        failed.served_url()
    assert ModelService.for_worker(settings, {"workercount": 2}).kind == "in-process"
    pool.close()

    for good in ("embedded", "in-process", "http://127.0.0.1:8080/v1"):
        check_model_server(good)
    with pytest.raises(ValueError, match="expected 'embedded'"):
        check_model_server("ollama")
