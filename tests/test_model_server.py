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
from pathlib import Path

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


def test_a_lone_surrogate_in_a_reply_becomes_a_replacement_character(fake_server, tmp_path):
    """JSON can carry `\\ud800`, which no program, results file or cache can hold as text."""
    from pytest_codegen.models.cache import GenerationCache

    _Fake.status, _Fake.body = 200, b'{"choices": [{"message": {"content": "x = 1  # \\ud800"}}]}'
    remote = OpenAIBackend(f"http://127.0.0.1:{fake_server.server_port}/v1", "fake", retries=1, backoff=0.01)
    reply = remote.generate(GenerationRequest(messages=(Message("user", "hi"),), max_tokens=1))
    assert reply.text == "x = 1  # ?"
    cache = GenerationCache(tmp_path)
    request = GenerationRequest(messages=(Message("user", "hi \ud800"),), max_tokens=1)
    cache.put("fake", request, reply)  # a request's lone surrogate hashes too
    assert cache.get("fake", request).text == reply.text


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


# ---------------------------------------------------------------------- the server over a
# scripted decoder (no model): its failures, without loading weights


class _TextDecoder:
    """`test_batching.ScriptedDecoder` with the server's tokenizer entry point."""

    def __new__(cls, decoder_class, *args, **kwargs):
        decoder = decoder_class(*args, **kwargs)
        decoder.completion_tokens = lambda prompt: list(prompt.encode())
        return decoder


@pytest.fixture
def scripted_server():
    from test_batching import SCRIPT, ScriptedDecoder

    from pytest_codegen.models.batching import BatchingEngine
    from pytest_codegen.models.server import ModelServer, ServedFile

    made = []

    def make(decoder_class=ScriptedDecoder, script=SCRIPT, request_timeout=30.0, **kwargs):
        decoder = _TextDecoder(decoder_class, script, **kwargs)
        served = ServedFile(Path("scripted.gguf"), "completion", 256, 1, 1, False)
        served.decoder, served.engine = decoder, BatchingEngine(decoder, slots=1)
        server = ModelServer(("127.0.0.1", 0), {"s": served}, request_timeout=request_timeout)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        made.append(server)
        return server, decoder

    yield make
    for server in made:
        server.shutdown()
        server.server_close()
        server.close_models()


def test_a_dead_engine_fails_requests_at_once_and_health_says_so(scripted_server):
    from test_batching import BreakingDecoder

    server, _ = scripted_server(BreakingDecoder, break_clear=True)
    remote = OpenAIBackend(server.url, "s", mode="completion", timeout=20, retries=0)
    assert remote.generate(GenerationRequest(prompt="A:", max_tokens=10)).text == "alpha"
    health = httpx.get(server.url.rsplit("/v1", 1)[0] + "/health", timeout=10)
    assert health.status_code == 503 and health.json()["status"] == "error"
    assert "clear broke" in health.json()["dead"]["s"]
    start = time.perf_counter()
    with pytest.raises(ModelServerError, match="HTTP 500: decoding failed.*clear broke"):
        remote.generate(GenerationRequest(prompt="B:", max_tokens=10))
    assert time.perf_counter() - start < 5


def test_a_generation_past_the_request_timeout_fails_and_frees_its_slot(scripted_server):
    server, decoder = scripted_server(request_timeout=0.3)
    decoder.gate.clear()  # the engine hangs in decode
    remote = OpenAIBackend(server.url, "s", mode="completion", timeout=20, retries=0)
    with pytest.raises(ModelServerError, match="HTTP 500: the generation did not finish within 0.3 s"):
        remote.generate(GenerationRequest(prompt="A:", max_tokens=10))
    decoder.gate.set()
    assert remote.generate(GenerationRequest(prompt="B:", max_tokens=10)).text == "bravo!"


def test_a_client_that_goes_away_stops_its_generation(scripted_server):
    from test_batching import SCRIPT

    server, decoder = scripted_server(script={b"L:": b"x" * 200, **SCRIPT})
    decoder.gate.clear()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/completions", timeout=0.5,
                   json={"model": "s", "prompt": "L:", "max_tokens": 200})
    time.sleep(1.0)  # the handler notices the closed connection and abandons the request
    decoder.gate.set()
    remote = OpenAIBackend(server.url, "s", mode="completion", timeout=20, retries=0)
    assert remote.generate(GenerationRequest(prompt="A:", max_tokens=10)).text == "alpha"
    long_tokens = sum(1 for call in decoder.calls for e in call if e.token == ord("x"))
    assert long_tokens < 50


def test_a_negative_content_length_is_a_bad_request(scripted_server):
    server, _ = scripted_server()
    with socket.create_connection(("127.0.0.1", server.server_port), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")
        reply = b""
        while b"}}" not in reply:  # the headers, then the JSON error
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400") and b"invalid Content-Length" in reply


def test_a_closed_server_does_not_load_the_model_again(scripted_server):
    server, _ = scripted_server()
    server.close_models()
    answer = httpx.post(server.url + "/completions", timeout=10,
                        json={"model": "s", "prompt": "A:", "max_tokens": 4})
    assert answer.status_code == 503 and "shutting down" in answer.text
    assert server.models["s"].engine is None


# ---------------------------------------------------------------------- restarts, crashes,
# teardown: stand-in processes and servers, no model


class _Resetting(BaseHTTPRequestHandler):
    """Reads a completion request, then drops the connection (as a server that crashes)."""

    posts = 0

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).posts += 1
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)


def test_a_request_that_crashes_the_server_is_sent_at_most_twice():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Resetting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        remote = OpenAIBackend(f"http://127.0.0.1:{server.server_port}/v1", "m", retries=4,
                               backoff=0.01, diagnose=lambda: "its log ends: segfault")
        with pytest.raises(ModelServerError, match="dropped the connection twice.*may crash it"
                                                   ".*the server: its log ends: segfault"):
            remote.generate(GenerationRequest(prompt="x", max_tokens=1))
        assert _Resetting.posts == 2
    finally:
        server.shutdown()
        server.server_close()


def test_an_unreachable_embedded_server_error_says_what_the_session_knows():
    remote = OpenAIBackend(f"http://127.0.0.1:{free_port()}/v1", "m", retries=0,
                           diagnose=lambda: "it died (exit status -9)")
    with pytest.raises(ModelServerError, match="unreachable.*the server: it died"):
        remote.generate(GenerationRequest(prompt="x", max_tokens=1))


class _StandIn(EmbeddedModelServer):
    """Runs a stand-in for the server: prints the ready line (only on the first start when
    `once`), then waits to be killed."""

    def __init__(self, tmp_path, *, once=False, **kwargs):
        super().__init__({}, **kwargs)
        self.flag = tmp_path / "started"
        self.once = once

    def command(self):
        script = (
            "import pathlib, sys, time\n"
            f"flag = pathlib.Path({str(self.flag)!r})\n"
            f"if not ({self.once!r} and flag.exists()):\n"
            "    flag.touch()\n"
            f"    print({READY_PREFIX!r} + 'http://127.0.0.1:9/v1', flush=True)\n"
            "    (flag.parent / f'ready-{__import__(\"os\").getpid()}').touch()\n"
            "time.sleep(120)\n")
        return [sys.executable, "-c", script]


def _kill_and_wait_for_restart(server, timeout=20):
    old = server.pid
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server._error is not None or (
                server.pid != old and (server.flag.parent / f"ready-{server.pid}").exists()):
            break
        time.sleep(0.02)
    return old


def test_restarts_are_limited_per_time_window_and_a_dead_server_is_reported(tmp_path):
    server = _StandIn(tmp_path, max_restarts=1, restart_window=1.0, start_timeout=20)
    try:
        url = server.url
        _kill_and_wait_for_restart(server)
        assert server.restarts == 1 and server.url == url
        time.sleep(1.2)  # the first restart is out of the window
        _kill_and_wait_for_restart(server)
        assert server.restarts == 2 and server.url == url
        old = server.pid
        os.kill(old, signal.SIGKILL)  # a second death within the window: gone for good
        deadline = time.monotonic() + 20
        while server._error is None and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(ModelServerError, match="died .*restarted 2 times"):
            _ = server.url  # not the dead URL: replacement workers get the error
        assert "restarted 2 times" in server.diagnosis()
    finally:
        server.close()


def test_close_does_not_wait_for_a_restart_in_progress(tmp_path):
    server = _StandIn(tmp_path, once=True, start_timeout=60)  # restarts never get ready
    _ = server.url
    old = server.pid
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while server.pid == old and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.pid != old  # restarting, waiting for a ready line that never comes
    start = time.perf_counter()
    server.close()
    assert time.perf_counter() - start < 8


def test_the_server_stops_writing_to_its_stdout_pipe_after_the_ready_line(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest_codegen.models.server", "--model",
         f"g={tmp_path / 'none.gguf'}", "--port", "0", "--watch-stdin"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=(tmp_path / "log").open("wb"))
    try:
        assert proc.stdout.readline().decode().startswith(READY_PREFIX)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if os.readlink(f"/proc/{proc.pid}/fd/1") == os.readlink(f"/proc/{proc.pid}/fd/2"):
                break
            time.sleep(0.02)
        assert os.readlink(f"/proc/{proc.pid}/fd/1") == str(tmp_path / "log")
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
        proc.stdout.close()


def test_batched_decoding_has_a_cache_identity_of_its_own(gemma_path):
    from pytest_codegen.models.factories import local_identity, served_backend
    from pytest_codegen.models.registry import ModelSpec  # noqa: F401 - the spec's type
    from pytest_codegen.pipelines.genome import builtin_genome
    from pytest_codegen.serving import ModelService
    from pytest_codegen.settings import RunSettings

    pool = ModelPool()
    spec = pool.registry.resolve("gemma-270m")
    in_process = local_identity(gemma_path, pool.n_ctx)
    batched = served_backend("gemma-270m", spec, pool, "http://h:1/v1", batched=True)
    one_at_a_time = served_backend("gemma-270m", spec, pool, "http://h:1/v1", batched=False)
    assert batched.identity == in_process + ":batched"
    assert one_at_a_time.identity == in_process

    def service(**options):
        settings = RunSettings(pipeline="single", model="gemma-270m", **options)
        made = ModelService.for_controller(settings, builtin_genome(settings), lambda: pool, 4)
        made.close()
        return made

    assert service().batched  # 4 workers: 4 slots
    assert service(model_slots=2).batched
    assert not service(model_slots=1).batched
    assert not service(decode="sequential").batched
    workerinput = {"workercount": 4}
    one = service(model_slots=1)
    one.server = None  # what hand_to_worker sends, without starting anything
    workerinput["codegen_model_server_batched"] = one.batched
    assert not ModelService.for_worker(RunSettings(), workerinput).batched
    pool.close()


def test_state_close_closes_every_resource_even_if_one_fails():
    from pytest_codegen.plugin_state import CodegenState
    from pytest_codegen.settings import RunSettings

    closed = []

    class Failing:
        def close(self):
            closed.append("models")
            raise RuntimeError("models broke")

    class Service:
        def close(self):
            closed.append("service")

    state = CodegenState(RunSettings(), models=Failing(), service=Service())  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="models broke"):
        state.close()
    assert closed == ["models", "service"]


def test_a_reader_that_starts_after_the_pipe_closed_ends_quietly():
    from pytest_codegen.models.embedded import _read_line

    # Under load the reader thread may first run after the caller gave up on the server and
    # closed its stdout (seen in CI as "ValueError: readline of closed file" in a thread).
    proc = subprocess.Popen([sys.executable, "-c", "pass"], stdout=subprocess.PIPE)
    proc.wait()
    proc.stdout.close()
    errors: list[BaseException] = []
    previous, threading.excepthook = threading.excepthook, lambda args: errors.append(args.exc_value)
    try:
        assert _read_line(proc, timeout=5) == ""
    finally:
        threading.excepthook = previous
    assert errors == []
