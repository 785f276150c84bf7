"""A model backend that speaks the OpenAI-compatible HTTP API (`/v1/chat/completions`, ...).

The same client serves the embedded server (`server.py`, started by the plugin) and any
external engine: Ollama, vLLM, SGLang, llama.cpp's llama-server, `python -m llama_cpp.server`.
Chat-mode models get `/chat/completions` with the messages (the server applies its template);
completion-mode models get `/completions` with the raw prompt.

Failures are `ModelServerError`s that name the server and say what to do: unreachable (after
bounded retries with backoff; a server that was just restarted comes back within them), an
unknown model (with the names `/v1/models` lists), an HTTP error (with the server's message),
a malformed response. Connection failures, 429 and 502-504 are retried; other errors are not,
and neither is a read timeout (a generation that long is not helped by starting it again).
A POST whose connection broke after it was sent (reset, closed
mid-response) is sent once more, not again: a request that crashes the server must not crash
it on every retry. Once the server has been found unreachable, later calls try once before failing, so a run
against a dead server fails each item quickly instead of waiting out the backoff every time.

Cache identity (`identity`): given by the caller for the embedded server (the weights' file
identity, as the in-process backend keys it); for an external server it is the served model
name plus what `/v1/models` reports for it, less `created` (several servers report their own
start time there), fetched on first use.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from .backend import GenerationRequest, GenerationResponse, Mode

RETRY_STATUS = (429, 502, 503, 504)


class ModelServerError(RuntimeError):
    """The model server could not answer a request; the message says why and where."""


class OpenAIBackend:
    """`ModelBackend` over an OpenAI-compatible server at `base_url` (ending in `/v1`)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        alias: str | None = None,
        mode: Mode = "chat",
        identity: str | None = None,
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
        retries: int = 4,
        backoff: float = 0.5,
        api_key: str | None = None,
        diagnose: Callable[[], str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.alias = alias or model
        self.mode: Mode = mode
        self.retries, self.backoff = retries, backoff
        self._identity = identity
        self._timeout = (timeout, connect_timeout)
        self._headers = {"Authorization": f"Bearer {api_key or 'none'}"}
        self._client: Any = None
        self._unreachable = False
        self._diagnose = diagnose

    # ------------------------------------------------------------------ identity

    @property
    def identity(self) -> str:
        if self._identity is None:
            entry = self.model_entry()
            described = {k: v for k, v in entry.items() if k != "created"}
            self._identity = f"openai:{self.model}:" + json.dumps(described, sort_keys=True)
        return self._identity

    def models(self) -> list[dict[str, Any]]:
        """What `/v1/models` lists."""
        payload = self._call("GET", "/models")
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list) or not all(isinstance(m, dict) and "id" in m for m in data):
            raise ModelServerError(
                f"malformed response from {self.base_url}/models: expected "
                f"{{'data': [{{'id': ...}}, ...]}}, got {_preview(payload)}")
        return data

    def model_entry(self) -> dict[str, Any]:
        """This model's `/v1/models` entry; ModelServerError naming the others if absent."""
        listed = self.models()
        for entry in listed:
            if entry["id"] == self.model:
                return entry
        names = ", ".join(str(m["id"]) for m in listed) or "none"
        raise ModelServerError(
            f"the model {self.model!r} is not served by {self.base_url}; it serves: {names}")

    # ------------------------------------------------------------------ generation

    def generate(self, request: GenerationRequest) -> GenerationResponse:
        body: dict[str, Any] = {
            "model": self.model,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
            "seed": request.seed,
            "stream": False,
        }
        if request.stop:
            body["stop"] = list(request.stop)
        if request.prompt is not None:
            path = "/completions"
            body["prompt"] = request.prompt
        else:
            path = "/chat/completions"
            body["messages"] = [{"role": m.role, "content": m.content} for m in request.messages]
        start = time.perf_counter()
        payload = self._call("POST", path, body)
        seconds = time.perf_counter() - start
        try:
            choice = payload["choices"][0]
            if request.prompt is not None:
                text = choice["text"]
            else:
                text = choice["message"]["content"]
                text = "" if text is None else text
            if not isinstance(text, str):
                raise TypeError("the text is not a string")
            usage = payload.get("usage") or {}
            prompt_tokens = int(usage.get("prompt_tokens") or 0)
            completion_tokens = int(usage.get("completion_tokens") or 0)
            finish_reason = str(choice.get("finish_reason") or "")
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as error:
            raise ModelServerError(
                f"malformed response from {self.base_url}{path} for {self.model!r} "
                f"({type(error).__name__}: {error}): {_preview(payload)}") from None
        # JSON can carry a lone surrogate (\ud800), which no program, file or cache can hold
        text = text.encode("utf-8", "replace").decode("utf-8")
        return GenerationResponse(text, prompt_tokens, completion_tokens, seconds, finish_reason)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # ------------------------------------------------------------------ transport

    def _http(self) -> Any:
        if self._client is None:
            import httpx

            read, connect = self._timeout
            self._client = httpx.Client(
                timeout=httpx.Timeout(read, connect=connect), headers=self._headers)
        return self._client

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        import httpx

        url = self.base_url + path
        attempts = 1 if self._unreachable else self.retries + 1
        last = ""
        resent = 0
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = self._http().request(method, url, json=body)
            except httpx.TimeoutException as error:
                if isinstance(error, httpx.ConnectTimeout):
                    last = f"connecting timed out ({error})"
                    continue
                raise ModelServerError(
                    f"the model server at {self.base_url} did not answer {path} within "
                    f"{self._timeout[0]:g} s") from None
            except httpx.TransportError as error:  # refused, reset, closed mid-response
                last = f"{type(error).__name__}: {error}"
                if method == "POST" and not isinstance(error, httpx.ConnectError):
                    # Sent, then the connection broke: the request may be what crashed the
                    # server. Once more (the server may have died between requests), not again.
                    resent += 1
                    if resent > 1:
                        raise ModelServerError(
                            f"the model server at {self.base_url} dropped the connection twice "
                            f"while answering {path} for {self.model!r} ({last}); this request "
                            f"may crash it{self._diagnosis()}") from None
                continue
            if response.status_code in RETRY_STATUS:
                last = f"HTTP {response.status_code}: {_server_message(response)}"
                continue
            self._unreachable = False
            if response.status_code == 404 and body is not None:
                raise ModelServerError(
                    f"{self.base_url}{path} answered 404 for {self.model!r}: "
                    f"{_server_message(response)}")
            if response.status_code >= 400:
                raise ModelServerError(
                    f"{self.base_url}{path} answered HTTP {response.status_code}: "
                    f"{_server_message(response)}")
            try:
                return response.json()
            except ValueError:
                raise ModelServerError(
                    f"malformed response from {url}: not JSON: {_preview(response.text)}") from None
        self._unreachable = True
        raise ModelServerError(
            f"the model server at {self.base_url} is unreachable after {attempts} attempt(s) "
            f"({last}); is it running? (--model-server URL points at it){self._diagnosis()}")

    def _diagnosis(self) -> str:
        """What the session knows about the server's failure, if it owns the server."""
        if self._diagnose is None:
            return ""
        try:
            known = self._diagnose()
        except Exception as error:  # a diagnosis must never hide the failure itself
            known = f"(no diagnosis: {error!r})"
        return f"; the server: {known}" if known else ""


def _server_message(response: Any) -> str:
    try:
        payload = response.json()
    except ValueError:
        return _preview(response.text)
    if isinstance(payload, dict):
        error = payload.get("error", payload.get("detail"))
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        if error is not None:
            return _preview(error)
    return _preview(payload)


def _preview(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "..."
