"""llama-cpp-python's low-level API as a `batching.Decoder`, and prompts as `Llama` builds them.

`LlamaDecoder` loads the model once through `llama.load_llama` (weight repacking off, log
silenced): that `Llama` object supplies the weights, the tokenizer and the chat formatter (the
GGUF's template, or llama-cpp-python's guess or fallback), and this module creates a second
llama context of its own over the same weights with `slots` sequences (`n_seq_max`), a
separate KV stream of `n_ctx` cells per sequence, and the context settings `Llama` uses, so
that one sequence decoded alone computes what `Llama` computes. Per request it builds the
sampler chain `Llama` builds: greedy at temperature 0, else top-k 40, typical 1.0, top-p,
min-p 0.05, temperature and a seeded distribution.

Prompts: `completion_tokens` tokenizes a raw prompt as `Llama.create_completion` does (BOS when
the model wants it, special tokens parsed); `chat_tokens` runs the model's chat handler with a
stand-in `Llama` that records the prompt tokens and stop strings the handler would generate
from, so chat requests are formatted exactly as `Llama.create_chat_completion` formats them.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .batching import EngineError, Entry, Sampling
from .llama import load_llama

# Llama's own context is never used for decoding here: keep it (and its KV cache) small.
_SPARE_CTX = 256


class LlamaDecoder:
    """A GGUF model with a context of `slots` sequences of `n_ctx` tokens each."""

    def __init__(
        self,
        path: str | Path,
        *,
        n_ctx: int = 4096,
        slots: int = 4,
        threads: int = 1,
        n_batch: int = 512,
        verbose: bool = False,
        repack: bool = False,
    ) -> None:
        import llama_cpp

        self._c = llama_cpp
        self.path = Path(path)
        self.llm = load_llama(self.path, n_ctx=_SPARE_CTX, threads=threads, verbose=verbose,
                              repack=repack)
        self.n_ctx_seq = n_ctx
        self.n_batch = min(n_batch, n_ctx)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx * slots
        params.n_batch = params.n_ubatch = self.n_batch
        params.n_seq_max = slots
        params.n_threads = params.n_threads_batch = threads
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as Llama() sets it
        params.no_perf = True
        if hasattr(params, "kv_unified"):
            params.kv_unified = False  # a stream per sequence: attention reads only its own cells
        self.ctx = llama_cpp.llama_init_from_model(self.llm._model.model, params)
        if not self.ctx:
            self.llm.close()
            raise EngineError(f"llama.cpp could not create a context of {slots} x {n_ctx} tokens")
        self.slots = slots
        self._memory = llama_cpp.llama_get_memory(self.ctx)
        self._vocab = self.llm._model.vocab
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._render_lock = threading.Lock()

    # ------------------------------------------------------------------ Decoder

    def decode(self, entries: Sequence[Entry]) -> None:
        if len(entries) > self.n_batch:
            raise EngineError(f"{len(entries)} tokens in one decode; the batch holds {self.n_batch}")
        batch = self._batch
        for i, entry in enumerate(entries):
            batch.token[i] = entry.token
            batch.pos[i] = entry.pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = entry.seq
            batch.logits[i] = 1 if entry.logits else 0
        batch.n_tokens = len(entries)
        status = self._c.llama_decode(self.ctx, batch)
        if status != 0:
            raise EngineError(f"llama_decode failed with status {status} "
                              "(1: no room in the KV cache, 2: aborted, <0: error)")

    def new_sampler(self, sampling: Sampling) -> Any:
        c = self._c
        chain = c.llama_sampler_chain_init(c.llama_sampler_chain_default_params())
        if sampling.temperature <= 0:
            c.llama_sampler_chain_add(chain, c.llama_sampler_init_greedy())
            return chain
        for sampler in (
            c.llama_sampler_init_top_k(40),
            c.llama_sampler_init_typical(1.0, 1),
            c.llama_sampler_init_top_p(sampling.top_p, 1),
            c.llama_sampler_init_min_p(0.05, 1),
            c.llama_sampler_init_temp(sampling.temperature),
            c.llama_sampler_init_dist(sampling.seed & 0xFFFFFFFF),
        ):
            c.llama_sampler_chain_add(chain, sampler)
        return chain

    def free_sampler(self, sampler: Any) -> None:
        if sampler is not None:
            self._c.llama_sampler_free(sampler)

    def sample(self, sampler: Any, index: int) -> int:
        return int(self._c.llama_sampler_sample(sampler, self.ctx, index))

    def is_eog(self, token: int) -> bool:
        return bool(self._c.llama_vocab_is_eog(self._vocab, token))

    def detokenize(self, tokens: Sequence[int]) -> bytes:
        return self.llm.detokenize(list(tokens))

    def clear(self, seq: int) -> None:
        self._c.llama_memory_seq_rm(self._memory, seq, -1, -1)

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self._c.llama_batch_free(self._batch)
            self._c.llama_free(self.ctx)
            self.ctx = None
            self.llm.close()

    # ------------------------------------------------------------------ prompts

    def completion_tokens(self, prompt: str) -> list[int]:
        """`prompt` as `Llama.create_completion` tokenizes it."""
        llm = self.llm
        bos = [] if not llm._model.add_bos_token() or llm.token_bos() == -1 else [llm.token_bos()]
        body = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True) if prompt else []
        return bos + body

    def chat_tokens(self, messages: list[dict[str, str]]) -> tuple[list[int], list[str]]:
        """The prompt tokens and extra stop strings `Llama.create_chat_completion` would use."""
        import llama_cpp.llama_chat_format as chat_format

        llm = self.llm
        handler = (llm.chat_handler or llm._chat_handlers.get(llm.chat_format)
                   or chat_format.get_chat_completion_handler(llm.chat_format))
        recorder = _RecordingLlama(llm)
        with self._render_lock:  # handlers are plain Python; keep them to one thread
            handler(llama=recorder, messages=messages, stop=[])  # type: ignore[arg-type]
        if recorder.prompt is None:
            raise ValueError(f"the chat format {llm.chat_format!r} did not produce a prompt")
        return recorder.prompt, recorder.stop

    @property
    def chat_format(self) -> str:
        return str(self.llm.chat_format)


class _RecordingLlama:
    """What a llama-cpp-python chat handler needs of `Llama`, recording what it would generate."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm
        self.verbose = False
        self.prompt: list[int] | None = None
        self.stop: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)

    def tokenize(self, *args: Any, **kwargs: Any) -> list[int]:
        return self._llm.tokenize(*args, **kwargs)

    def create_completion(self, prompt: Any, stop: Any = None, **_: Any) -> dict:
        if isinstance(prompt, str):  # a handler that passes text: tokenize as Llama would
            prompt = self._llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        self.prompt = list(prompt)
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        self.stop = [s for s in stops if s]
        return {
            "id": "recorded", "object": "text_completion", "created": 0, "model": "",
            "choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(self.prompt), "completion_tokens": 0,
                      "total_tokens": len(self.prompt)},
        }

