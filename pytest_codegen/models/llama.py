"""The llama-cpp-python backend: a GGUF file in this process, CPU threads split across workers.

Two facts of llama.cpp on x86 shape this module:
- Weight repacking ("extra buffer types") is off. On CPUs with AMX (Sapphire Rapids) a native
  build crashes in `ggml_backend_amx_mul_mat` at the first inference; without repacking it
  does not, generation was as fast or faster in our measurements (benchmarks/perf/), and the
  weights stay in the shared mmap so xdist workers do not each hold a private copy.
- workers x threads must not exceed the cores: oversubscribed OpenMP threads collapse
  throughput several-fold.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any

from .backend import GenerationRequest, GenerationResponse, Mode


class ModelLoadError(RuntimeError):
    """llama.cpp could not load the file (corrupt, unsupported architecture, out of memory)."""


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads(workers: int = 1) -> int:
    """One process's share of the cores when `workers` processes each run llama.cpp.

    The caller says how many there are (the plugin reads xdist's `workerinput`); nothing is
    read from the environment.
    """
    return max(1, available_cores() // max(1, workers))


def file_identity(path: Path, probe_bytes: int = 4 << 20) -> str:
    """Identifies model weights cheaply: name, size and a hash of the first and last 4 MiB.

    The GGUF header (architecture, quantization, tokenizer) is at the start; hashing the whole
    multi-GB file on every start would cost seconds per xdist worker.
    """
    size = path.stat().st_size
    digest = hashlib.sha256(f"{path.name}:{size}".encode())
    with path.open("rb") as f:
        digest.update(f.read(probe_bytes))
        if size > probe_bytes:
            f.seek(max(probe_bytes, size - probe_bytes))
            digest.update(f.read(probe_bytes))
    return f"{path.name}:{size}:{digest.hexdigest()[:16]}"


_load_lock = threading.Lock()
_log_callback: object = None  # referenced here: llama.cpp holds only a raw pointer to it


def _silence_llama_log() -> None:
    """llama.cpp logs to stderr even with verbose=False; route it nowhere."""
    global _log_callback
    if _log_callback is not None:
        return
    import llama_cpp

    @llama_cpp.llama_log_callback
    def _discard(_level, _text, _user_data):  # the signature llama.cpp calls
        return None

    llama_cpp.llama_log_set(_discard, None)
    _log_callback = _discard


def load_llama(
    path: str | Path, *, n_ctx: int, threads: int, verbose: bool = False, repack: bool = False,
    **kwargs: Any,
) -> Any:
    """A `llama_cpp.Llama` over `path` with weight repacking off and, unless `verbose`, no log.

    `kwargs` go to `Llama` as they are. Raises ModelLoadError with the file's name.
    """
    try:
        import llama_cpp
        import llama_cpp.llama_cpp as llama_c
    except ImportError as error:  # pragma: no cover - llama-cpp-python is a dependency
        raise ModelLoadError(
            "llama-cpp-python is not installed: pip install 'pytest-codegen' "
            "(see the README for the CMAKE_ARGS that build it for this CPU)"
        ) from error
    if not verbose:
        _silence_llama_log()

    defaults = llama_c.llama_model_default_params

    def params_without_repacking():
        params = defaults()
        if hasattr(params, "use_extra_bufts"):
            params.use_extra_bufts = repack
        return params

    # Llama() builds its model params from this function and loads right away: there is
    # no argument for use_extra_bufts, so swap the function in for the load alone.
    with _load_lock:
        llama_c.llama_model_default_params = params_without_repacking
        try:
            return llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=threads,
                n_threads_batch=threads,
                verbose=verbose,
                **kwargs,
            )
        except (ValueError, RuntimeError, OSError) as error:
            raise ModelLoadError(f"llama.cpp could not load {path}: {error}") from error
        finally:
            llama_c.llama_model_default_params = defaults


class LlamaCppBackend:
    """A loaded GGUF model; chat models use the chat template stored in the GGUF."""

    def __init__(
        self,
        path: str | Path,
        *,
        alias: str,
        mode: Mode,
        n_ctx: int = 4096,
        threads: int | None = None,
        verbose: bool = False,
    ) -> None:
        self.path = Path(path)
        self.alias = alias
        self.mode: Mode = mode
        self.threads = threads or default_threads()
        self._llm = load_llama(self.path, n_ctx=n_ctx, threads=self.threads, verbose=verbose)

    def generate(self, request: GenerationRequest) -> GenerationResponse:
        common: dict[str, Any] = dict(
            temperature=request.temperature,
            top_p=request.top_p,
            max_tokens=request.max_tokens,
            stop=list(request.stop) or None,
            seed=request.seed,
        )
        start = time.perf_counter()
        output: Any  # llama-cpp-python's TypedDicts; we only read plain fields
        if request.prompt is not None:
            output = self._llm.create_completion(request.prompt, **common)
            text = output["choices"][0]["text"]
        else:
            messages: Any = [{"role": m.role, "content": m.content} for m in request.messages]
            output = self._llm.create_chat_completion(messages, **common)
            text = output["choices"][0]["message"]["content"] or ""
        usage = output.get("usage", {})
        return GenerationResponse(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            seconds=time.perf_counter() - start,
            finish_reason=str(output["choices"][0].get("finish_reason") or ""),
        )

    def close(self) -> None:
        llm = getattr(self, "_llm", None)
        if llm is not None:
            llm.close()
            del self._llm


def llama_build() -> str:
    """The llama-cpp-python release: builds differ numerically, so it keys the cache."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return "llama-cpp-python-" + version("llama-cpp-python")
    except PackageNotFoundError:
        return "llama-cpp-python-unknown"
