"""An OpenAI-compatible HTTP server for local GGUF models, with continuous batching.

    python -m pytest_codegen.models.server --model gemma-270m=/path/gemma.gguf:completion \\
        --port 0 --slots 8

prints `pytest-codegen model server listening on http://127.0.0.1:PORT/v1` once it listens and
serves, on loopback only:

- `POST /v1/completions`: `prompt` (a string), `max_tokens`, `temperature`, `top_p`, `seed`, `stop`
- `POST /v1/chat/completions`: `messages` formatted with the model's chat template, same fields
- `GET /v1/models`: the served names, each with `meta` (file identity, context, decoding)
- `GET /health`: status, and each loaded engine's counters (decode calls, tokens, busy time)

Each distinct file is loaded once, on its first request (a run answered from the generation
cache loads nothing), into a `BatchingEngine` with `--slots` sequences; several names may serve
one file. Errors are OpenAI-style JSON: 400 for a bad request (malformed JSON, a missing field,
streaming or `n` > 1, which this server does not do, a prompt longer than the context), 404 for
an unknown model or path (with the names served), 500 when a model cannot be loaded or decoding
fails. The pytest plugin starts this module as a subprocess (`embedded.EmbeddedModelServer`),
so no pytest process ever runs llama.cpp. With `--watch-stdin` the server exits when its stdin
closes, i.e. when the process that started it is gone, and writes nothing more to stdout after
the ready line (later output goes to stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import sys
import threading
import time
import uuid
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .batching import BatchingEngine, EngineClosed, EngineError, PromptTooLong, Sampling

READY_PREFIX = "pytest-codegen model server listening on "
MAX_BODY = 16 << 20
POLL_SECONDS = 0.5  # how often a waiting request checks that its client is still there


class ClientGone(Exception):
    """The client closed its connection before its answer was ready."""


class RequestError(Exception):
    """An error that becomes an OpenAI-style JSON response."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code


@dataclass
class ServedFile:
    """One model file: loaded on first use, shared by every name that serves it."""

    path: Path
    mode: str
    n_ctx: int
    slots: int
    threads: int
    sequential: bool
    verbose: bool = False
    engine: BatchingEngine | None = None
    decoder: Any = None
    error: str | None = None
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self) -> tuple[BatchingEngine, Any]:
        with self.lock:
            if self.error is not None:
                raise RequestError(500, self.error, "server_error", "model_load_failed")
            if self.closed:
                raise RequestError(503, "the server is shutting down", "server_error", "closed")
            if self.engine is None:
                from .llama import ModelLoadError
                from .llama_decoder import LlamaDecoder

                try:
                    decoder = LlamaDecoder(self.path, n_ctx=self.n_ctx, slots=self.slots,
                                           threads=self.threads, verbose=self.verbose)
                except (ModelLoadError, EngineError, OSError, ValueError) as error:
                    self.error = f"the model {self.path} could not be loaded: {error}"
                    raise RequestError(500, self.error, "server_error", "model_load_failed") from None
                self.decoder = decoder
                self.engine = BatchingEngine(decoder, slots=self.slots, sequential=self.sequential)
            return self.engine, self.decoder

    def meta(self) -> dict[str, Any]:
        from .llama import file_identity, llama_build

        try:
            identity = file_identity(self.path)
        except OSError as error:
            identity = f"unreadable: {error}"
        return {"file": identity, "mode": self.mode, "n_ctx": self.n_ctx,
                "decode": "sequential" if self.sequential else f"batched x{self.slots}",
                "build": llama_build(), "loaded": self.engine is not None}

    def stats(self) -> dict[str, Any] | None:
        """What the engine has done so far (None: not loaded)."""
        from dataclasses import asdict

        engine = self.engine  # read once: `close` may set it to None meanwhile
        if engine is None:
            return None
        stats = asdict(engine.stats)
        if engine.error is not None:
            stats["error"] = str(engine.error)
        return stats

    def dead(self) -> str | None:
        """Why this file's engine stopped for good (None: it runs, or is not loaded yet)."""
        engine = self.engine
        return str(engine.error) if engine is not None and engine.error is not None else None

    def close(self) -> None:
        with self.lock:
            self.closed = True  # a late request must not load the model again
            engine, self.engine = self.engine, None
            if engine is not None:
                engine.close()


class ModelServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], models: dict[str, ServedFile],
                 request_timeout: float = 900.0) -> None:
        super().__init__(address, Handler)
        self.models = models
        self.request_timeout = request_timeout
        self.started = time.time()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def close_models(self) -> None:
        for served in {id(m): m for m in self.models.values()}.values():
            served.close()


class Handler(BaseHTTPRequestHandler):
    server: ModelServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # the access log would only clutter the log file

    # ------------------------------------------------------------------ routing

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path in ("/v1/models", "/models"):
            self._reply(200, {"object": "list", "data": [
                {"id": name, "object": "model", "created": int(self.server.started),
                 "owned_by": "pytest-codegen", "meta": served.meta()}
                for name, served in self.server.models.items()]})
        elif path in ("/health", "/v1/health"):
            dead = {name: why for name, served in self.server.models.items()
                    if (why := served.dead()) is not None}
            self._reply(503 if dead else 200, {
                "status": "error" if dead else "ok", "dead": dead, "engines": {
                    name: served.stats() for name, served in self.server.models.items()}})
        else:
            self._error(RequestError(404, f"no such path: {self.path}", code="not_found"))

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            body = self._body()
            if path in ("/v1/completions", "/completions"):
                self._reply(200, self._complete(body, chat=False))
            elif path in ("/v1/chat/completions", "/chat/completions"):
                self._reply(200, self._complete(body, chat=True))
            else:
                raise RequestError(404, f"no such path: {self.path}", code="not_found")
        except RequestError as error:
            self._error(error)
        except ClientGone:
            self.close_connection = True
        except Exception as error:  # a bug here must still answer, not drop the connection
            self._error(RequestError(500, f"internal error: {error!r}", "server_error"))

    # ------------------------------------------------------------------ requests

    def _body(self) -> dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise RequestError(400, "invalid Content-Length") from None
        if length < 0:
            raise RequestError(400, "invalid Content-Length")
        if length > MAX_BODY:
            raise RequestError(400, f"the request body is larger than {MAX_BODY} bytes")
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RequestError(400, f"the request body is not valid JSON: {error}") from None
        if not isinstance(body, dict):
            raise RequestError(400, "the request body must be a JSON object")
        return body

    def _complete(self, body: dict[str, Any], *, chat: bool) -> dict[str, Any]:
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise RequestError(400, "'model' is required (GET /v1/models lists them)")
        served = self.server.models.get(name)
        if served is None:
            known = ", ".join(sorted(self.server.models)) or "none"
            raise RequestError(404, f"the model {name!r} is not served here; served: {known}",
                               code="model_not_found")
        if body.get("stream"):
            raise RequestError(400, "streaming is not supported by this server")
        if body.get("n", 1) != 1:
            raise RequestError(400, "only n=1 is supported")
        sampling = _sampling(body)
        engine, decoder = served.get()
        if chat:
            messages = body.get("messages")
            if (not isinstance(messages, list) or not messages or not all(
                    isinstance(m, dict) and isinstance(m.get("role"), str)
                    and isinstance(m.get("content"), str) for m in messages)):
                raise RequestError(400, "'messages' must be a non-empty list of "
                                        "{'role': str, 'content': str}")
            try:
                tokens, extra_stops = decoder.chat_tokens(
                    [{"role": m["role"], "content": m["content"]} for m in messages])
            except Exception as error:  # the template's own checks (roles, order) raise
                raise RequestError(400, "the model's chat template cannot format these "
                                        f"messages: {error}") from None
            sampling = Sampling(sampling.temperature, sampling.top_p, sampling.seed,
                                sampling.max_tokens, sampling.stop + tuple(extra_stops))
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            if not isinstance(prompt, str):
                raise RequestError(400, "'prompt' must be a string")
            tokens = decoder.completion_tokens(prompt)
        try:
            result = self._wait(engine, engine.submit(tokens, sampling))
        except PromptTooLong as error:
            raise RequestError(400, str(error), code="context_length_exceeded") from None
        except ValueError as error:  # an empty prompt
            raise RequestError(400, str(error)) from None
        except (EngineError, EngineClosed) as error:
            raise RequestError(500, f"decoding failed: {error}", "server_error") from None
        usage = {"prompt_tokens": result.prompt_tokens,
                 "completion_tokens": result.completion_tokens,
                 "total_tokens": result.prompt_tokens + result.completion_tokens}
        created = int(time.time())
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": result.text},
                      "logprobs": None, "finish_reason": result.finish_reason}
            return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                    "created": created, "model": name, "choices": [choice], "usage": usage,
                    "timings": {"seconds": result.seconds, "queued": result.queued_seconds}}
        choice = {"index": 0, "text": result.text, "logprobs": None,
                  "finish_reason": result.finish_reason}
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                "created": created, "model": name, "choices": [choice], "usage": usage,
                "timings": {"seconds": result.seconds, "queued": result.queued_seconds}}

    def _wait(self, engine: BatchingEngine, future: Future) -> Any:
        """The future's result; abandoned (its slot freed) if the client goes away or
        `request_timeout` passes first."""
        deadline = time.monotonic() + self.server.request_timeout
        while True:
            try:
                return future.result(timeout=POLL_SECONDS)
            except FutureTimeout:
                pass
            if time.monotonic() >= deadline:
                engine.abandon(future)
                raise RequestError(500, "the generation did not finish within "
                                        f"{self.server.request_timeout:g} s", "server_error",
                                   "timeout")
            if self._client_gone():
                engine.abandon(future)
                raise ClientGone

    def _client_gone(self) -> bool:
        """Whether the client closed its connection (it sends nothing while it waits)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)
        except (OSError, ValueError):
            return True

    # ------------------------------------------------------------------ replies

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, error: RequestError) -> None:
        self._reply(error.status, {"error": {"message": error.message, "type": error.kind,
                                             "code": error.code}})


def _sampling(body: dict[str, Any]) -> Sampling:
    def number(key: str, default: float, kind: type = float) -> Any:
        value = body.get(key, default)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RequestError(400, f"'{key}' must be a number")
        return kind(value)

    stop = body.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        raise RequestError(400, "'stop' must be a string or a list of strings")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens", 512))
    if max_tokens is None:
        max_tokens = 0  # as long as the context allows
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
        raise RequestError(400, "'max_tokens' must be a non-negative integer")
    temperature = number("temperature", 1.0)
    top_p = number("top_p", 1.0)
    if temperature < 0 or not 0 < top_p <= 1:
        raise RequestError(400, "'temperature' must be >= 0 and 'top_p' in (0, 1]")
    return Sampling(temperature=temperature, top_p=top_p, seed=number("seed", 0, int),
                    max_tokens=max_tokens, stop=tuple(stop))


# ---------------------------------------------------------------------- command line


def parse_model(text: str) -> tuple[str, Path, str]:
    """`NAME=PATH[:chat|:completion]` -> (name, path, mode); the mode defaults to chat."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise argparse.ArgumentTypeError(f"--model {text!r}: expected NAME=PATH[:chat|:completion]")
    mode = "chat"
    base, colon, suffix = rest.rpartition(":")
    if colon and suffix in ("chat", "completion"):
        rest, mode = base, suffix
    return name, Path(rest), mode


def build_server(args: argparse.Namespace) -> ModelServer:
    from .llama import available_cores

    threads = args.threads or available_cores()
    slots = 1 if args.decode == "sequential" else args.slots
    by_file: dict[tuple[str, str], ServedFile] = {}
    models: dict[str, ServedFile] = {}
    for name, path, mode in args.model:
        key = (str(path.resolve()), mode)
        if key not in by_file:
            by_file[key] = ServedFile(path, mode, args.n_ctx, slots, threads,
                                      args.decode == "sequential", args.verbose)
        models[name] = by_file[key]
    return ModelServer((args.host, args.port), models, args.request_timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_codegen.models.server",
        description="OpenAI-compatible server for GGUF models with continuous batching")
    parser.add_argument("--model", action="append", type=parse_model, required=True,
                        metavar="NAME=PATH[:MODE]", help="a model to serve (repeatable)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (default)")
    parser.add_argument("--n-ctx", type=int, default=4096, help="tokens per sequence (4096)")
    parser.add_argument("--slots", type=int, default=4, help="sequences decoded together (4)")
    parser.add_argument("--decode", choices=("batched", "sequential"), default="batched",
                        help="sequential: one sequence at a time, bit-reproducible")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (all cores)")
    parser.add_argument("--request-timeout", type=float, default=900.0,
                        help="seconds a generation may take before it fails (900)")
    parser.add_argument("--preload", action="store_true", help="load every model before serving")
    parser.add_argument("--watch-stdin", action="store_true",
                        help="exit when stdin closes (the starting process is gone)")
    parser.add_argument("--verbose", action="store_true", help="show llama.cpp's log")
    args = parser.parse_args(argv)
    if args.slots < 1:
        parser.error("--slots must be at least 1")
    try:
        server = build_server(args)
    except OSError as error:
        print(f"pytest-codegen model server: cannot listen on {args.host}:{args.port}: {error}",
              file=sys.stderr)
        return 2
    if args.preload:
        for served in {id(m): m for m in server.models.values()}.values():
            try:
                served.get()
            except RequestError as error:
                print(error.message, file=sys.stderr)

    stopping = threading.Event()

    def stop(*_: Any) -> None:
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.watch_stdin:
        def watch() -> None:
            while sys.stdin.buffer.read(1 << 12):
                pass
            stop()

        threading.Thread(target=watch, name="stdin-watch", daemon=True).start()
    print(READY_PREFIX + server.url, flush=True)
    if args.watch_stdin:
        # The starting process reads the ready line and nothing after it: whatever is written
        # to stdout later (llama.cpp prints there too) goes to stderr, the log, instead of
        # filling a pipe nobody drains until the writer blocks.
        os.dup2(2, 1)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        server.close_models()
    return 0


if __name__ == "__main__":
    sys.exit(main())
