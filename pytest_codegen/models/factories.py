"""The built-in backends for a model name: where the model runs, and how its outputs are keyed.

- `served_backend`: a model of the registry, served by the session's embedded model server
  (`server.py`, started by the plugin): one copy of the weights per machine, concurrent
  requests decoded together. Its cache identity is the one the in-process backend uses when
  it decodes one sequence at a time (then generations cached by either are answered for
  both), with `:batched` added when several sequences share its llama.cpp calls.
- `external_backend`: any name, served by an OpenAI-compatible server the user runs
  (`--model-server URL`); keyed by the served name and what `/v1/models` says about it.
  `$OPENAI_API_KEY`, if set, is sent as the bearer token (vLLM's `--api-key`, hosted APIs).
- `in_process_backend`: a model of the registry loaded into this process (`--model-server
  in-process`, as before the model server existed; also what `ModelPool` uses outside pytest).

Each returns a backend that does nothing until its first `generate`, so a run answered from
the generation cache loads no weights and opens no connection.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .backend import GenerationRequest, GenerationResponse, Mode

if TYPE_CHECKING:
    from . import ModelPool
    from .registry import ModelSpec

MODE_SUFFIXES = (":chat", ":completion")


def local_identity(path: Path, n_ctx: int, *, batched: bool = False) -> str:
    """The cache identity of weights run by llama.cpp in this build with this context size.

    The context size and the llama.cpp build change what is generated (a short context
    truncates max_tokens; builds differ numerically): both key the cache.

    `batched`: the model server decodes more than one sequence per llama.cpp call (more than
    one slot, `--decode batched`). Batch shapes change the kernels' rounding, so a greedy
    output may differ in rare tokens from the one-at-a-time output: such outputs get a
    `:batched` identity of their own, and a `--decode sequential` run is never answered with
    them. A server with one slot (sequential decoding, or `--model-slots 1`) decodes one
    sequence at a time, prompt in `n_batch` chunks then token by token, over a context with
    the settings `llama_cpp.Llama` uses (`batching.BatchingEngine` with one slot,
    `llama_decoder.LlamaDecoder`): what it generates is what the in-process backend
    generates, and it keeps the in-process identity.
    """
    from .llama import file_identity, llama_build

    identity = f"{file_identity(path)}:ctx{n_ctx}:{llama_build()}"
    return identity + ":batched" if batched else identity


class LazyLlamaBackend:
    """A GGUF file run in this process by `llama.LlamaCppBackend`, loaded on first use.

    Names that resolve to the same file and mode share one loaded model (`pool.shared`).
    """

    def __init__(self, name: str, path: Path, mode: Mode, pool: ModelPool) -> None:
        self.alias, self.path, self.mode = name, path, mode
        self._pool = pool
        self.identity = local_identity(path, pool.n_ctx)

    def _loaded(self) -> Any:
        key = ("llama", str(self.path.resolve()), self.mode)
        if key not in self._pool.shared:
            from .llama import LlamaCppBackend

            self._pool.shared[key] = LlamaCppBackend(
                self.path, alias=self.alias, mode=self.mode, n_ctx=self._pool.n_ctx,
                threads=self._pool.threads, verbose=self._pool.verbose)
        return self._pool.shared[key]

    def generate(self, request: GenerationRequest) -> GenerationResponse:
        return self._loaded().generate(request)

    def close(self) -> None:
        backend = self._pool.shared.pop(("llama", str(self.path.resolve()), self.mode), None)
        if backend is not None:
            backend.close()


def in_process_backend(name: str, spec: ModelSpec | None, pool: ModelPool) -> LazyLlamaBackend | None:
    if spec is None:
        return None
    return LazyLlamaBackend(name, pool.registry.locate(spec), spec.mode, pool)


def served_backend(
    name: str, spec: ModelSpec | None, pool: ModelPool, url: str, *, batched: bool = True,
    diagnose: Callable[[], str] | None = None,
) -> Any:
    """`name` from the embedded server at `url`, which serves it under that name; `batched`:
    the server decodes several sequences together (see `local_identity`); `diagnose`: what
    the session knows about the server when it cannot be reached (its error, its log)."""
    if spec is None:
        return None
    from .openai_backend import OpenAIBackend

    path = pool.registry.locate(spec)
    return OpenAIBackend(url, name, alias=name, mode=spec.mode,
                         identity=local_identity(path, pool.n_ctx, batched=batched),
                         diagnose=diagnose)


def external_backend(name: str, url: str, *, timeout: float = 600.0) -> Any:
    """`name` as an external server calls it; a `:chat`/`:completion` suffix picks the API
    (default chat: the instruct models such servers run)."""
    from .openai_backend import OpenAIBackend

    mode: Mode = "chat"
    served = name
    for suffix in MODE_SUFFIXES:
        if name.endswith(suffix):
            served, mode = name[: -len(suffix)], suffix[1:]  # type: ignore[assignment]
    return OpenAIBackend(url, served, alias=name, mode=mode, timeout=timeout,
                         api_key=os.environ.get("OPENAI_API_KEY"))
