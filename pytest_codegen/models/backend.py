"""The model interface every pipeline talks to: a request in, a response out.

A backend is anything with `generate(request) -> GenerationResponse`; llama-cpp-python is the
default (`llama.py`). An HTTP backend for an OpenAI-compatible server would implement the same
protocol and plug in without touching pipelines.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Literal, Protocol

Mode = Literal["chat", "completion"]


@dataclass(frozen=True)
class Message:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class GenerationRequest:
    """Either chat `messages` (instruct models) or a raw `prompt` (base models)."""

    messages: tuple[Message, ...] = ()
    prompt: str | None = None
    temperature: float = 0.0
    top_p: float = 0.95
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if bool(self.messages) == (self.prompt is not None):
            raise ValueError("a request has either chat messages or a completion prompt")

    def to_dict(self) -> dict:
        return asdict(self)

    def digest(self) -> str:
        """A stable hash of the whole request (the seed included)."""
        text = json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class GenerationResponse:
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    finish_reason: str = ""
    cached: bool = False
    extra: dict = field(default_factory=dict, compare=False)


class ModelBackend(Protocol):
    alias: str  # the name the user gave (registry alias or path)
    mode: Mode

    def generate(self, request: GenerationRequest) -> GenerationResponse: ...

    def close(self) -> None: ...
